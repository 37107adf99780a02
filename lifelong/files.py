"""Durable file writes: atomic replace, fsync of files and directories, CRC-32 digests.

Every package that keeps state on disk (memory snapshots, the model registry) writes
through these, so each gets the same crash guarantees without importing the other.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path


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
    with open(temp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)
