"""Builds the daemon's parts from settings: the one place that knows every concrete class."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from lifelong.config import ADMIN_TOKEN_ENV, Settings
from lifelong.connectors.base import DeadLetterSink, Publisher, Source
from lifelong.connectors.kafka import KafkaSource, client_options, ensure_topics
from lifelong.connectors.kafka_topics import KafkaDeadLetterSink, KafkaPublisher
from lifelong.connectors.memory import MemoryBus, MemoryDeadLetterSink, MemoryPublisher, MemorySource
from lifelong.daemon.app import Daemon, Probation, StateLock, quietly
from lifelong.daemon.control import Controller
from lifelong.daemon.ingest import Handoff, Ingestor
from lifelong.daemon.scheduling import Schedule
from lifelong.errors import ConfigError
from lifelong.events import TopicDecoder
from lifelong.http.api import DeferredAdmin, HttpApi
from lifelong.http.server import HttpServer
from lifelong.learners.base import Learner
from lifelong.learners.configured import build_heads
from lifelong.learners.ensemble import Hedge
from lifelong.learning.build import build_updater
from lifelong.learning.online import OnlineMembers
from lifelong.learning.remember import MemoryFeed
from lifelong.learning.update import Updater
from lifelong.learning.watch import Watch
from lifelong.memory.rehearsal import FORMAT as MEMORY_FORMAT
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore
from lifelong.memory.snapshot import SnapshotDir
from lifelong.monitor.drift import DriftMonitor
from lifelong.monitor.live import LiveAccuracy
from lifelong.monitor.metrics import Metrics


def closing(stack: ExitStack, what: str, close: Callable[[], object]) -> None:
    """Close with ``stack``; a failure is logged in one line, so it never hides why the daemon stopped."""
    stack.callback(quietly, f"close {what}", close)


def open_store(settings: Settings, *, readonly: bool = False) -> SampleStore:
    """The sample store in the configured state directory."""
    return SampleStore.open(
        settings.state.dir,
        waiting_ttl_s=settings.state.waiting_ttl_s,
        max_waiting=settings.state.max_waiting,
        relabels=settings.data.relabels,
        readonly=readonly,
    )


def open_memory(settings: Settings, *, store: SampleStore | None = None) -> RehearsalMemory:
    """The rehearsal memory in the state directory (restored from its last snapshot).

    With ``store``, payload rows found damaged are rebuilt from the inputs it holds.
    """
    memory = settings.memory
    try:
        return RehearsalMemory(
            Path(settings.state.dir) / "memory",
            features=settings.data.features,
            capacity=memory.capacity,
            policy=memory.policy,
            dtype=memory.dtype,
            duplicate_radius=memory.duplicate_radius,
            seed=memory.seed,
            device=memory.device,
            nprobe=memory.nprobe,
            recency=memory.recency,
            inputs=None if store is None else store.inputs_found,
        )
    except ValueError as error:  # memory.device = "gpu" without a GPU build of faiss or a GPU
        raise ConfigError(str(error)) from None


def memory_status(settings: Settings) -> dict[str, Any]:
    """What ``lifelong status`` shows of the memory: its last snapshot's counts (read-only)."""
    manifest = SnapshotDir(
        Path(settings.state.dir) / "memory" / "snapshots", kind="rehearsal-memory", format=MEMORY_FORMAT
    ).manifest()
    return {
        "size": manifest.get("size", 0) if manifest else 0,
        "capacity": settings.memory.capacity,
        "policy": settings.memory.policy,
        "classes": manifest.get("classes", {}) if manifest else {},
    }


@dataclass(frozen=True)
class Connectors:
    """Where the daemon's events come from and go: Kafka, or a :class:`MemoryBus` in tests."""

    source: Callable[[Mapping[tuple[str, int], int], TopicDecoder], Source]
    dead_letters: DeadLetterSink
    publisher: Callable[[str], Publisher]


def kafka_connectors(settings: Settings, stack: ExitStack) -> Connectors:
    """The configured Kafka cluster's topics (created first when ``create_topics``)."""
    kafka = settings.kafka
    options = client_options(kafka)
    if kafka.create_topics:
        ensure_topics(
            client_options=options,
            partitions=kafka.topic_partitions,
            topics=[kafka.samples_topic, kafka.feedback_topic, kafka.dead_letter_topic, kafka.models_topic],
        )
    sink = KafkaDeadLetterSink(
        topic=kafka.dead_letter_topic, client_options=options, timeout_s=kafka.call_timeout_s
    )
    closing(stack, "the dead-letter producer", sink.close)

    def source(positions: Mapping[tuple[str, int], int], decode: TopicDecoder) -> Source:
        kafka_source = KafkaSource(
            topics=[kafka.samples_topic, kafka.feedback_topic],
            group_id=kafka.group_id,
            client_options=options,
            positions=positions,
            start_from=kafka.start_from,
            max_poll_records=kafka.max_poll_records,
            fetchers=kafka.fetchers,
            decode=decode,
            probe_timeout_s=kafka.call_timeout_s,
        )
        closing(stack, "the Kafka fetchers", kafka_source.close)
        return kafka_source

    def publisher(topic: str) -> Publisher:
        # Model events wait for every replica (a serving process must not miss one); predictions do not.
        model_events = topic == kafka.models_topic
        sent = KafkaPublisher(
            topic=topic,
            client_options=options,
            acks="all" if model_events else 1,
            max_block_ms=2000 if model_events else 0,  # predictions never hold up the consumer
        )
        closing(stack, f"the producer of {topic!r}", sent.close)
        return sent

    return Connectors(source=source, dead_letters=sink, publisher=publisher)


