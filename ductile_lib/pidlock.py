"""The PID lock that keeps two gateways off one database (spec 20 §8.1).

``<dir(state.path)>/<stem>.pid`` is held with ``flock`` for the life of the
process.  The file stays after exit; liveness is whether someone holds the
lock, never whether the file exists, so a ``kill -9`` leaves nothing stale.
"""
from __future__ import annotations

import fcntl
import os
from typing import Optional


class LockHeld(Exception):
    """Another live process holds the lock; ``pid`` is what it wrote."""

    def __init__(self, path: str, pid: Optional[int]):
        holder = "pid %d" % pid if pid else "another process"
        super().__init__("Failed to acquire PID lock %s: held by %s" % (path, holder))
        self.pid = pid


class PidLock:
    """An exclusive, non-blocking flock on the PID file."""

    def __init__(self, path: str):
        self.path = path
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        """Take the lock and write our pid, or raise LockHeld."""
        _make_private_dir(os.path.dirname(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockHeld(self.path, read_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Unlock and close; the file itself stays."""
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def read_pid(path: str) -> Optional[int]:
    """The pid written in the file, if any."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(64).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def running_pid(path: str) -> Optional[int]:
    """The pid of the live process holding the lock, or None if nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_pid(path) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _make_private_dir(directory: str) -> None:
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
