"""Reading the sample store: the outbox of labels its followers consume, and the labeled inputs.

The rehearsal memory and the update rounds follow the labels the store gives through
its ``label_events`` outbox, by sequence number, and trim what a durable follower has
consumed; they fetch inputs by id or read the newest labeled samples. Ingestion's
writes are in :class:`~lifelong.memory.samples.SampleStore`, which has these too.

Both go through a :class:`StoreConnection`: every statement, and every row fetched,
that meets a damaged page raises :class:`~lifelong.errors.StateDamaged`, and every
write the disk has no room for raises :class:`~lifelong.errors.DiskFull`, so nothing
goes on with partial data and the daemon stops with a message that says what to do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TypeVar, overload

import numpy as np

from lifelong.errors import StateDamaged, StateError
from lifelong.files import disk_full, is_disk_full
from lifelong.labeled import intensities

_CursorT = TypeVar("_CursorT", bound=sqlite3.Cursor)

# SQLite's primary result codes for a damaged file (extended codes keep them in their low byte).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class LabelGiven(NamedTuple):
    """One label event of the store's outbox: its sequence number, the sample's id and the label."""

    seq: int
    id: str
    y: int


class LabelEvent(NamedTuple):
    """A :class:`LabelGiven` with the sample's stored input (bytes in its wire ``dtype``)."""

    seq: int
    id: str
    y: int
    x: bytes
    dtype: str


def damaged(path: Path, found: str) -> StateDamaged:
    """The :class:`~lifelong.errors.StateDamaged` to raise for the state database ``path``."""
    return StateDamaged(
        f"state database {path} is damaged ({found}): move it (and its -wal file) aside to rebuild "
        "the state from Kafka, or restore a backup; `lifelong check --state --config FILE` runs the "
        "full integrity check"
    )


def _failed(path: Path, error: sqlite3.Error) -> NoReturn:
    """Raise ``error`` as the state error it means (damaged file, full disk), else as it is."""
    code = getattr(error, "sqlite_errorcode", None)
    if is_disk_full(error):
        raise disk_full(path.parent, error) from error
    if (code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)) or (
        type(error) is sqlite3.DatabaseError and "malformed" in str(error)
    ):
        raise damaged(path, str(error)) from error
    raise error


class StoreCursor(sqlite3.Cursor):
    """A cursor of a :class:`StoreConnection`: its statements and fetches raise state errors."""

    connection: StoreConnection

    def execute(self, sql: str, parameters: Any = (), /) -> StoreCursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as error:
            _failed(self.connection.path, error)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> StoreCursor:
        try:
            return super().executemany(sql, seq_of_parameters)
        except sqlite3.Error as error:
            _failed(self.connection.path, error)

    def executescript(self, sql_script: str, /) -> StoreCursor:
        try:
            super().executescript(sql_script)
        except sqlite3.Error as error:
            _failed(self.connection.path, error)
        return self

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as error:
            _failed(self.connection.path, error)

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        try:
            return super().fetchmany(size)
        except sqlite3.Error as error:
            _failed(self.connection.path, error)

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as error:
            _failed(self.connection.path, error)

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as error:
            _failed(self.connection.path, error)


class StoreConnection(sqlite3.Connection):
    """The sample store's connection to the database file ``path``: see :class:`StoreCursor`.

    Example::

        db = sqlite3.connect(uri, uri=True, factory=StoreConnection)
        db.path = path
        db.execute("SELECT ...")  # StateDamaged or DiskFull, naming path, instead of sqlite3 errors
    """

    path: Path

    @overload
    def cursor(self, factory: None = None) -> StoreCursor: ...
    @overload
    def cursor(self, factory: Callable[[sqlite3.Connection], _CursorT]) -> _CursorT: ...
    def cursor(self, factory: Callable[[sqlite3.Connection], sqlite3.Cursor] | None = None) -> sqlite3.Cursor:
        return super().cursor(StoreCursor if factory is None else factory)

    def execute(self, sql: str, parameters: Any = (), /) -> StoreCursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> StoreCursor:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> StoreCursor:
        return self.cursor().executescript(sql_script)


