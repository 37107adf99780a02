"""The daemon's Prometheus metrics: one bundle on an injected registry, names fixed for dashboards."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from lifelong.events import Reason

# Rounds take seconds to many minutes: buckets up to an hour.
UPDATE_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)

SIGNALS = ("novelty", "label_shift", "accuracy")
# Each drift signal's score, one gauge per unit (a ratio, a distance and a drop never share an axis).
DRIFT_SCORES = {
    "novelty": (
        "lifelong_drift_novelty_ratio",
        "Mean k-NN distance of new samples to the rehearsal memory over the memory's own (1 = typical).",
    ),
    "label_shift": (
        "lifelong_drift_label_shift_distance",
        "Jensen-Shannon distance between the last window's class mix and the window before (0-1).",
    ),
    "accuracy": (
        "lifelong_drift_accuracy_drop",
        "Drop in live accuracy where ADWIN found the errors rose (0 = none).",
    ),
}


class KnownGauge(Collector):
    """A gauge that is absent from the exposition until it has a value (not 0, which alerts would read).

    Example::

        accuracy = KnownGauge("lifelong_prequential_accuracy", "Live accuracy.", registry=registry)
        accuracy.set(0.93)   # exported from now on; set(nan) makes it absent again
    """

    def __init__(self, name: str, documentation: str, *, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._value: float | None = None
        registry.register(self)

    def set(self, value: float | None) -> None:
        """The current value; None or NaN: unknown, and not exported."""
        self._value = None if value is None or math.isnan(value) else float(value)

    @property
    def value(self) -> float | None:
        """The current value, None while unknown."""
        return self._value

    def collect(self) -> Iterator[Metric]:
        value = self._value
        if value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=value)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.name, self.documentation)


class Metrics:
    """Every metric the daemon exports.

    Example::

        metrics = Metrics(registry=CollectorRegistry())
        metrics.events.labels(topic="lifelong.samples", outcome="accepted").inc(100)
    """

    def __init__(self, *, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        r = registry
        self.events = Counter(
            "lifelong_events",
            "Events consumed, by topic and outcome (accepted, rejected).",
            ["topic", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "lifelong_dead_letters",
            "Events sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "lifelong_consumer_lag",
            "Records not yet consumed, per partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.samples_stored = Gauge("lifelong_samples_stored", "Samples in the durable state.", registry=r)
        self.waiting_samples = Gauge(
            "lifelong_waiting_samples", "Stored samples waiting for their label.", registry=r
        )
        self.expired = Counter(
            "lifelong_expired", "Samples or feedback dropped after waiting past the TTL.", registry=r
        )
        self.memory_samples = Gauge("lifelong_memory_samples", "Samples in the rehearsal memory.", registry=r)
        self.memory_capacity = Gauge(
            "lifelong_memory_capacity", "The rehearsal memory's capacity.", registry=r
        )
        self.memory_class_samples = Gauge(
            "lifelong_memory_class_samples",
            "Samples in the rehearsal memory, per class.",
            ["label"],
            registry=r,
        )
        self.memory_damaged_rows = Gauge(
            "lifelong_memory_damaged_rows",
            "Rehearsal-memory payload rows that failed their checksum since the memory began, by "
            "outcome (rebuilt from the sample store, dropped from the memory); never trained on.",
            ["outcome"],
            registry=r,
        )
        self.held_labels = Gauge(
            "lifelong_held_labels",
            "Relabels (feedback changing a label already given) held back from training: waiting now, and "
            "since the state began held, released (the model or the memory neighbours agreed) or dropped "
            "(never corroborated).",
            ["outcome"],
            registry=r,
        )
        self.pending_labels = Gauge(
            "lifelong_pending_labels", "Labels received and not yet trained on.", registry=r
        )
        self.updates = Counter(
            "lifelong_updates",
            "Update rounds, by result (promoted, rejected, deferred: too few held-out samples to judge, "
            "its labels wait; failed, abandoned).",
            ["result"],
            registry=r,
        )
        self.update_duration = Histogram(
            "lifelong_update_duration_seconds", "Update round wall time.", buckets=UPDATE_BUCKETS, registry=r
        )
        self.update_running = Gauge("lifelong_update_running", "1 while an update round runs.", registry=r)
        self.model_version = KnownGauge(
            "lifelong_model_version", "The champion version serving (absent before the first).", registry=r
        )
        self.prequential_accuracy = KnownGauge(
            "lifelong_prequential_accuracy",
            "Share of the last window's labeled samples predicted right on arrival by what was served "
            "(the members' weighted vote, or the champion alone; absent until one is scored).",
            registry=r,
        )
        self.predictions = Counter("lifelong_predictions", "Samples predicted on arrival.", registry=r)
        self.member_accuracy = Gauge(
            "lifelong_member_accuracy",
            "Each served member's live accuracy over the last window (network: the champion; "
            "lda*: the online heads).",
            ["member"],
            registry=r,
        )
        self.heads_labels = Counter(
            "lifelong_heads_labels",
            "Label events the online heads have taken in (learned, or passed over as held out).",
            registry=r,
        )
        self.heads_behind = Gauge(
            "lifelong_heads_behind",
            "Label events stored that the online heads have not taken in yet (they follow on a thread "
            "of their own; a burst leaves them behind for a while).",
            registry=r,
        )
        self.watch_waiting = Gauge(
            "lifelong_watch_waiting",
            "Stored batches waiting for the watchers (predictions, live accuracy, drift) on their own "
            "thread; when 8 wait, ingestion waits for them.",
            registry=r,
        )
        self.member_weight = Gauge(
            "lifelong_member_weight",
            "Each member's weight in the served vote (from its recent live accuracy; they sum to 1).",
            ["member"],
            registry=r,
        )
        self.inputs_out_of_range = Counter(
            "lifelong_inputs_out_of_range",
            "Samples predicted whose inputs leave the range the serving model was fitted on (some "
            "feature beyond its fitted [min, max] by more than half that span): new units or a broken feed.",
            registry=r,
        )
        self.drift_scores = {
            signal: Gauge(name, documentation, registry=r)
            for signal, (name, documentation) in DRIFT_SCORES.items()
        }
        self.drift_alarm = Gauge(
            "lifelong_drift_alarm", "1 while a drift alarm is raised.", ["signal"], registry=r
        )
        self.drift_alarms = Counter(
            "lifelong_drift_alarms", "Drift alarms raised, by signal.", ["signal"], registry=r
        )
        self.rollbacks = Counter(
            "lifelong_rollbacks",
            "Rollbacks, by trigger (manual, auto, corrupt: the champion's files were damaged).",
            ["trigger"],
            registry=r,
        )
        self.training_loss = KnownGauge(
            "lifelong_training_loss", "The last round's mean training loss (absent before one).", registry=r
        )
        self.forgetting = KnownGauge(
            "lifelong_forgetting",
            "The last candidate's accuracy drop on the memory's held-out samples against its champion "
            "(negative: it improved on the past).",
            registry=r,
        )
        self.heartbeat = Gauge(
            "lifelong_heartbeat_timestamp_seconds", "When the consumer loop last went round.", registry=r
        )
        self.ready = Gauge("lifelong_ready", "1 when /readyz passes.", registry=r)
        for signal in SIGNALS:  # every series exists from the start: dashboards show zeros, not gaps
            self.drift_scores[signal].set(0)
            self.drift_alarm.labels(signal=signal).set(0)
            self.drift_alarms.labels(signal=signal)
        for trigger in ("manual", "auto", "corrupt"):
            self.rollbacks.labels(trigger=trigger)
        for result in ("promoted", "rejected", "failed", "abandoned"):
            self.updates.labels(result=result)
        for reason in Reason:
            self.dead_letters.labels(reason=reason.value)
        for outcome in ("rebuilt", "dropped"):
            self.memory_damaged_rows.labels(outcome=outcome).set(0)
        self._classes: set[int] = set()

    def set_memory(
        self,
        *,
        size: int,
        capacity: int,
        classes: Mapping[int, int],
        damaged: Mapping[str, int] | None = None,
    ) -> None:
        """The memory's size, capacity, class mix and payload rows found damaged (by outcome)."""
        for outcome, count in (damaged or {}).items():
            self.memory_damaged_rows.labels(outcome=outcome).set(count)
        self.memory_samples.set(size)
        self.memory_capacity.set(capacity)
        for label in self._classes - set(classes):  # a class the memory no longer holds
            self.memory_class_samples.labels(label=str(label)).set(0)
        self._classes |= set(classes)
        for label, count in classes.items():
            self.memory_class_samples.labels(label=str(label)).set(count)
