"""Durable file writes: atomic replace, fsync of files and directories, CRC-32 digests.

Every package that keeps state on disk (memory snapshots, the model registry) writes
through these, so each gets the same crash guarantees without importing the other.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import zlib
from pathlib import Path

from lifelong.errors import DiskFull

_SQLITE_FULL = 13


def digest(path: Path) -> str:
    """The CRC-32 of a file's bytes, as ``"crc32:1a2b3c4d"``."""
    # CRC-32 catches torn and bit-rotted files at disk speed; nothing here defends against tampering.
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def fsync_file(path: Path) -> None:
    """Flush a file already written (and closed) to the disk."""
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable: files created, renamed or deleted in it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        # A full disk leaves a partial temp file: remove it so the space and the directory are as before.
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota) is full, from the OS or from SQLite."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, sqlite3.OperationalError):
        # Extended result codes keep the primary code in their low byte.
        code = getattr(error, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == _SQLITE_FULL) or str(error) == "database or disk is full"
    return False


def disk_full(directory: Path, error: BaseException) -> DiskFull:
    """The :class:`~lifelong.errors.DiskFull` to raise ``from error`` when ``directory``'s disk is full."""
    return DiskFull(
        f"no space left on the device of the state directory {directory} ({error}): "
        "free some space and start the daemon again; nothing it had committed is lost"
    )
