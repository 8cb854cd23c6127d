"""Temporary files and folders of a run directory: unique, exclusive, never through a symlink,
and removed once the process that wrote them is gone.

    fd, tmp = temporaries.create_file(folder, "00012.npy")   # .00012.npy.HOST.PID.RANDOM.tmp
    folder = temporaries.create_dir(logdir, "report")         # .report.HOST.PID.RANDOM.tmp/
    temporaries.remove_stale(logdir)                           # at the start of every stage

Run directories are meant to be shared (group-writable, job arrays on one logdir), so a
temporary's name must not be guessable or shared: two writers of one file each get their own,
and a symlink planted at a name is never written through (O_CREAT|O_EXCL fails on any existing
name, a symlink included, and the name has a random part that is tried again). The name carries
its writer's host and PID so that a later stage can tell a dead writer's leftovers (removed) from
a live one's or another host's (kept: that process may still run).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from pathlib import Path

from lira.run import lock

HOST = re.sub(r"[^A-Za-z0-9_-]", "-", lock.HOST)  # no dots: the name is split on them
PID = os.getpid  # a function: a forked worker has its own

# .NAME.HOST.PID.RANDOM.tmp, or .old for a folder renamed aside while its replacement moves in
_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.(?P<random>[0-9a-f]{8})\.(?P<kind>tmp|old)$"
)
# What lira wrote before temporaries named their writer: memory-mapped outputs being filled
_LEGACY_PARTIAL = re.compile(r"^\.(?P<model>\d{5})(?:_[a-z]+)?\.partial\.npy$")
_FOLDERS = ("", "logits", "whitebox", "report", "report/scores", "ckpt/*")
_ATTEMPTS = 16


def temporary_name(name: str, kind: str = "tmp") -> str:
    return f".{name}.{HOST}.{PID()}.{secrets.token_hex(4)}.{kind}"


def create_file(folder: Path, name: str) -> tuple[int, Path]:
    """(fd open read-write, path) of a new, empty file under a unique temporary name for `name` in
    `folder`, created exclusively (never an existing file, never through a symlink)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    # 0o666 less the umask: shared groups read it
    return _create(folder, name, "tmp", lambda path: (os.open(path, flags, 0o666), path))


def create_dir(folder: Path, name: str, kind: str = "tmp") -> Path:
    """A new empty folder under a unique temporary name for `name` in `folder` (mkdir is exclusive
    and never follows a symlink at the name)."""
    return _create(folder, name, kind, lambda path: (path.mkdir(), path)[1])


def _create(folder: Path, name: str, kind: str, make):
    """make(path) at the first free temporary name for `name` in `folder` (make fails with
    FileExistsError on a taken one, which is tried again under another random part)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(_ATTEMPTS):
        try:
            return make(folder / temporary_name(name, kind))
        except FileExistsError:
            continue
    raise FileExistsError(
        errno.EEXIST, f"no free temporary name for {name} after {_ATTEMPTS} tries", str(folder)
    )


def replace_dir(new: Path, target: Path) -> None:
    """Puts the complete folder `new` in place of `target` (which may not exist): `target` is
    renamed aside, `new` renamed in, the old one removed. A kill between the two renames leaves
    the old folder aside under an `.old` name, which remove_stale renames back."""
    aside = None
    if target.exists() or target.is_symlink():
        aside = Path(target.parent / temporary_name(target.name, "old"))
        os.rename(target, aside)
    os.rename(new, target)
    if aside is not None:
        _remove(aside)


def remove_stale(logdir: Path) -> list[Path]:
    """Removes the temporaries in `logdir` (and its logits/, whitebox/, report/, ckpt/*/ folders)
    that a process of this host wrote and that no longer runs, and the older `.NNNNN.partial.npy`
    files whose model nobody holds the lock of; a dead process's folder renamed aside while its
    replacement moved in is renamed back if the replacement never arrived. Another host's
    temporaries and a live process's are kept. Returns the paths removed."""
    logdir = Path(logdir)
    removed = []
    for folder in [p for pattern in _FOLDERS for p in (logdir.glob(pattern) if pattern else [logdir])]:
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in sorted(folder.iterdir()):
            if _stale(path):
                original = folder / _NAME.match(path.name)["name"]
                if path.name.endswith(".old") and not (original.exists() or original.is_symlink()):
                    os.rename(path, original)  # killed mid-swap: the old folder is all there is
                    continue
                _remove(path)
                removed.append(path)
            elif (match := _LEGACY_PARTIAL.match(path.name)) and folder.name in ("logits", "whitebox"):
                held = lock.try_acquire(folder / f".{match['model']}.lock")
                if held is not None:  # nobody writes this model's files
                    with held:
                        path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def _stale(path: Path) -> bool:
    match = _NAME.match(path.name)
    if match is None or match["host"] != HOST:
        return False
    pid = int(match["pid"])
    if pid == PID():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