class SampleReads:
    """The read side of :class:`~lifelong.memory.samples.SampleStore` (over its connection ``_db``).

    Example::

        events = store.labels_given(after=0, limit=1000)   # [LabelGiven(seq, id, y), ...]
        x = store.inputs([e.id for e in events])
    """

    _db: StoreConnection

    def label_events(self, after: int, limit: int) -> list[LabelEvent]:
        """Labels given after sequence number ``after``, oldest first, with their samples' inputs."""
        rows = self._db.execute(
            "SELECT e.seq, e.id, e.y, s.x, s.dtype FROM label_events e JOIN samples s ON s.id = e.id "
            "WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [LabelEvent(*row) for row in rows]

    def labels_given(self, after: int, limit: int) -> list[LabelGiven]:
        """Like :meth:`label_events` without the inputs; fetch them with :meth:`inputs`."""
        rows = self._db.execute(
            "SELECT e.seq, e.id, e.y FROM label_events e JOIN samples s ON s.id = e.id "
            "WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [LabelGiven(*row) for row in rows]

    def inputs(self, ids: Sequence[str]) -> list[np.ndarray[Any, Any]]:
        """The stored x of each of ``ids``, in that order, each in its wire dtype."""
        found = self.inputs_found(ids)
        missing = [id for id, x in zip(ids, found, strict=True) if x is None]
        if missing:
            raise StateError(f"no stored sample with id {missing[0]!r} ({len(missing)} missing)")
        return found  # type: ignore[return-value]

    def inputs_found(self, ids: Sequence[str]) -> list[np.ndarray[Any, Any] | None]:
        """Like :meth:`inputs`, with None for an id the store does not hold (forgotten, expired)."""
        found: dict[str, np.ndarray[Any, Any]] = {}
        for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for id, x, dtype in self._db.execute(
                f"SELECT id, x, dtype FROM samples WHERE id IN ({marks})", list(part)
            ):
                found[id] = np.frombuffer(x, dtype=np.dtype(dtype))
        return [found.get(id) for id in ids]

    def last_label_event(self) -> int:
        """The sequence number of the newest label event (0 when none)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'label_events'").fetchone()
        return int(row[0]) if row else 0

    def trim_label_events(self, upto: int) -> None:
        """Drop the label events a durable follower (the memory's snapshot) has consumed."""
        self._db.execute("DELETE FROM label_events WHERE seq <= ?", (upto,))

    def recent_labeled(
        self, keep: Callable[[str], bool], *, limit: int, scan: int
    ) -> list[tuple[str, np.ndarray[Any, Any], int]]:
        """Up to ``limit`` of the newest labeled samples whose id ``keep`` accepts, of the newest ``scan``."""
        # Ids first, payloads only for the chosen: most of the scanned rows are not kept.
        query = "SELECT seq, id FROM samples WHERE y IS NOT NULL ORDER BY seq DESC LIMIT ?"
        chosen = [seq for seq, id in self._db.execute(query, (scan,)) if keep(id)][:limit]
        found = []
        for start in range(0, len(chosen), 500):  # under SQLite's limit on bound parameters
            part = chosen[start : start + 500]
            marks = ",".join("?" * len(part))
            found += self._db.execute(
                f"SELECT id, x, dtype, y FROM samples WHERE seq IN ({marks}) ORDER BY seq DESC", part
            ).fetchall()
        return [(id, np.frombuffer(x, dtype=np.dtype(dtype)), int(y)) for id, x, dtype, y in found]

    def labeled(self) -> Iterable[tuple[str, np.ndarray[Any, Any], int]]:
        """Labeled samples in arrival order as (id, x, y)."""
        query = "SELECT id, x, dtype, y FROM samples WHERE y IS NOT NULL ORDER BY seq"
        for id, x, dtype, y in self._db.execute(query):
            yield id, np.frombuffer(x, dtype=np.dtype(dtype)), int(y)


def rows_matrix(blobs: Sequence[bytes], dtypes: Sequence[str], features: int) -> np.ndarray[Any, Any]:
    """Stored inputs (raw bytes, each with its wire dtype) as one writable matrix.

    Rows of one dtype, the usual case, are joined in a single copy.

    >>> rows_matrix([b"\\x01\\x02", b"\\x03\\x04"], ["|u1", "|u1"], 2).tolist()
    [[1, 2], [3, 4]]
    """
    if blobs and len(set(dtypes)) == 1:
        joined = bytearray().join(blobs)
        return np.frombuffer(joined, dtype=np.dtype(dtypes[0])).reshape(len(blobs), features)
    parts = [np.frombuffer(x, dtype=np.dtype(d)) for x, d in zip(blobs, dtypes, strict=True)]
    return stack_rows(parts, features)


def stack_rows(parts: list[np.ndarray[Any, Any]], features: int) -> np.ndarray[Any, Any]:
    """Decoded inputs as one matrix (uint8 intensities become [0, 1] floats when types are mixed)."""
    if not parts:
        return np.zeros((0, features), dtype=np.float32)
    dtypes = {part.dtype for part in parts}
    # Samples may mix float32 and uint8 encodings: uint8 intensities are read as [0, 1].
    if len(dtypes) > 1:
        parts = [intensities(p) for p in parts]
    return np.stack(parts)
