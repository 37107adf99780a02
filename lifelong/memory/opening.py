"""Opening the sample store's SQLite file: connection settings, the integrity check, schema and format.

What :meth:`~lifelong.memory.samples.SampleStore.open` does before the store is used: a
damaged file is refused here (``PRAGMA quick_check`` within a time budget), and a file of
another format is refused with what to do.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from lifelong.errors import StateDamaged, StateError, UnsupportedFormat
from lifelong.memory.held import SCHEMA as HELD_SCHEMA
from lifelong.memory.reads import StoreConnection, damaged

log = logging.getLogger(__name__)

FORMAT = 2
DATABASE = "samples.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    x BLOB NOT NULL,
    dtype TEXT NOT NULL,
    y INTEGER,
    labeled_by TEXT,
    ts INTEGER,
    meta TEXT,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_waiting ON samples (timestamp_ms) WHERE y IS NULL;
CREATE TABLE IF NOT EXISTS early_feedback (
    id TEXT PRIMARY KEY, y INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS early_feedback_age ON early_feedback (timestamp_ms);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS dead_letter_offsets (
    partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- The outbox of labels given, in order: the rehearsal memory follows it by sequence number.
-- AUTOINCREMENT: sequence numbers are never reused, even after the consumed ones are trimmed.
CREATE TABLE IF NOT EXISTS label_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, y INTEGER NOT NULL
);
"""


def prepare(
    connection: StoreConnection, *, readonly: bool, check_s: float | None, clock: Callable[[], float]
) -> None:
    """Set the connection up, check the file's integrity, and (unless ``readonly``) create the schema."""
    if not readonly:
        # 16 KiB pages (set when the file is created): appends split fewer B-tree pages,
        # and a stored row costs about 15% less than with the default 4 KiB.
        connection.execute("PRAGMA page_size=16384")
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL is safe against process crashes in WAL mode; after a power loss the
        # last transactions may be lost together with their offsets and are re-read.
        connection.execute("PRAGMA synchronous=NORMAL")
        # The id index takes inserts all over: keep its pages cached rather than re-read.
        connection.execute("PRAGMA cache_size=-65536")
        # Checkpoint every ~40 MB of WAL, not 4 MB: index pages rewritten often are copied once.
        page_bytes = connection.execute("PRAGMA page_size").fetchone()[0]
        connection.execute(f"PRAGMA wal_autocheckpoint={(40 << 20) // page_bytes}")
    if check_s is not None:
        _quick_check(connection, check_s, clock)
    if not readonly:
        connection.executescript(_SCHEMA + HELD_SCHEMA)
    _check_format(connection, connection.path, create=not readonly)


def _quick_check(connection: StoreConnection, check_s: float, clock: Callable[[], float]) -> None:
    """Refuse a damaged file (``PRAGMA quick_check``); on a large file, give up after ``check_s``."""
    deadline = clock() + check_s
    cut_short = False

    def past_deadline() -> bool:
        nonlocal cut_short
        cut_short = clock() >= deadline
        return cut_short  # true aborts the check

    connection.set_progress_handler(past_deadline, 1000)  # every 1000 SQLite VM instructions
    try:
        problems = integrity_problems(connection, "quick_check(20)")
    except sqlite3.OperationalError:
        if not cut_short:
            raise
        log.warning(
            "the integrity check of %s was cut short after %gs: run `lifelong check --state --config "
            "FILE` for the full check",
            connection.path,
            check_s,
        )
        return
    finally:
        connection.set_progress_handler(None, 0)
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise damaged(connection.path, "; ".join(problems[:3]) + more)


def integrity_problems(connection: StoreConnection, pragma: str) -> list[str]:
    """What an integrity-check pragma reports, one problem a line; empty when the file is intact."""
    problems = []
    try:
        for (report,) in connection.execute(f"PRAGMA {pragma}"):
            # Several problems may come in one row, under a "*** in database main ***" heading.
            problems += [
                line for line in report.splitlines() if line not in ("ok", "*** in database main ***")
            ]
    except StateDamaged as error:  # a page the check itself cannot walk
        problems.append(str(error.__cause__))
    return problems


def _check_format(connection: sqlite3.Connection, path: Path, *, create: bool) -> None:
    row = connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    if row is None:
        if not create:
            raise StateError(f"{path} has no format marker: it is not a lifelong state database")
        connection.execute("INSERT INTO meta VALUES ('format', ?)", (str(FORMAT),))
        connection.execute("INSERT INTO meta VALUES ('created_at', ?)", (str(time.time()),))
        return
    found = int(row[0])
    if found != FORMAT:
        newer = found > FORMAT
        raise UnsupportedFormat(
            f"state database {path} has format {found}, this lifelong reads format {FORMAT}: "
            + (
                "upgrade lifelong to read it"
                if newer
                else "it was written by an older lifelong; move it aside to rebuild the state from Kafka"
            )
        )
