"""Locks on the units of work of a run directory: a training slice, a model's query files, the
report, config.json's read-modify-write.

    held = lock.try_acquire(folder / "models_00000-00004.lock")
    if held is None:                       # another process writes this unit: do other work
        ...
    with held:
        ...                                # write the unit's files

    with lock.acquire(logdir / "report.lock"):   # refused in one line naming the holder
        ...

A lock is an advisory `flock` on a small file that names its holder (PID, host, since). The
kernel drops it when the holder dies, however it dies (kill -9 included), so a lock is never
stale and nothing has to guess whether a process still runs. A job array on a network file system
gets the same guarantee where the file system supports flock (NFSv4, Lustre and GPFS with their
flock options); the holder's name is for the message, never trusted for correctness.

The lock file is removed on release. A process that opened it just before then would lock a file
no longer in the folder, so acquiring checks, once it holds the lock, that the path still names
the file it locked, and starts over if not.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

HOST = socket.gethostname()


class LockHeld(ValueError):
    """Another process holds the lock on a unit of work (a user error: one line, exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    pid: int | None
    host: str | None
    since: float | None

    def __str__(self) -> str:
        if self.pid is None:
            return "another process (it has not named itself yet)"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "?"
        return f"PID {self.pid} on {self.host} (since {started})"


class Lock:
    """A held lock; `release()` (or leaving the `with` block) frees it and removes its file."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: nobody can be mid-acquire on it
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: str | os.PathLike, wait_s: float = 0.0, what: str | None = None) -> Lock:
    """The lock at `path`, waiting up to `wait_s` seconds for its holder to release it; LockHeld
    names the holder and `what` (the unit of work, for the message) if it does not."""
    path = Path(path)
    deadline = time.monotonic() + wait_s
    while True:
        held = try_acquire(path)
        if held is not None:
            return held
        if time.monotonic() >= deadline:
            raise LockHeld(
                f"{what or path} is being written by {holder(path)} ({path}); wait for it to finish, or stop "
                "that process first."
            )
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def holder(path: str | os.PathLike) -> Holder:
    """Who holds (or last held) the lock at `path`, as it wrote itself into the file."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.loads(f.read() or "{}")
        return Holder(int(obj["pid"]), str(obj["host"]), float(obj["since"]))
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(None, None, None)


def try_acquire(path: str | os.PathLike) -> Lock | None:
    """The lock at `path` if no other process holds it, else None (never waits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # released and removed between our open and our flock: try the new file
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": HOST, "since": time.time()}).encode())
        return Lock(path, fd)
