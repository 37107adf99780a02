"""The rehearsal memory's payloads on disk: an append-only log of fixed-size rows.

Rows are never overwritten in place (except to erase a forgotten sample), so a
snapshot only has to record how many rows the log held: a crash after it is
undone by truncating the log back to that length. Reads go through a read-only
memory map, so the resident set holds only the pages a replay batch touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


class PayloadLog:
    """Fixed-size rows of ``features`` values of ``dtype`` in one file.

    Example::

        log = PayloadLog(Path("memory/payload-0.bin"), features=784, dtype=np.float32)
        first = log.append(batch)          # rows first .. first + len(batch) - 1
        x = log.read(np.array([first]))
    """

    def __init__(self, path: Path, *, features: int, dtype: Any) -> None:
        self.path = path
        self.features = features
        self.dtype = np.dtype(dtype)
        self.row_bytes = features * self.dtype.itemsize
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        self.rows: int = size // self.row_bytes
        self._map: np.memmap[Any, np.dtype[Any]] | None = None
        self._mapped_rows = 0

    def append(self, x: np.ndarray[Any, Any]) -> int:
        """Write ``x`` (n x features) at the end; return the first row's index."""
        first = self.rows
        data = np.ascontiguousarray(x, dtype=self.dtype)
        os.pwrite(self._fd, data.tobytes(), first * self.row_bytes)
        self.rows += len(data)
        return first

    def read(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The rows at ``rows`` (a copy)."""
        mapped = self._map if self._mapped_rows == self.rows else None
        if mapped is None:
            mapped = self._map = np.memmap(
                self.path, dtype=self.dtype, mode="r", shape=(self.rows, self.features)
            )
            self._mapped_rows = self.rows
        return np.array(mapped[rows])

    def erase(self, rows: np.ndarray[Any, Any]) -> None:
        """Overwrite rows with zeros, so a forgotten sample's values leave the disk."""
        zeros = bytes(self.row_bytes)
        for row in np.asarray(rows, dtype=np.int64):
            os.pwrite(self._fd, zeros, int(row) * self.row_bytes)
        os.fsync(self._fd)

    def truncate(self, rows: int) -> None:
        """Drop every row from ``rows`` on (rows written after the snapshot being restored)."""
        if rows > self.rows:
            raise ValueError(f"payload log {self.path} holds {self.rows} rows, snapshot expects {rows}")
        self._map, self._mapped_rows = None, 0
        os.ftruncate(self._fd, rows * self.row_bytes)
        self.rows = rows

    def sync(self) -> None:
        """Make every appended row durable."""
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        self._map = None
        os.close(self._fd)
