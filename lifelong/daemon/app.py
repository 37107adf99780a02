"""The daemon's lifecycle: starting, running, stopping, stopped; burst mode; heartbeat; the shutdown summary.

The consumer loop runs on the calling thread and never waits for training:
update rounds run on the scheduler's worker thread, the HTTP port on its own.
A stop (SIGTERM, SIGINT) ends the loop after the batch in hand, lets a running
round finish within half the grace period and abandons it after that, then
commits the offsets and snapshots the memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from lifelong.daemon.control import Controller
from lifelong.daemon.ingest import Ingestor
from lifelong.daemon.scheduling import Schedule
from lifelong.errors import LearningDisabled, LifelongError, StateError, StateInUse
from lifelong.files import disk_full, is_disk_full, write_atomically
from lifelong.http.server import HttpServer
from lifelong.learning.online import OnlineMembers
from lifelong.learning.remember import MemoryFeed
from lifelong.monitor.metrics import Metrics

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
            raise StateInUse(
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


HEARTBEAT_FORMAT = 1


def quietly(what: str, step: Callable[[], object]) -> None:
    """Run a stopping step; a failure is logged in one line and never hides why the daemon stops."""
    try:
        step()
    except Exception as error:
        log.warning("could not %s: %s", what, error)


def read_heartbeat(path: Path) -> dict[str, Any] | None:
    """The heartbeat a daemon last wrote, or None when there is none readable."""
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(beat, dict) or beat.get("format") != HEARTBEAT_FORMAT:
        return None
    return beat


@dataclass(frozen=True)
class Probation:
    """How a newly promoted version is judged on live accuracy (see :mod:`lifelong.monitor.live`)."""

    enabled: bool = True
    margin: float = 0.05
    min_labels: int = 200
    window: int = 2000
    z: float = 2.0


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
        follow_interval_s: float = 2.0,
        control: Controller | None = None,
        schedule: Schedule | None = None,
        http: HttpServer | None = None,
        metrics: Metrics | None = None,
        online: OnlineMembers | None = None,
        probation: Probation = Probation(),
        lock: AbstractContextManager[Any] | None = None,
        state_dir: Path | None = None,
        heartbeat: Path | None = None,
        heartbeat_s: float = 5.0,
        heartbeat_stale_s: float = 60.0,
        grace_s: float = 20.0,
        poll_timeout_s: float = 0.5,
        gauges_interval_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingestor = ingestor
        self.feed = feed
        self.follow_interval_s = follow_interval_s
        self.control = control
        self.schedule = schedule
        self.http = http
        self.metrics = metrics
        self.online = online  # the heads served beside the network, on a thread of their own
        self.probation = probation
        self.lock = lock if lock is not None else contextlib.nullcontext()
        # Named in the message when its disk fills up.
        self.state_dir = state_dir
        self.heartbeat = heartbeat
        self.heartbeat_s = heartbeat_s
        self.heartbeat_stale_s = heartbeat_stale_s
        self.grace_s = grace_s
        self.poll_timeout_s = poll_timeout_s
        self.gauges_interval_s = gauges_interval_s
        self.clock = clock
        self._state = RunState.STARTING
        self._stop = threading.Event()
        self._drift_due = threading.Event()
        self._started_at = clock()
        self._last_feed = clock()
        self._last_beat = -float("inf")
        self._last_loop = clock()
        self._last_gauges = -float("inf")
        self._outage_since: float | None = None

    @property
    def state(self) -> RunState:
        """The current run state."""
        return self._state

    def stop(self) -> None:
        """Ask the daemon to stop after the batch in hand; safe from signal handlers, idempotent.

        A running update round gets half the grace period to finish, then is abandoned (also the
        one a burst runs inline on this thread).
        """
        if self._stop.is_set():
            return
        self._stop.set()
        if self.control is not None:
            self.control.close()
            timer = threading.Timer(self.grace_s / 2, self.control.abandon)
            timer.daemon = True
            timer.start()

    def drift(self, signals: list[str]) -> None:
        """Drift alarms were raised: a round runs now unless the cooldown says otherwise."""
        if self.control is not None and self.control.drift(signals):
            self._drift_due.set()

    def run(self, *, burst: bool = False) -> None:
        """Ingest until :meth:`stop` (or, with ``burst``, until every partition is drained)."""
        self.ingestor.recover()
        self._state = RunState.RUNNING
        if self.http is not None:
            self.http.start()
        if self.schedule is not None and not burst:
            self.schedule.start()
        log.info("running%s", " (burst: until drained)" if burst else "")
        try:
            self._loop(burst)
        except OSError as error:
            if not is_disk_full(error):
                raise
            raise disk_full(self.state_dir or Path("."), error) from error
        finally:
            self._shutdown()

    def _loop(self, burst: bool) -> None:
        while not self._stop.is_set():
            try:
                handled = self.ingestor.step(self.poll_timeout_s)
            except ConnectionError as error:  # the batch is kept and retried
                self._outage(error)
                continue
            if self._outage_since is not None:
                log.info("Kafka reachable again after %.0fs", self.clock() - self._outage_since)
                self._outage_since = None
            self._follow(idle=not handled)
            self._tick()
            if burst and not handled and self.ingestor.source.lag().drained:
                self.ingestor.drain()  # every stored sample predicted: the round may train on its label
                if self.feed is not None:
                    with self.lock:
                        self.feed.catch_up()
                if self.control is not None:
                    self.control.run_round("burst")
                    self._raise_fatal()
                break

    def _outage(self, error: ConnectionError) -> None:
        if self._outage_since is None:
            self._outage_since = self.clock()
            log.warning("Kafka unreachable (%s): retrying; nothing is lost meanwhile", error)
        self._tick()
        self._stop.wait(min(1.0, max(self.poll_timeout_s, 0.05)))

    def _shutdown(self) -> None:
        """Stop in order; a step that fails is logged in one line and the next one still runs.

        When the daemon stops on an error, that error is the one the caller sees: nothing raised
        here replaces it.
        """
        self._state = RunState.STOPPING
        quietly("write the heartbeat at shutdown", lambda: self._beat(force=True))
        if self.schedule is not None:
            quietly("stop the schedule at shutdown", self.schedule.shutdown)
        quietly("let the watchers observe what was stored at shutdown", self.ingestor.close)
        if self.control is not None:
            self.control.close()
            if not self.control.wait(self.grace_s / 2):
                log.warning("the update round has not finished within %.0fs: abandoning it", self.grace_s / 2)
                self.control.abandon()
                if not self.control.wait(self.grace_s / 2):
                    log.error("the update round did not stop in time; exiting without it")
        # The state holds the offsets; the group's copy is for lag tooling and can wait.
        quietly("commit offsets to the consumer group at shutdown", self.ingestor.commit)
        if self.feed is not None:
            feed = self.feed

            def snapshot() -> None:
                with self.lock:
                    feed.maybe_snapshot(force=True)

            quietly("snapshot the rehearsal memory (the last snapshot is kept) at shutdown", snapshot)
        if self.http is not None:
            quietly("close the HTTP port at shutdown", self.http.close)
        self._state = RunState.STOPPED
        quietly("write the heartbeat at shutdown", lambda: self._beat(force=True))

    def _raise_fatal(self) -> None:
        """An update round met a fault the daemon cannot run on (damaged state, a full disk): stop with it."""
        if self.control is not None and self.control.fatal is not None:
            raise self.control.fatal

    def _follow(self, *, idle: bool) -> None:
        """Let the memory and the heads catch up: when idle, else at most every ``follow_interval_s``."""
        if not (idle or self.clock() - self._last_feed >= self.follow_interval_s):
            return
        self._last_feed = self.clock()
        if self.online is not None:
            self.online.notify()  # it learns on its own thread
        if self.feed is not None:
            with self.lock:
                self.feed.step()
                self.feed.maybe_snapshot()

    def _tick(self) -> None:
        """Once per loop: heartbeat, gauges, the probation check, a drift-triggered round."""
        self._last_loop = self.clock()
        self._raise_fatal()
        self._beat()
        control = self.control
        if control is not None:
            if self.probation.enabled:
                control.check_probation(
                    margin=self.probation.margin,
                    min_labels=self.probation.min_labels,
                    window=self.probation.window,
                    z=self.probation.z,
                )
            if self._drift_due.is_set() and self.schedule is not None:
                self._drift_due.clear()
                self.schedule.trigger_now("drift")
        if self.metrics is not None and self.clock() - self._last_gauges >= self.gauges_interval_s:
            self._last_gauges = self.clock()
            self._gauges(self.metrics)

    def _gauges(self, metrics: Metrics) -> None:
        metrics.watch_waiting.set(self.ingestor.watch_waiting())
        lag = self.ingestor.source.lag()
        for (topic, partition), behind in lag.behind.items():
            metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(0, behind))
        with self.lock:
            status = self.ingestor.store.status()
            if self.feed is not None:
                memory = self.feed.memory
                metrics.set_memory(
                    size=memory.size,
                    capacity=memory.capacity,
                    classes=memory.classes(),
                    damaged={
                        "rebuilt": memory.counters["payload_rebuilt"],
                        "dropped": memory.counters["payload_dropped"],
                    },
                )
            metrics.held_labels.labels(outcome="waiting").set(self.ingestor.store.held_count())
        for outcome, counter in (
            ("held", "held"),
            ("released", "held_released"),
            ("dropped", "held_dropped"),
        ):
            metrics.held_labels.labels(outcome=outcome).set(status.counters.get(counter, 0))
        metrics.samples_stored.set(status.samples)
        metrics.waiting_samples.set(status.waiting)
        if self.control is not None:
            metrics.pending_labels.set(self.control.updater.pending())

    def _beat(self, *, force: bool = False) -> None:
        if self.metrics is not None:
            self.metrics.heartbeat.set_to_current_time()
        if not force and self.clock() - self._last_beat < self.heartbeat_s:
            return
        self._last_beat = self.clock()
        if self.metrics is not None:
            try:
                self.metrics.ready.set(int(self.readiness()[0]))
            except (OSError, LifelongError) as error:  # the registry unreadable for a moment
                log.warning("readiness check failed: %s", error)
                self.metrics.ready.set(0)
        if self.heartbeat is None:
            return
        beat = {
            "format": HEARTBEAT_FORMAT,
            "pid": os.getpid(),
            "state": self._state.value,
            "ts": time.time(),
            "stale_after_s": self.heartbeat_stale_s,
            "http_port": self.http.port if self.http is not None else None,
        }
        write_atomically(self.heartbeat, json.dumps(beat).encode())

    # -- what the HTTP endpoints ask -----------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the consumer loop went round recently."""
        since = self.clock() - self._last_loop
        alive = self._state in (RunState.STARTING, RunState.RUNNING) and since < self.heartbeat_stale_s
        return alive, {"state": self._state.value, "loop_age_s": round(since, 3)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: running, partitions assigned, the broker answering, the champion loaded if there is one.

        Before the first version there is no model to load: the daemon is ready to ingest (it
        needs labeled samples to train one), and ``model`` says that none serves yet.
        """
        source = self.ingestor.source
        lag = source.lag()
        checks = {
            "running": self._state == RunState.RUNNING,
            "partitions_assigned": bool(lag.behind) or lag.unknown > 0,
            "broker_reachable": bool(getattr(source, "connected", True)) and self._outage_since is None,
        }
        model = self._model()
        if model["champion"] is not None:
            checks["model_loaded"] = model["serving"] is not None
        return all(checks.values()), {"checks": checks, "model": model}

    def _model(self) -> dict[str, Any]:
        """The version serving and the registry's champion (None and None before the first version)."""
        if self.control is None:
            return {"serving": None, "champion": None, "learning": False}
        updater = self.control.updater
        try:
            champion = updater.registry.champion()
        except StateError as error:  # its files are damaged: the next load falls back
            return {"serving": updater.serving, "champion": None, "error": str(error)}
        return {"serving": updater.serving, "champion": None if champion is None else champion.version}

    def versions(self) -> dict[str, Any]:
        """The serving version, the registry's champion and every version."""
        if self.control is None:
            return {"serving": None, "champion": None, "versions": []}
        registry = self.control.updater.registry
        champion = registry.champion()
        return {
            "serving": self.control.updater.serving,
            "champion": champion.version if champion else None,
            "versions": [v.to_json() for v in registry.versions()],
        }

    def rollback(self, version: int | None, reason: str) -> dict[str, Any]:
        """A manual rollback; what serves before and after."""
        if self.control is None:
            raise LearningDisabled("learning is disabled ([learner] enabled = false): there are no versions")
        before = self.control.updater.serving
        target = self.control.rollback(version, reason=reason, trigger="manual")
        return {"previous": before, "champion": target.version, "serving": self.control.updater.serving}

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
        if self.control is not None:
            counts += " " + " ".join(f"{k}={v}" for k, v in self.control.counts.items())
            counts += f" rollbacks={sum(self.control.rollbacks.values())}"
            counts += f" serving={self.control.updater.serving}"
        return f"stopped after {self.clock() - self._started_at:.1f}s: {counts}"