def memory_connectors(settings: Settings, bus: MemoryBus) -> Connectors:
    """The configured topics on an in-process :class:`MemoryBus` (tests, in-process runs)."""
    kafka = settings.kafka

    def source(positions: Mapping[tuple[str, int], int], decode: TopicDecoder) -> Source:
        return MemorySource(
            bus=bus,
            topics=[kafka.samples_topic, kafka.feedback_topic],
            positions=lambda tp: positions.get((tp.topic, tp.partition)),
            max_poll_records=kafka.max_poll_records,
        )

    return Connectors(
        source=source,
        dead_letters=MemoryDeadLetterSink(bus=bus, topic=kafka.dead_letter_topic),
        publisher=lambda topic: MemoryPublisher(bus=bus, topic=topic),
    )


def build_daemon(
    settings: Settings,
    stack: ExitStack,
    *,
    connectors: Connectors | None = None,
    metrics_registry: CollectorRegistry | None = None,
) -> Daemon:
    """A daemon reading the configured topics (Kafka unless ``connectors`` say otherwise) into the state.

    Everything it opens is closed by ``stack``. Metrics go to ``metrics_registry`` (a fresh
    one by default, so two daemons in one process never share series).
    """
    kafka = settings.kafka
    token, admin_enabled = _admin_token(settings)  # a missing token fails before anything starts
    stack.enter_context(StateLock(settings.state.dir))
    metrics = Metrics(registry=metrics_registry if metrics_registry is not None else CollectorRegistry())
    # The port answers from here on (alive, not ready) while the cluster and the model are reached.
    admin = DeferredAdmin()
    http = _start_http(
        settings, stack, admin=admin, metrics=metrics, token=token, admin_enabled=admin_enabled
    )
    store = stack.enter_context(open_store(settings))
    if connectors is None:
        connectors = kafka_connectors(settings, stack)
    decode = TopicDecoder(
        samples_topic=kafka.samples_topic,
        feedback_topic=kafka.feedback_topic,
        features=settings.data.features,
        max_classes=settings.data.max_classes,
        max_message_bytes=settings.data.max_message_bytes,
    )
    lock = threading.RLock()  # the store and memory: the consumer writes, update rounds read
    online: OnlineMembers | None = None  # built below; the feed's retention asks it
    memory = open_memory(settings, store=store)
    closing(stack, "the rehearsal memory", memory.close)
    feed = MemoryFeed(
        store=store,
        memory=memory,
        snapshot_interval_s=settings.memory.snapshot_interval_s,
        follow_batch=settings.memory.follow_batch,
        retain_after=lambda: min(
            updater.cursor if updater is not None else feed.position,
            online.saved if online is not None else feed.position,
        ),
    )
    updater = (
        build_updater(settings, store=store, memory=memory, feed=feed, lock=lock)
        if settings.learner.enabled
        else None
    )
    monitor = settings.monitor
    if updater is not None and settings.learner.heads:
        online = open_online(settings, store=store, lock=lock, updater=updater, metrics=metrics)
        closing(stack, "the online heads (saving them)", online.close)
    live = LiveAccuracy(window=monitor.window)
    control = schedule = None
    if updater is not None:
        updater.load_champion()
        control = _controller(settings, updater, metrics=metrics, live=live, connectors=connectors)
        schedule = Schedule(
            interval_s=settings.schedule.interval_s, cron=settings.schedule.cron, run=control.run_round
        )
    predictions = connectors.publisher(kafka.predictions_topic) if monitor.publish_predictions else None
    source = connectors.source(store.positions(), decode)
    daemon = Daemon(
        ingestor=Ingestor(source=source, sink=connectors.dead_letters, store=store, decode=decode, lock=lock),
        feed=feed,
        follow_interval_s=settings.memory.follow_interval_s,
        control=control,
        schedule=schedule,
        metrics=metrics,
        online=online,
        probation=Probation(
            enabled=monitor.auto_rollback,
            margin=monitor.rollback_margin,
            min_labels=monitor.rollback_min_labels,
            window=monitor.rollback_window,
            z=monitor.rollback_z,
        ),
        lock=lock,
        state_dir=Path(settings.state.dir),
        heartbeat=heartbeat_path(settings),
        heartbeat_s=settings.http.heartbeat_s,
        heartbeat_stale_s=settings.http.heartbeat_stale_s,
        grace_s=settings.schedule.grace_s,
    )
    watch = Watch(
        live=live,
        drift=_drift_monitor(settings),
        metrics=metrics,
        models=_predicting(updater),
        memory=memory,
        lock=lock,
        features=settings.data.features,
        novelty_batch=monitor.novelty_batch,
        predictions=predictions,
        online=online,
        on_alarm=daemon.drift,
    )
    daemon.ingestor.on_stored = Handoff(watch.observe)  # watched off the consumer thread
    daemon.http = http
    admin.target = daemon
    return daemon


