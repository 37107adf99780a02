"""The daemon's lifecycle: starting, running, stopping, stopped; burst mode; the shutdown summary."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO

from lifelong.daemon.ingest import Ingestor
from lifelong.daemon.remember import MemoryFeed
from lifelong.daemon.update import Updater
from lifelong.errors import LifelongError, StateError

log = logging.getLogger(__name__)


class RunState(StrEnum):
    """Where the daemon is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class StateLock:
    """An exclusive lock on a state directory, so two daemons never write one state."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "LOCK"
        self._file: IO[str] | None = None

    def __enter__(self) -> StateLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            raise StateError(
                f"{self.path.parent} is in use by another lifelong daemon; give each daemon "
                "its own [state] dir"
            ) from None
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        self._file = file
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Daemon:
    """Runs ingestion until stopped, or in burst mode until the topics are drained.

    Example::

        daemon = Daemon(ingestor=ingestor)
        daemon.run(burst=True)   # returns when drained
        print(daemon.summary())
    """

    def __init__(
        self,
        *,
        ingestor: Ingestor,
        feed: MemoryFeed | None = None,
        feed_interval_s: float = 2.0,
        updater: Updater | None = None,
        update_interval_s: float = 300.0,
        min_new_labels: int = 1000,
        poll_timeout_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingestor = ingestor
        self.feed = feed
        self.feed_interval_s = feed_interval_s
        self._last_feed = clock()
        self.updater = updater
        self.update_interval_s = update_interval_s
        self.min_new_labels = min_new_labels
        self._last_update = clock()
        self.updates: Counter[str] = Counter()
        self.poll_timeout_s = poll_timeout_s
        self.clock = clock
        self._state = RunState.STARTING
        self._stop = threading.Event()
        self._started_at = clock()

    @property
    def state(self) -> RunState:
        """The current run state."""
        return self._state

    def stop(self) -> None:
        """Ask the daemon to stop after the batch in hand; safe from signal handlers, idempotent."""
        self._stop.set()

    def run(self, *, burst: bool = False) -> None:
        """Ingest until :meth:`stop` (or, with ``burst``, until every partition is drained)."""
        self.ingestor.recover()
        self._state = RunState.RUNNING
        log.info("running%s", " (burst: until drained)" if burst else "")
        try:
            while not self._stop.is_set():
                handled = self.ingestor.step(self.poll_timeout_s)
                self._follow(idle=not handled)
                if burst and not handled and self.ingestor.source.lag().drained:
                    if self.feed is not None:
                        self.feed.catch_up()
                    self._update(due=True)
                    break
                self._update(due=False)
        finally:
            self._state = RunState.STOPPING
            try:
                self.ingestor.commit()
            except LifelongError as error:  # the state holds the offsets; the group's copy can wait
                log.warning("could not commit offsets to the consumer group at shutdown: %s", error)
            if self.feed is not None:
                self.feed.maybe_snapshot(force=True)
            self._state = RunState.STOPPED

    def _follow(self, *, idle: bool) -> None:
        """Let the memory catch up: a round when idle, else at most every ``feed_interval_s``."""
        if self.feed is None or not (idle or self.clock() - self._last_feed >= self.feed_interval_s):
            return
        self._last_feed = self.clock()
        self.feed.step()
        self.feed.maybe_snapshot()

    def _update(self, *, due: bool) -> None:
        """An update round when ``due`` (end of a burst) or when the interval has passed with enough labels.

        Rounds run inline for now: ingestion waits while one trains.
        """
        if self.updater is None:
            return
        if not due:
            if self.clock() - self._last_update < self.update_interval_s:
                return
            self._last_update = self.clock()
            if self.updater.pending() < self.min_new_labels:
                self.updater.load_champion()  # follow a rollback made from the command line
                return
        self._last_update = self.clock()
        try:
            outcome = self.updater.run_round()
        except Exception:
            self.updates["failed"] += 1
            log.exception(
                "update round failed; the champion keeps serving, the labels wait for the next round"
            )
            return
        if outcome is None:
            return
        self.updates["promoted" if outcome.promoted else "rejected"] += 1
        log.info(
            "update round: version %d %s after %.1fs on %d samples (%s)",
            outcome.version.version,
            "promoted" if outcome.promoted else "rejected",
            outcome.seconds,
            outcome.samples,
            outcome.version.reason,
        )

    def summary(self) -> str:
        """One line of counters for the log at shutdown."""
        totals = self.ingestor.totals
        fields = (
            "samples",
            "feedback",
            "stored",
            "duplicates",
            "labeled_late",
            "relabeled",
            "dead_letters",
            "expired",
        )
        counts = " ".join(f"{name}={totals[name]}" for name in fields)
        if self.updater is not None:
            counts += (
                f" promoted={self.updates['promoted']} rejected={self.updates['rejected']}"
                f" failed={self.updates['failed']}"
            )
        return f"stopped after {self.clock() - self._started_at:.1f}s: {counts}"
