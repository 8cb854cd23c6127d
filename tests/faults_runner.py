"""Runs a stage script with a fault at its K-th write point: what tests/test_faults.py runs.

    FAULT_ROOT=run FAULT_AT=7 FAULT_KIND=kill python tests/faults_runner.py experiments/train.py --logdir=run ...

A write point is a call that creates, fills, syncs or renames a file under FAULT_ROOT: os.open
with O_CREAT, an open() for writing or appending, os.replace / os.rename / os.link, os.fsync,
os.posix_fallocate, np.save / np.savez and np.lib.format.open_memmap. The patches are installed
before the script (and so lira) is imported, so `from os import replace` style imports see them
too, and only paths under FAULT_ROOT count (a font cache or compilation cache elsewhere would make
the count depend on what earlier processes left behind).

At the FAULT_AT-th write point (1-based), before the call runs, FAULT_KIND decides:
  kill   SIGKILL to this process: what kill -9, an OOM killer or a power cut leaves;
  enospc OSError(ENOSPC) from the call: a full disk (real disks fail at write or fsync; failing
         every kind of call is the stricter test);
  sleep  FAULT_SLEEP seconds (default 0.2) at every write point: a slow writer, so that two
         processes on one run directory overlap;
and with FAULT_AT unset, nothing (the counting run). With FAULT_COUNT=path, every write point
appends one line "N CALL PATH HOW" there (PATH relative to FAULT_ROOT; HOW: "excl", "nofollow"
for an exclusive or symlink-refusing creation, else "-"), written at once, so the counting run (and
a killed run, up to its kill) tells how many there were and what each was.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = os.path.realpath(os.environ.get("FAULT_ROOT", "/nonexistent"))
AT = int(os.environ.get("FAULT_AT", "0") or 0)
KIND = os.environ.get("FAULT_KIND", "kill")
COUNT_PATH = os.environ.get("FAULT_COUNT")

_count = 0
_count_lock = threading.Lock()  # the checkpoint thread writes too: one number per point
_real = {
    "open": builtins.open,
    "os.open": os.open,
    "os.replace": os.replace,
    "os.rename": os.rename,
    "os.link": os.link,
    "os.fsync": os.fsync,
    "np.save": np.save,
    "np.savez": np.savez,
    "open_memmap": np.lib.format.open_memmap,
}
if hasattr(os, "posix_fallocate"):
    _real["os.posix_fallocate"] = os.posix_fallocate


def _path_of(target) -> str | None:
    """The real path a call writes: a path, a file object's name, or a file descriptor's."""
    if isinstance(target, int):
        try:
            return os.readlink(f"/proc/self/fd/{target}")
        except OSError:
            return None
    if isinstance(target, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(target))
        return (
            os.path.realpath(path)
            if os.path.isabs(path)
            else os.path.realpath(os.path.join(os.getcwd(), path))
        )
    name = getattr(target, "name", None)
    if name is not None:
        return _path_of(name)
    fileno = getattr(target, "fileno", None)
    if fileno is not None:
        try:
            return _path_of(fileno())
        except (OSError, ValueError):
            return None
    return None


def _under_root(path: str | None) -> bool:
    return path is not None and (path == ROOT or path.startswith(ROOT + os.sep))


def _write_point(kind: str, *targets, how: str = "") -> None:
    """Counts a write point if any of `targets` lies under FAULT_ROOT, and faults at the AT-th;
    `how` (e.g. "excl,nofollow") goes into FAULT_COUNT's line."""
    global _count
    paths = [_path_of(t) for t in targets]
    hit = next((p for p in paths if _under_root(p)), None)
    if hit is None:
        return
    with _count_lock:
        _count += 1
        count = _count
        if COUNT_PATH:
            fd = _real["os.open"](COUNT_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{count} {kind} {os.path.relpath(hit, ROOT)} {how or '-'}\n".encode())
            finally:
                os.close(fd)
    if KIND == "sleep":  # a slow writer, to make two processes overlap
        time.sleep(float(os.environ.get("FAULT_SLEEP", "0.2")))
    if count != AT:
        return
    if KIND == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif KIND == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), hit)


def _open(file, mode="r", *args, **kwargs):
    if not isinstance(file, int) and any(c in mode for c in "wax+"):  # an int: os.fdopen, counted at os.open
        _write_point("open", file, how="excl" if "x" in mode else "")
    return _real["open"](file, mode, *args, **kwargs)


def _os_open(path, flags, *args, **kwargs):
    if flags & os.O_CREAT:
        how = ",".join(n for n, bit in (("excl", os.O_EXCL), ("nofollow", os.O_NOFOLLOW)) if flags & bit)
        _write_point("os.open", path, how=how)
    return _real["os.open"](path, flags, *args, **kwargs)


def _two_paths(name):
    def patched(src, dst, *args, **kwargs):
        _write_point(name, dst, src)
        return _real[name](src, dst, *args, **kwargs)

    return patched


def _first_arg(name):
    def patched(target, *args, **kwargs):
        _write_point(name, target)
        return _real[name](target, *args, **kwargs)

    return patched


def _open_memmap(filename, mode="r+", *args, **kwargs):
    if mode in ("w+", "r+"):  # np.load(mmap_mode="r") opens with "r": a read
        _write_point("open_memmap", filename)
    return _real["open_memmap"](filename, mode, *args, **kwargs)


def install() -> None:
    builtins.open = io.open = _open
    os.open = _os_open
    os.replace, os.rename, os.link = (_two_paths(n) for n in ("os.replace", "os.rename", "os.link"))
    os.fsync = _first_arg("os.fsync")
    if "os.posix_fallocate" in _real:
        os.posix_fallocate = _first_arg("os.posix_fallocate")
    np.save, np.savez = _first_arg("np.save"), _first_arg("np.savez")
    np.lib.format.open_memmap = _open_memmap


def main() -> None:
    script = sys.argv[1]
    install()
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
