"""The durable sample store: labeled and waiting samples, early feedback, and the offsets they came from.

One SQLite database in the state directory. Each :meth:`SampleStore.apply` is
one transaction holding a batch's events *and* the next offsets to read, so
after a crash (even ``kill -9``) the store and the read position agree: the
daemon resumes at the stored offsets, and no event is lost or stored twice.

Label rule (wire contract v1): a feedback label overrides an inline label, and
among feedback events for one id the last one read wins. With ``relabels="hold"``
the first label a sample has stays and a feedback label changing it is held
(:mod:`lifelong.memory.held`). Either result does not depend on how the samples
and feedback topics interleave.

Opening checks the file's integrity (``PRAGMA quick_check``, within a time
budget): a damaged store is refused with :class:`~lifelong.errors.StateDamaged`
rather than served from. :meth:`SampleStore.check` runs the full check.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lifelong.errors import StateError
from lifelong.memory.held import HeldLabels
from lifelong.memory.opening import DATABASE, integrity_problems, prepare
from lifelong.memory.reads import SampleReads, StoreConnection

log = logging.getLogger(__name__)


_DEAD_LETTERS = "dead_letters:"  # counter name prefix, one counter per reason

Position = tuple[str, int]
"""A (topic, partition) pair."""


StoredSample = tuple[str, bytes, str, int | None, int | None, str | None, str, int, int, int]
"""A :data:`~lifelong.events.SampleRow` plus where it was read: topic, partition, offset, timestamp_ms."""

StoredFeedback = tuple[str, int, int]
"""A :data:`~lifelong.events.FeedbackRow` plus its record's timestamp_ms."""


