"""Reading the sample store: the outbox of labels its followers consume, and the labeled inputs.

The rehearsal memory and the update rounds follow the labels the store gives through
its ``label_events`` outbox, by sequence number, and trim what a durable follower has
consumed; they fetch inputs by id or read the newest labeled samples. Ingestion's
writes are in :class:`~lifelong.memory.samples.SampleStore`, which has these too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from lifelong.errors import StateError


class SampleReads:
    """The read side of :class:`~lifelong.memory.samples.SampleStore` (over its connection ``_db``).

    Example::

        events = store.labels_given(after=0, limit=1000)   # [(seq, id, y), ...]
        x = store.inputs([id for _, id, _ in events])
    """

    _db: sqlite3.Connection

    def label_events(self, after: int, limit: int) -> list[tuple[int, str, int, bytes, str]]:
        """Labels given after sequence number ``after``, oldest first: (seq, id, y, x bytes, x dtype)."""
        return self._db.execute(
            "SELECT e.seq, e.id, e.y, s.x, s.dtype FROM label_events e JOIN samples s ON s.id = e.id "
            "WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def labels_given(self, after: int, limit: int) -> list[tuple[int, str, int]]:
        """Like :meth:`label_events` without the inputs: (seq, id, y); fetch x with :meth:`inputs`."""
        return self._db.execute(
            "SELECT e.seq, e.id, e.y FROM label_events e JOIN samples s ON s.id = e.id "
            "WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def inputs(self, ids: Sequence[str]) -> list[np.ndarray[Any, Any]]:
        """The stored x of each of ``ids``, in that order, each in its wire dtype."""
        found: dict[str, np.ndarray[Any, Any]] = {}
        for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for id, x, dtype in self._db.execute(
                f"SELECT id, x, dtype FROM samples WHERE id IN ({marks})", list(part)
            ):
                found[id] = np.frombuffer(x, dtype=np.dtype(dtype))
        missing = [id for id in ids if id not in found]
        if missing:
            raise StateError(f"no stored sample with id {missing[0]!r} ({len(missing)} missing)")
        return [found[id] for id in ids]

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
