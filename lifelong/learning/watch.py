"""What the daemon watches as events are stored: live predictions, drift signals, ingestion metrics.

Called after each stored batch (:class:`~lifelong.memory.samples.Stored`), in order, on a
thread of its own (the daemon's :class:`~lifelong.daemon.ingest.Handoff`), while the consumer
thread stores the next:
the champion and the online heads predict the batch's samples (and, during a
probation, the champion's predecessor too), their weighted vote is served;
labels score the predictions they answer, then the heads learn them; the drift signals
take the scores, the labels and a novelty score per ``novelty_batch`` samples.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from lifelong.connectors.base import Publisher
from lifelong.learners.base import Learner, class_probabilities, most_likely
from lifelong.learning.online import OnlineMembers
from lifelong.memory.reads import rows_matrix
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import Stored
from lifelong.monitor.drift import DriftMonitor
from lifelong.monitor.live import LiveAccuracy
from lifelong.monitor.metrics import Metrics

log = logging.getLogger(__name__)


class Watch:
    """Scores each stored batch live and feeds the drift signals; raised alarms go to ``on_alarm``.

    Example::

        watch = Watch(live=live, drift=drift, metrics=metrics, models=lambda: {1: champion},
                      memory=memory, lock=lock, features=784, on_alarm=print)
        ingestor.on_stored = Handoff(watch.observe)   # lifelong.daemon.ingest: on a thread of its own
    """

    def __init__(
        self,
        *,
        live: LiveAccuracy,
        drift: DriftMonitor,
        metrics: Metrics,
        models: Callable[[], dict[int, Learner]],
        memory: RehearsalMemory | None,
        lock: AbstractContextManager[Any],
        features: int,
        novelty_batch: int = 256,
        novelty_interval_s: float = 1.0,
        predictions: Publisher | None = None,
        online: OnlineMembers | None = None,
        on_alarm: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live = live
        self.drift = drift
        self.metrics = metrics
        # The versions predicting now: the champion, and its predecessor during a probation.
        self.models = models
        self.memory = memory
        self.lock = lock
        self.features = features
        self.novelty_batch = novelty_batch
        # A k-NN search per batch would slow ingestion at full rate: at most one score this often.
        self.novelty_interval_s = novelty_interval_s
        self.predictions = predictions
        self.online = online
        self.on_alarm = on_alarm
        self.clock = clock
        self._novel: list[np.ndarray[Any, Any]] = []
        self._novel_rows = 0
        self._last_novelty = -float("inf")
        self._outside = 0  # out-of-range samples not yet reported in the log
        self._last_outside_log = -float("inf")
        self._last_members = -float("inf")

    def observe(self, stored: Stored) -> None:
        """Everything one stored batch tells: counts, predictions, scores, drift."""
        metrics = self.metrics
        for (topic, outcome), count in stored.events.items():
            if count:
                metrics.events.labels(topic=topic, outcome=outcome).inc(count)
        for reason, count in stored.batch.dead_letters.items():
            metrics.dead_letters.labels(reason=reason).inc(count)
        expired = stored.applied.expired_samples + stored.applied.expired_feedback
        if expired:
            metrics.expired.inc(expired)
        raised: list[str] = []
        right: list[bool] = []
        labels: list[int] = []
        samples = stored.batch.samples
        if samples:
            inline = [row[3] for row in samples]
            labels += [y for y in inline if y is not None]
            models = self.models()
            online = self.online is not None
            novelty = self.memory is not None and self.memory.size > 0
            if models or online or novelty:
                # Novelty alone looks at the newest rows only.
                rows = samples if models or online else samples[-self.novelty_batch :]
                x = rows_matrix([r[1] for r in rows], [r[2] for r in rows], self.features)
                if models or online:
                    right += self._predict(models, [row[0] for row in samples], x, inline)
                if novelty:
                    raised += self._novelty(x)
        if stored.batch.feedback:
            ids = [row[0] for row in stored.batch.feedback]
            ys = [row[1] for row in stored.batch.feedback]
            right += self.live.labeled(ids, ys)
            labels += ys
        if self.online is not None and labels:
            # These samples are predicted (above): the heads may learn their labels, not those of
            # batches stored since (the consumer thread stores on while this batch is watched).
            self.online.observed(stored.labels_upto)
            if self.clock() - self._last_members >= 1.0:
                self._last_members = self.clock()
                self._members(metrics)
        raised += self.drift.observe_labels(labels) + self.drift.observe_errors(right)
        accuracy = self.live.accuracy
        if accuracy == accuracy:
            metrics.prequential_accuracy.set(accuracy)
        for signal, score in self.drift.scores().items():
            metrics.drift_scores[signal].set(score)
        for signal, up in self.drift.raised().items():
            metrics.drift_alarm.labels(signal=signal).set(int(up))
        for signal in raised:
            metrics.drift_alarms.labels(signal=signal).inc()
        if raised and self.on_alarm is not None:
            self.on_alarm(raised)

    def _predict(
        self, models: dict[int, Learner], ids: list[str], x: np.ndarray[Any, Any], labels: list[int | None]
    ) -> list[bool]:
        serving = max(models) if models else None  # the champion: a probation's predecessor is older
        predictions = {version: model.predict(x) for version, model in models.items() if version != serving}
        beliefs = self.online.probabilities(x) if self.online is not None else {}
        if serving is not None:
            self._check_range(serving, models[serving], x)
            network = class_probabilities(models[serving], x)  # its probabilities join the vote
            predictions[serving] = most_likely(network)
            if beliefs:
                beliefs["network"] = network
        members = {name: most_likely(given) for name, given in beliefs.items()}
        if members:
            assert self.online is not None
            served = self.online.serve(beliefs)
        elif serving is not None:
            served = predictions[serving]
        else:
            return []
        self.metrics.predictions.inc(len(ids))
        if self.predictions is not None:
            for id, label in zip(ids, served.tolist(), strict=True):
                body = {"id": id, "version": serving, "y": int(label)}
                self.predictions.publish(id, json.dumps(body).encode())
        return self.live.predicted(
            ids, predictions, labels, members=members, served=served if members else None
        )

    def _members(self, metrics: Metrics) -> None:
        """Each online member's live accuracy and weight in the served vote."""
        assert self.online is not None
        names = [*self.online.heads.names, *(["network"] if "network" in self.live.members else [])]
        metrics.heads_behind.set(self.online.behind())
        for name, weight in self.online.weights(names).items():
            metrics.member_weight.labels(member=name).set(weight)
            accuracy = self.live.member_accuracy(name)
            if accuracy == accuracy:
                metrics.member_accuracy.labels(member=name).set(accuracy)

    def _check_range(self, version: int, model: Learner, x: np.ndarray[Any, Any]) -> None:
        """Count inputs beyond the range the model was fitted on; say so in the log once a minute."""
        outside = getattr(model, "outside", None)  # learners without input scaling have no fitted range
        if outside is None:
            return
        count = int(np.count_nonzero(outside(x)))
        if not count:
            return
        self.metrics.inputs_out_of_range.inc(count)
        self._outside += count
        if self.clock() - self._last_outside_log >= 60.0:
            self._last_outside_log = self.clock()
            log.warning(
                "%d samples since the last report have inputs beyond the range model version %d was "
                "fitted on (new units, a broken feed, or a new region of the input space): its predictions "
                "there are extrapolation",
                self._outside,
                version,
            )
            self._outside = 0

    def _novelty(self, x: np.ndarray[Any, Any]) -> list[str]:
        if self.memory is None:
            return []
        self._novel.append(x[-self.novelty_batch :])
        self._novel_rows += len(self._novel[-1])
        while self._novel_rows - len(self._novel[0]) >= self.novelty_batch:  # keep only the newest
            self._novel_rows -= len(self._novel.pop(0))
        if (
            self._novel_rows < self.novelty_batch
            or self.clock() - self._last_novelty < self.novelty_interval_s
        ):
            return []
        self._last_novelty = self.clock()
        batch = np.concatenate(self._novel)[-self.novelty_batch :]
        self._novel, self._novel_rows = [], 0
        with self.lock:
            score = self.memory.novelty(batch)
        return self.drift.observe_novelty(score)