@dataclass(slots=True)
class IngestBatch:
    """What one consumer poll produced, to be stored in one transaction."""

    samples: list[StoredSample] = field(default_factory=list)
    feedback: list[StoredFeedback] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason
    positions: dict[Position, int] = field(default_factory=dict)
    dead_letter_positions: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`SampleStore.apply` did with a batch."""

    stored: int = 0
    duplicates: int = 0
    labeled_late: int = 0
    relabeled: int = 0
    early_feedback: int = 0
    held: int = 0  # relabels held back for review (``relabels="hold"``)
    expired_samples: int = 0
    expired_feedback: int = 0


@dataclass(frozen=True)
class Stored:
    """What one stored batch held, for the watchers after ingestion (metrics, live accuracy)."""

    batch: IngestBatch
    applied: Applied
    events: Counter[tuple[str, str]]  # (topic, "accepted" | "rejected") -> count
    labels_upto: int = 0  # the store's last label event once the batch was stored


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Counts for ``lifelong status``."""

    samples: int
    labeled: int
    waiting: int
    early_feedback: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    counters: dict[str, int]
    offsets: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``lifelong status --json``."""
        return {
            "samples": self.samples,
            "labeled": self.labeled,
            "waiting": self.waiting,
            "early_feedback": self.early_feedback,
            "dead_letters": self.dead_letters,
            "dead_letters_by_reason": self.dead_letters_by_reason,
            "counters": self.counters,
            "offsets": self.offsets,
        }


class SampleStore(SampleReads, HeldLabels):
    """The SQLite-backed store of samples, labels and offsets.

    Example::

        with SampleStore.open("./state", waiting_ttl_s=86400, max_waiting=100_000) as store:
            store.apply(batch)
            store.positions()  # {("lifelong.samples", 0): 1000, ...}
    """

    def __init__(
        self,
        *,
        connection: StoreConnection,
        path: Path,
        waiting_ttl_s: float,
        max_waiting: int,
        relabels: Literal["hold", "accept"] = "accept",
    ) -> None:
        self.path = path
        # Feedback that changes a label already given waits in held_labels (see lifelong.memory.held).
        self.relabels = relabels
        self.waiting_ttl_s = waiting_ttl_s
        self.max_waiting = max_waiting
        self._db = connection
        self._early_ids: set[str] = set()
        self._waiting = 0
        self._stale = False  # the caches could not be reloaded after a failed transaction
        self._held_early = 0  # early labels held in the batch being applied
        self._load_caches()

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        waiting_ttl_s: float = 7 * 86400,
        max_waiting: int = 1_000_000,
        relabels: Literal["hold", "accept"] = "accept",
        readonly: bool = False,
        check_s: float | None = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> SampleStore:
        """Open (or, unless ``readonly``, create) the store in ``directory``.

        The file's integrity is checked first for up to ``check_s`` seconds (``None``: not
        at all); a damaged file raises :class:`~lifelong.errors.StateDamaged`.
        """
        path = Path(directory) / DATABASE
        if readonly and not path.exists():
            raise StateError(f"no state at {path}: has the daemon run with this [state] dir?")
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"file:{path}?mode={'ro' if readonly else 'rwc'}"
        try:
            connection = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, factory=StoreConnection
            )
            try:
                connection.path = path
                prepare(connection, readonly=readonly, check_s=check_s, clock=clock)
                return cls(
                    connection=connection,
                    path=path,
                    waiting_ttl_s=waiting_ttl_s,
                    max_waiting=max_waiting,
                    relabels=relabels,
                )
            except BaseException:
                connection.close()
                raise
        except sqlite3.DatabaseError as error:
            raise StateError(
                f"state database {path} cannot be read ({error}); move it aside to rebuild the "
                "state from Kafka, or restore a backup"
            ) from None

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def check(self, *, full: bool = True) -> list[str]:
        """The problems SQLite's integrity check finds in the file (empty when intact).

        ``full`` runs ``PRAGMA integrity_check`` (every page, and every index against its
        table: minutes on a large file), else the quicker ``quick_check`` that opening runs.
        """
        return integrity_problems(self._db, "integrity_check" if full else "quick_check")

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def positions(self) -> dict[Position, int]:
        """The next offset to read for every partition the store has seen."""
        rows = self._db.execute("SELECT topic, partition, next_offset FROM offsets")
        return {(topic, partition): offset for topic, partition, offset in rows}

    def dead_letter_positions(self) -> dict[int, int]:
        """The dead-letter topic's end offsets after the last stored batch."""
        rows = self._db.execute("SELECT partition, next_offset FROM dead_letter_offsets")
        return dict(rows.fetchall())

    def apply(self, batch: IngestBatch) -> Applied:
        """Store a batch and its offsets atomically; return what changed."""
        db = self._db
        with self._transaction():
            self._held_early = 0
            stored, duplicates, labeled_late = self._insert_samples(batch.samples)
            relabeled, late, early, held = self._apply_feedback(batch.feedback)
            held += self._held_early
            expired_samples, expired_feedback = self._expire(batch)
            self._bump({f"{_DEAD_LETTERS}{reason}": n for reason, n in batch.dead_letters.items()})
            self._bump(
                {
                    "duplicates": duplicates,
                    "relabeled": relabeled,
                    "held": held,
                    "expired_samples": expired_samples,
                    "expired_feedback": expired_feedback,
                }
            )
            db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                "DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, partition, offset) for (topic, partition), offset in batch.positions.items()],
            )
            db.executemany(
                "INSERT INTO dead_letter_offsets VALUES (?, ?) ON CONFLICT (partition) "
                "DO UPDATE SET next_offset = excluded.next_offset",
                batch.dead_letter_positions.items(),
            )
        return Applied(
            stored=stored,
            duplicates=duplicates,
            labeled_late=labeled_late + late,
            relabeled=relabeled,
            early_feedback=early,
            held=held,
            expired_samples=expired_samples,
            expired_feedback=expired_feedback,
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; on any failure it rolls back and the in-memory caches are reloaded.

        A full disk or a damaged page raises :class:`~lifelong.errors.DiskFull` or
        :class:`~lifelong.errors.StateDamaged` (from the connection), and nothing of the
        transaction is kept.
        """
        if self._stale:
            self._load_caches()
            self._stale = False
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._undo()
            raise

    def _undo(self) -> None:
        """Roll back a failed transaction, never hiding why it failed behind a failure of its own."""
        # SQLite rolls back by itself after some errors (a full disk at COMMIT): nothing is left to undo.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except (sqlite3.Error, StateError) as error:
                log.warning("rolling back a failed transaction of %s failed too: %s", self.path, error)
        try:
            self._load_caches()
        except (sqlite3.Error, StateError) as error:
            self._stale = True
            log.warning("reloading the caches of %s after a failed transaction failed: %s", self.path, error)

    def _insert_samples(self, samples: list[StoredSample]) -> tuple[int, int, int]:
        db = self._db
        early = self._early_ids
        labeled_late: list[str] = []
        if early:
            samples = [
                self._take_early_label(row, labeled_late) if row[0] in early else row for row in samples
            ]
        before = db.total_changes
        last_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM samples").fetchone()[0]
        db.executemany(
            "INSERT OR IGNORE INTO samples (id, x, dtype, y, ts, meta, topic, partition, offset, "
            "timestamp_ms, labeled_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, "
            "CASE WHEN ?4 IS NULL THEN NULL ELSE 'inline' END)",
            samples,
        )
        stored = db.total_changes - before
        # Exactly the rows this batch stored with a label, in arrival order.
        db.execute(
            "INSERT INTO label_events (id, y) SELECT id, y FROM samples WHERE seq > ? AND y IS NOT NULL "
            "ORDER BY seq",
            (last_seq,),
        )
        if labeled_late:
            db.executemany(
                "UPDATE samples SET labeled_by = 'feedback' WHERE id = ?", [(id,) for id in labeled_late]
            )
        if stored == len(samples):
            self._waiting += sum(1 for row in samples if row[3] is None)
        else:  # some ids were already stored: count what is waiting now
            self._waiting = self._count_waiting()
        return stored, len(samples) - stored, len(labeled_late)

    def _take_early_label(self, row: StoredSample, labeled: list[str]) -> StoredSample:
        found = self._db.execute(
            "DELETE FROM early_feedback WHERE id = ? RETURNING y, timestamp_ms", (row[0],)
        ).fetchone()
        self._early_ids.discard(row[0])
        inline = row[3]
        if self.relabels == "hold" and inline is not None:
            # The sample's own label came first in its life; an earlier feedback label that differs
            # waits as a relabel would had it come after (the order of the topics does not matter).
            self._held_early += self._hold_early(row[0], found[0], inline, found[1])
            return row
        labeled.append(row[0])
        return (*row[:3], found[0], *row[4:])

    def _early_label(self, id: str) -> int:
        return int(self._db.execute("SELECT y FROM early_feedback WHERE id = ?", (id,)).fetchone()[0])

    def _apply_feedback(self, feedback: list[StoredFeedback]) -> tuple[int, int, int, int]:
        cursor = self._db.cursor()
        relabeled = late = early = held = 0
        given: list[tuple[str, int]] = []
        for id, y, timestamp_ms in feedback:
            found = cursor.execute("SELECT y FROM samples WHERE id = ?", (id,)).fetchone()
            # Held: feedback that would change a label already given (see _take_early_label for
            # the same rule when the feedback comes first).
            labeled = (found is not None and found[0] is not None) or id in self._early_ids
            if self.relabels == "hold" and labeled:
                was = found[0] if found is not None else self._early_label(id)
                if was != y:
                    self._hold(id, y, was, timestamp_ms)
                    held += 1
                    continue
                self._withdraw(id)  # the label in place, said again: a held relabel is withdrawn
                if found is None:
                    continue
            if found is not None:
                cursor.execute("UPDATE samples SET y = ?, labeled_by = 'feedback' WHERE id = ?", (y, id))
                given.append((id, y))
                if found[0] is None:
                    late += 1
                else:
                    relabeled += 1
                continue
            cursor.execute(
                "INSERT INTO early_feedback VALUES (?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET y = excluded.y, timestamp_ms = excluded.timestamp_ms",
                (id, y, timestamp_ms),
            )
            self._early_ids.add(id)
            early += 1
        cursor.executemany("INSERT INTO label_events (id, y) VALUES (?, ?)", given)
        self._waiting -= late
        return relabeled, late, early, held

    def _expire(self, batch: IngestBatch) -> tuple[int, int]:
        # The store's clock is the bus's record time, so a replay expires the same events.
        if not batch.samples and not batch.feedback:
            return 0, 0
        now_ms = max(
            max((row[9] for row in batch.samples), default=0),
            max((row[2] for row in batch.feedback), default=0),
            self.stream_time_ms(),
        )
        self._db.execute(
            "INSERT INTO meta VALUES ('stream_time_ms', ?) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value",
            (str(now_ms),),
        )
        cutoff = now_ms - int(self.waiting_ttl_s * 1000)
        samples = self._db.execute(
            "DELETE FROM samples WHERE y IS NULL AND timestamp_ms < ?", (cutoff,)
        ).rowcount
        overflow = self._waiting - samples - self.max_waiting
        if overflow > 0:
            samples += self._db.execute(
                "DELETE FROM samples WHERE seq IN (SELECT seq FROM samples WHERE y IS NULL "
                "ORDER BY timestamp_ms, seq LIMIT ?)",
                (overflow,),
            ).rowcount
        self._waiting -= samples
        expired = self._db.execute(
            "DELETE FROM early_feedback WHERE timestamp_ms < ? RETURNING id", (cutoff,)
        ).fetchall()
        overflow = len(self._early_ids) - len(expired) - self.max_waiting
        if overflow > 0:
            expired += self._db.execute(
                "DELETE FROM early_feedback WHERE id IN (SELECT id FROM early_feedback "
                "ORDER BY timestamp_ms, id LIMIT ?) RETURNING id",
                (overflow,),
            ).fetchall()
        self._early_ids.difference_update(row[0] for row in expired)
        return samples, len(expired)

    def _bump(self, counts: Mapping[str, int]) -> None:
        self._db.executemany(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) "
            "DO UPDATE SET value = value + excluded.value",
            [(name, count) for name, count in counts.items() if count],
        )

    def stream_time_ms(self) -> int:
        """The latest record timestamp stored: the clock that waiting halves expire by."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'stream_time_ms'").fetchone()
        return int(row[0]) if row else 0

    def _count_waiting(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples WHERE y IS NULL").fetchone()[0])

    def _load_caches(self) -> None:
        self._early_ids = {row[0] for row in self._db.execute("SELECT id FROM early_feedback")}
        self._waiting = self._count_waiting()

    def status(self) -> StoreStatus:
        """Counts of samples, labels, waiting halves, dead letters, and the offsets held."""
        db = self._db
        samples = int(db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        waiting = self._count_waiting()
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        by_reason = {
            name[len(_DEAD_LETTERS) :]: value
            for name, value in counters.items()
            if name.startswith(_DEAD_LETTERS)
        }
        return StoreStatus(
            samples=samples,
            labeled=samples - waiting,
            waiting=waiting,
            early_feedback=int(db.execute("SELECT COUNT(*) FROM early_feedback").fetchone()[0]),
            dead_letters=sum(by_reason.values()),
            dead_letters_by_reason=dict(sorted(by_reason.items())),
            counters={k: v for k, v in sorted(counters.items()) if not k.startswith(_DEAD_LETTERS)},
            offsets={
                f"{topic}:{partition}": offset
                for (topic, partition), offset in sorted(self.positions().items())
            },
        )

    def forget(self, ids: list[str]) -> list[str]:
        """Delete samples, early labels and label events by id, bytes overwritten; return the ids found."""
        db = self._db
        db.execute("PRAGMA secure_delete = ON")
        with self._transaction():
            found = [id for id in ids if db.execute("SELECT 1 FROM samples WHERE id = ?", (id,)).fetchone()]
            for table in ("samples", "early_feedback", "label_events", "held_labels"):
                db.executemany(f"DELETE FROM {table} WHERE id = ?", [(id,) for id in ids])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL may still hold the old pages
        self._load_caches()
        return found