def open_online(
    settings: Settings, *, store: SampleStore, lock: Any, updater: Updater, metrics: Metrics
) -> OnlineMembers:
    """The online heads ``[learner] heads`` describe, restored from ``state/heads``, following the store."""
    learner = settings.learner

    def network() -> tuple[Learner | None, int]:
        return updater.champion(), updater.cursor

    online = OnlineMembers(
        heads=build_heads(learner, features=settings.data.features, classes=settings.data.max_classes),
        hedge=Hedge(half_life=learner.ensemble_half_life),
        store=store,
        lock=lock,
        held_out=updater.trainer.held_out,
        directory=Path(settings.state.dir) / "heads",
        network=network,
        on_learned=metrics.heads_labels.inc,
    )
    online.load()
    online.observed(store.last_label_event())  # stored before this start: their samples were predicted
    updater.scored = online.scored_upto  # rounds train on what the vote has scored
    updater.trainer.served = online.served_with  # the gate judges candidates as served, too
    updater.vote = online.vote  # each version's lineage records the vote it joined
    online.start()
    return online


def _start_http(
    settings: Settings,
    stack: ExitStack,
    *,
    admin: DeferredAdmin,
    metrics: Metrics,
    token: str | None,
    admin_enabled: bool,
) -> HttpServer | None:
    """The metrics/health/admin port, serving from now on (closed by ``stack``), if enabled."""
    if not settings.http.enabled:
        return None
    app = HttpApi(admin=admin, registry=metrics.registry, token=token, admin_enabled=admin_enabled)
    http = HttpServer(app=app, host=settings.http.host, port=settings.http.port)
    closing(stack, "the HTTP port", http.close)
    http.start()
    return http


def _controller(
    settings: Settings, updater: Updater, *, metrics: Metrics, live: LiveAccuracy, connectors: Connectors
) -> Controller:
    schedule = settings.schedule
    return Controller(
        updater=updater,
        metrics=metrics,
        live=live,
        min_new_labels=schedule.min_new_labels,
        first_round_labels=schedule.first_round_labels,
        drift_min_labels=schedule.drift_min_labels,
        drift_cooldown_s=schedule.drift_cooldown_s,
        on_drift=schedule.on_drift,
        events=connectors.publisher(settings.kafka.models_topic),
    )


def _drift_monitor(settings: Settings) -> DriftMonitor:
    monitor = settings.monitor
    return DriftMonitor(
        classes=settings.data.max_classes,
        window=monitor.window,
        novelty_alarm=monitor.novelty_alarm,
        novelty_clear=monitor.novelty_clear,
        label_shift_alarm=monitor.label_shift_alarm,
        label_shift_clear=monitor.label_shift_clear,
        adwin_delta=monitor.adwin_delta,
        hold_s=monitor.alarm_hold_s,
    )


def heartbeat_path(settings: Settings) -> Path:
    """Where the daemon writes its heartbeat and `lifelong check` reads it."""
    return Path(settings.state.dir) / "HEARTBEAT"


def _admin_token(settings: Settings) -> tuple[str | None, bool]:
    http = settings.http
    token = http.admin_token.get_secret_value() if http.admin_token else None
    if http.enabled and http.admin_enabled and not token:
        raise ConfigError(
            f"http.admin_token: the admin API (POST /rollback) needs a bearer token: set [http] admin_token "
            f"or {ADMIN_TOKEN_ENV}, or turn the admin endpoints off with [http] admin_enabled = false"
        )
    return token, http.admin_enabled


def _predicting(updater: Updater | None) -> Callable[[], dict[int, Learner]]:
    """The versions that predict each sample: the champion, and its predecessor during a probation."""

    def models() -> dict[int, Learner]:
        if updater is None or updater.serving is None:
            return {}
        champion = updater.champion()
        if champion is None:
            return {}
        found = {updater.serving: champion}
        predecessor = updater.predecessor
        if predecessor is not None:
            found[predecessor[0]] = predecessor[1]
        return found

    return models
