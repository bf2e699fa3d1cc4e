"""One writer per store: an ``fcntl`` lock file beside each store folder, held for a whole run.

``seewhy featurize`` takes the lock of every store it writes before it opens them; a second run
asking for a store that is being written refuses at once, naming the holder's pid, host and start
time, instead of doing all the missing work a second time and writing duplicate rows. The lock
(``flock``) belongs to the open file, so the operating system drops it when the holder exits,
however it exits: a lock file left behind by a killed run never blocks the next one. Readers take no
lock (parts are atomic). The lock files are hidden (``.<store>.lock``) and outlive the store folder,
so swapping a rebuilt store in (``--overwrite``) happens under the same lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class StoreBusyError(RuntimeError):
    """Another process holds the write lock of a store."""


class StoreLock:
    """An exclusive, non-blocking write lock on ``path`` (a lock file), released on close or exit."""

    def __init__(self, path: str | os.PathLike[str], what: str = "") -> None:
        self.path = Path(path)
        self.what = what or str(self.path)
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        """Take the lock, or raise StoreBusyError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreBusyError(
                f"{self.what} is being written by another run ({holder}); wait for it to finish or stop "
                f"it, then rerun (lock file {self.path})"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The holder's pid, host and start time as its lock file records them."""
    raw = b""
    for _ in range(20):  # the holder writes its details just after taking the lock
        raw = os.pread(fd, 4096, 0)
        if raw:
            break
        time.sleep(0.01)
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: its lock file has no details yet"


@contextlib.contextmanager
def locked(locks: list[StoreLock]) -> Iterator[None]:
    """Hold every lock in ``locks`` for the duration of the block (all or none)."""
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield
