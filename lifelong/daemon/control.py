"""Model control in the running daemon: update rounds one at a time, rollbacks, and model events.

Rounds run on the scheduler's worker thread (or inline at the end of a burst);
rollbacks come from the HTTP admin API, the live-accuracy probation, or the
command line (followed on the next check). Each outcome is counted in the
metrics and published on the models topic so serving processes can hot-reload.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lifelong.connectors.base import Publisher
from lifelong.errors import DiskFull, LifelongError, RoundAbandoned, RoundDeferred, StateDamaged
from lifelong.files import is_disk_full
from lifelong.learning.update import Outcome, Updater
from lifelong.monitor.live import LiveAccuracy
from lifelong.monitor.metrics import Metrics
from lifelong.registry import ModelVersion

log = logging.getLogger(__name__)

MODEL_EVENT_FORMAT = 1


class Controller:
    """Runs rounds and rollbacks against the updater; keeps metrics, probation and model events current.

    Example::

        control = Controller(updater=updater, metrics=metrics, live=live, min_new_labels=1000)
        control.run_round("interval")     # skipped while fewer than 1,000 labels wait
        control.rollback(None, reason="bad release", trigger="manual")
    """

    def __init__(
        self,
        *,
        updater: Updater,
        metrics: Metrics,
        live: LiveAccuracy,
        min_new_labels: int = 1000,
        first_round_labels: int = 100,
        drift_min_labels: int = 100,
        drift_cooldown_s: float = 600.0,
        on_drift: bool = True,
        events: Publisher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.updater = updater
        self.metrics = metrics
        self.live = live
        self.min_new_labels = min_new_labels
        self.first_round_labels = first_round_labels
        self.drift_min_labels = drift_min_labels
        self.drift_cooldown_s = drift_cooldown_s
        self.on_drift = on_drift
        self.events = events
        self.clock = clock
        self.counts: dict[str, int] = {
            "promoted": 0,
            "rejected": 0,
            "deferred": 0,
            "failed": 0,
            "abandoned": 0,
        }
        self.rollbacks: dict[str, int] = {"manual": 0, "auto": 0, "corrupt": 0}
        # A fault no round can run on (damaged state, a full disk): the daemon stops with it.
        self.fatal: BaseException | None = None
        self._running = threading.Lock()
        self._closed = threading.Event()
        self._served_lock = threading.Lock()
        self._stop = threading.Event()
        self._last_drift_round = -float("inf")
        self._deferred: tuple[int, int] | None = None  # (cursor, labels waiting) at the last deferral
        self.served()

    @property
    def running(self) -> bool:
        """Whether a round is in progress."""
        return self._running.locked()

    def served(self) -> None:
        """Publish the serving version to the metrics and the live evaluation.

        Read and written under one lock, whichever thread changed the model: the last call
        always publishes the latest state.
        """
        with self._served_lock:
            version, predecessor = self.updater.state()
            self.metrics.model_version.set(version)
            self.live.serving(version, predecessor=predecessor[0] if predecessor else None)
            fallbacks = self.updater.take_fallbacks()
        for fallback in fallbacks:  # the champion was damaged and the updater served an intact one
            self._rolled_back("corrupt", fallback.target, before=fallback.damaged, reason=fallback.reason)

    def drift(self, signals: list[str]) -> bool:
        """Alarms were raised: True when a round should run now (enabled, out of cooldown)."""
        if not self.on_drift or not signals:
            return False
        if self.clock() - self._last_drift_round < self.drift_cooldown_s:
            log.info("drift alarm (%s) within the cooldown: no extra round", ", ".join(signals))
            return False
        self._last_drift_round = self.clock()
        log.warning("drift alarm (%s): an update round is due", ", ".join(signals))
        return True

    def labels_needed(self, trigger: str) -> int:
        """How many new labels a ``trigger`` round waits for.

        A scheduled round waits for ``min_new_labels``; while the model is young, only for as
        many as it has trained on so far (at least ``first_round_labels``): the first version
        serves after 100 labels, not 1,000, and rounds double what it learned from until then.
        """
        if trigger == "burst":
            return 1
        if trigger == "drift":
            return self.drift_min_labels
        young = max(self.first_round_labels, self.updater.cursor)
        return min(self.min_new_labels, young)

    def due(self, trigger: str) -> bool:
        """Whether enough new labels wait for a ``trigger`` round.

        After a deferred round its labels wait, but do not count again: the next round needs
        as many new ones on top (a rerun on the same labels would decide the same).
        """
        pending = self.updater.pending()
        deferred = self._deferred[1] if self._deferred and self._deferred[0] == self.updater.cursor else 0
        return pending - deferred >= self.labels_needed(trigger)

    def run_round(self, trigger: str, *, force: bool = False) -> Outcome | None:
        """One round unless one is running, the daemon stops, or too few labels wait.

        ``force`` (and the end of a burst) trains on whatever waits, however few.
        """
        if self._closed.is_set():
            return None
        self.updater.load_champion()  # a rollback made from the command line, or a damaged champion
        self.served()
        if not force and not self.due(trigger):
            log.debug(
                "%s round skipped: %d labels wait, not enough new ones", trigger, self.updater.pending()
            )
            return None
        if not self._running.acquire(blocking=False):
            return None
        if self._closed.is_set():  # closed while this call was on its way
            self._running.release()
            return None
        self.metrics.update_running.set(1)
        started = self.clock()
        try:
            outcome = self.updater.run_round(stop=self._stop.is_set)
        except RoundAbandoned as error:
            self._count("abandoned")
            log.warning("%s; its labels wait for the next round", error)
            return None
        except RoundDeferred as error:
            self._count("deferred")
            self._deferred = (self.updater.cursor, self.updater.pending())
            log.info("%s", error)
            return None
        except (StateDamaged, DiskFull, OSError) as error:
            self._count("failed")
            if not isinstance(error, OSError) or is_disk_full(error):
                log.error("update round failed: %s", error)
                self.fatal = error
                self._closed.set()
                return None
            log.exception("update round failed; the champion keeps serving, its labels wait for the next")
            return None
        except Exception:
            self._count("failed")
            log.exception("update round failed; the champion keeps serving, its labels wait for the next")
            return None
        finally:
            self.metrics.update_running.set(0)
            self.metrics.pending_labels.set(self.updater.pending())
            self._running.release()
        if outcome is None:
            self.served()  # the champion may have been reloaded
            return None
        self.metrics.update_duration.observe(self.clock() - started)
        self._record(outcome, trigger)
        return outcome

    def _record(self, outcome: Outcome, trigger: str) -> None:
        result = "promoted" if outcome.promoted else "rejected"
        self._count(result)
        if outcome.loss == outcome.loss:  # not NaN
            self.metrics.training_loss.set(outcome.loss)
        if outcome.forgetting is not None:
            self.metrics.forgetting.set(outcome.forgetting)
        self.served()
        version = outcome.version
        log.info(
            "update round (%s): version %d %s after %.1fs on %d samples (%s)",
            trigger,
            version.version,
            result,
            outcome.seconds,
            outcome.samples,
            version.reason,
        )
        self.publish(result, version, trigger=trigger, parent=outcome.parent)

    def _count(self, result: str) -> None:
        self.counts[result] += 1
        self.metrics.updates.labels(result=result).inc()

    def rollback(self, version: int | None, *, reason: str, trigger: str) -> ModelVersion:
        """Roll the registry back (to ``version`` or the previous champion) and serve the result."""
        before = self.updater.serving
        target = self.updater.rollback(version, reason=reason, trigger=trigger)
        self.served()
        self._rolled_back(trigger, target, before=before, reason=reason)
        return target

    def _rolled_back(self, trigger: str, target: ModelVersion, *, before: int | None, reason: str) -> None:
        self.rollbacks[trigger] = self.rollbacks.get(trigger, 0) + 1
        self.metrics.rollbacks.labels(trigger=trigger).inc()
        self.publish("rolled_back", target, trigger=trigger, parent=before, reason=reason)

    def check_probation(self, *, margin: float, min_labels: int, window: int, z: float = 2.0) -> None:
        """Roll the newest version back automatically if its live accuracy fell below its predecessor's."""
        probation = self.live.probation
        verdict = self.live.judge(probation, margin=margin, min_labels=min_labels, window=window, z=z)
        if probation is None or verdict is None:
            return
        if not verdict.rollback:
            log.info("model version %d passed its live probation: %s", probation.version, verdict.reason)
            self.live.end_probation(probation)
            self.updater.forget_predecessor(probation.predecessor)
            return
        self.live.end_probation(probation)
        if self.updater.serving != probation.version:
            return
        log.warning("rolling model version %d back automatically: %s", probation.version, verdict.reason)
        try:
            self.rollback(probation.predecessor, reason=verdict.reason, trigger="auto")
        except LifelongError as error:  # the registry is locked or the predecessor is damaged
            log.error("automatic rollback of model version %d failed: %s", probation.version, error)

    def publish(
        self,
        event: str,
        version: ModelVersion,
        *,
        trigger: str,
        parent: int | None = None,
        reason: str | None = None,
    ) -> None:
        """A model event on the models topic: what happened, to which version, and what serves now."""
        if self.events is None:
            return
        body: dict[str, Any] = {
            "format": MODEL_EVENT_FORMAT,
            "event": event,
            "version": version.version,
            "champion": self.updater.serving,
            "parent": parent,
            "trigger": trigger,
            "scores": version.to_json()["scores"],
            "reason": reason if reason is not None else version.reason,
            "ts": int(time.time() * 1000),
        }
        self.events.publish("model", json.dumps(body, allow_nan=False, default=str).encode())

    def close(self) -> None:
        """Refuse new rounds (a running one goes on)."""
        self._closed.set()

    def abandon(self) -> None:
        """Refuse new rounds and ask a running one to give up at its next training step."""
        self._closed.set()
        self._stop.set()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a running round to end; True when none runs."""
        if not self._running.acquire(timeout=max(0.0, timeout_s)):
            return False
        self._running.release()
        return True
