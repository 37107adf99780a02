"""The rehearsal memory's payloads on disk: an append-only log of fixed-size rows.

Rows are never overwritten in place (except to erase a forgotten sample), so a
snapshot only has to record how many rows the log held: a crash after it is
undone by truncating the log back to that length. Rows are read with one pread
each, so payloads never enter the resident set.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_MAX_PENDING = 2


def _write_all(fd: int, data: np.ndarray[Any, Any], offset: int) -> int:
    view = data.data.cast("B")
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)
    return written


class PayloadLog:
    """Fixed-size rows of ``features`` values of ``dtype`` in one file.

    Appends are written by a background thread (``pwrite`` releases the GIL), so
    the memory's other work overlaps the disk's; every other operation first
    waits for the writes in flight.

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
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="payload-writer")
        self._pending: list[Future[int]] = []

    def append(self, x: np.ndarray[Any, Any]) -> int:
        """Write ``x`` (n x features) at the end; return the first row's index."""
        first = self.rows
        data = np.ascontiguousarray(x, dtype=self.dtype)
        while self._pending and (self._pending[0].done() or len(self._pending) >= _MAX_PENDING):
            self._pending.pop(0).result()  # surfaces a failed write; bounds the batches held
        self._pending.append(self._writer.submit(_write_all, self._fd, data, first * self.row_bytes))
        self.rows += len(data)
        return first

    def flush(self) -> None:
        """Wait until every appended row is written (raising the first write error)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def read(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The rows at ``rows``, each read straight into a new array.

        Not a memory map: its page faults cost as much as a pread per row, and grow the resident set.
        """
        if self._pending:
            self.flush()
        out = np.empty((len(rows), self.features), dtype=self.dtype)
        view = out.data.cast("B")
        size = self.row_bytes
        for n, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            if os.preadv(self._fd, [view[n * size : (n + 1) * size]], row * size) != size:
                raise OSError(f"payload log {self.path} is shorter than row {row}")
        return out

    def erase(self, rows: np.ndarray[Any, Any]) -> None:
        """Overwrite rows with zeros, so a forgotten sample's values leave the disk."""
        self.flush()
        zeros = bytes(self.row_bytes)
        for row in np.asarray(rows, dtype=np.int64):
            os.pwrite(self._fd, zeros, int(row) * self.row_bytes)
        os.fsync(self._fd)

    def truncate(self, rows: int) -> None:
        """Drop every row from ``rows`` on (rows written after the snapshot being restored)."""
        self.flush()
        if rows > self.rows:
            raise ValueError(f"payload log {self.path} holds {self.rows} rows, snapshot expects {rows}")
        os.ftruncate(self._fd, rows * self.row_bytes)
        self.rows = rows

    def sync(self) -> None:
        """Make every appended row durable."""
        self.flush()
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        self.flush()
        self._writer.shutdown()
        os.close(self._fd)
