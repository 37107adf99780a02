"""Relabels held back: feedback that changes a label already given waits until it is corroborated.

A label that flips a sample the store already holds with another label is the
signature of poisoned or buggy feedback (a label map shifted upstream, a user
relabeling one class as another); it is also how a genuine correction arrives.
With ``hold`` set, the store keeps the label in place and puts the new one in
``held_labels``: nothing trains on it, judges with it or replays it. The
daemon's review (:class:`lifelong.learning.trust.LabelTrust`) releases a held
label once the serving model or the sample's neighbours agree with it, and
drops it when it has waited too long. A later label equal to the one in place
withdraws the held one. The label in place is the first the sample had (its
inline label, else the first feedback label), whichever topic came first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from lifelong.memory.reads import StoreConnection

if TYPE_CHECKING:
    from collections.abc import Mapping
    from contextlib import AbstractContextManager

SCHEMA = """
CREATE TABLE IF NOT EXISTS held_labels (
    id TEXT PRIMARY KEY, y INTEGER NOT NULL, was INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL
);
"""


class HeldLabel(NamedTuple):
    """A relabel waiting for corroboration: the sample, the new label, the one in place, when it came."""

    id: str
    y: int
    was: int
    timestamp_ms: int


class HeldLabels:
    """The held-labels table, mixed into :class:`~lifelong.memory.samples.SampleStore`."""

    _db: StoreConnection
    if TYPE_CHECKING:  # provided by the store

        def _transaction(self) -> AbstractContextManager[None]: ...
        def _bump(self, counts: Mapping[str, int]) -> None: ...

    def _hold(self, id: str, y: int, was: int, timestamp_ms: int) -> None:
        self._db.execute(
            "INSERT INTO held_labels VALUES (?, ?, ?, ?) ON CONFLICT (id) "
            "DO UPDATE SET y = excluded.y, timestamp_ms = excluded.timestamp_ms",
            (id, y, was, timestamp_ms),
        )

    def _hold_early(self, id: str, early: int, inline: int, timestamp_ms: int) -> int:
        """A sample arrived with its own label after feedback for it: hold what differs; how many held.

        A relabel already held came later in feedback order than ``early`` and stays; it now
        changes the inline label (or, equal to it, is withdrawn).
        """
        row = self._db.execute("SELECT y FROM held_labels WHERE id = ?", (id,)).fetchone()
        if row is not None:
            if row[0] == inline:
                self._withdraw(id)
            else:
                self._db.execute("UPDATE held_labels SET was = ? WHERE id = ?", (inline, id))
            return 0
        if early == inline:
            return 0
        self._hold(id, early, inline, timestamp_ms)
        return 1

    def _withdraw(self, id: str) -> None:
        self._db.execute("DELETE FROM held_labels WHERE id = ?", (id,))

    def held_labels(self, limit: int = 100_000) -> list[HeldLabel]:
        """The relabels waiting, oldest first."""
        rows = self._db.execute(
            "SELECT id, y, was, timestamp_ms FROM held_labels ORDER BY timestamp_ms, id LIMIT ?", (limit,)
        )
        return [HeldLabel(*row) for row in rows.fetchall()]

    def held_count(self) -> int:
        """How many relabels wait."""
        return int(self._db.execute("SELECT COUNT(*) FROM held_labels").fetchone()[0])

    def release_labels(self, ids: list[str]) -> int:
        """Apply these held labels as feedback (label events the memory and the next round follow)."""
        with self._transaction():
            released: list[tuple[str, int]] = []
            for id in ids:
                row = self._db.execute("DELETE FROM held_labels WHERE id = ? RETURNING y", (id,)).fetchone()
                if row is not None:
                    released.append((id, int(row[0])))
            self._db.executemany(
                "UPDATE samples SET y = ?, labeled_by = 'feedback' WHERE id = ?",
                [(y, id) for id, y in released],
            )
            self._db.executemany("INSERT INTO label_events (id, y) VALUES (?, ?)", released)
            self._bump({"relabeled": len(released), "held_released": len(released)})
        return len(released)

    def drop_held(self, ids: list[str]) -> int:
        """Discard these held labels: the label in place stays."""
        with self._transaction():
            dropped = sum(
                self._db.execute("DELETE FROM held_labels WHERE id = ?", (id,)).rowcount for id in ids
            )
            self._bump({"held_dropped": dropped})
        return dropped
