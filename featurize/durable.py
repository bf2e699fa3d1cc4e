"""Crash-safe files: write to a temporary name, fsync, rename, fsync the folder; set aside unreadable ones.

Every file a rerun reads (store parts and manifests, rank files, cases, run manifests) goes through
``write_atomic``: after a SIGKILL or a power loss a reader sees the old file or the whole new one, never
a truncated one. A file that still fails to open (written by an older version, or damaged on disk) is
moved by ``quarantine`` into a ``_quarantine/`` folder beside it, with a warning, so its work is redone
and the evidence is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

QUARANTINE = "_quarantine"


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or unlink inside ``folder`` durable (POSIX: the folder entry itself is data)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no reader globs for (``.name.<pid>-<rand>.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to produce the file under a temporary name, then make it ``path`` durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def quarantine(path: str | os.PathLike[str], reason: str) -> Path:
    """Move an unreadable file into ``_quarantine/`` beside it (kept, never read again) and warn."""
    path = Path(path)
    folder = path.parent / QUARANTINE
    folder.mkdir(exist_ok=True)
    dest = folder / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    os.replace(path, dest)
    fsync_dir(path.parent)
    warnings.warn(f"{path}: unreadable ({reason}); moved to {dest}, its work will be redone", stacklevel=2)
    return dest


_RENAME_EXCHANGE = 2  # linux/fs.h


def swap_dirs(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Exchange two paths (both must exist), durably: atomically with Linux's ``renameat2``.

    Where the call is missing (other systems, old libc) it falls back to three renames through a
    temporary name, which leaves a moment in which ``b`` does not exist.
    """
    a, b = Path(a), Path(b)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    at_fdcwd = -100
    if (
        renameat2 is None
        or renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) != 0
    ):
        errno = ctypes.get_errno() if renameat2 is not None else 0
        if renameat2 is not None and errno not in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: unsupported
            raise OSError(errno, os.strerror(errno), str(a), None, str(b))
        tmp = temp_name(b)
        os.replace(b, tmp)
        os.replace(a, b)
        os.replace(tmp, a)
    fsync_dir(a.parent)
    fsync_dir(b.parent)
