"""Builds the daemon's parts from settings: the one place that knows every concrete class."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.config import KafkaSettings, Settings
from lifelong.connectors.kafka import KafkaDeadLetterSink, KafkaSource, ensure_topics
from lifelong.daemon.app import Daemon, StateLock
from lifelong.daemon.ingest import Ingestor
from lifelong.daemon.remember import MemoryFeed
from lifelong.daemon.update import Updater
from lifelong.errors import ConfigError
from lifelong.events import TopicDecoder
from lifelong.learners.gate import Gate
from lifelong.learners.trainer import Trainer
from lifelong.memory.rehearsal import FORMAT as MEMORY_FORMAT
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore
from lifelong.memory.snapshot import SnapshotDir
from lifelong.registry import ModelRegistry

if TYPE_CHECKING:
    from lifelong.learners.avalanche import AvalancheLearner


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments shared by consumers, producers and the admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "client_id": kafka.client_id,
        "request_timeout_ms": kafka.request_timeout_ms,
        "security_protocol": kafka.security_protocol,
    }
    optional = {
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_plain_username": kafka.sasl_plain_username,
        "sasl_plain_password": (
            kafka.sasl_plain_password.get_secret_value() if kafka.sasl_plain_password else None
        ),
        "ssl_cafile": str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
        "ssl_certfile": str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
        "ssl_keyfile": str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
    }
    options.update({key: value for key, value in optional.items() if value is not None})
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = kafka.ssl_check_hostname
    return options


def open_store(settings: Settings, *, readonly: bool = False) -> SampleStore:
    """The sample store in the configured state directory."""
    return SampleStore.open(
        settings.state.dir,
        waiting_ttl_s=settings.state.waiting_ttl_s,
        max_waiting=settings.state.max_waiting,
        readonly=readonly,
    )


def open_memory(settings: Settings) -> RehearsalMemory:
    """The rehearsal memory in the state directory (restored from its last snapshot)."""
    memory = settings.memory
    return RehearsalMemory(
        Path(settings.state.dir) / "memory",
        features=settings.data.features,
        capacity=memory.capacity,
        policy=memory.policy,
        dtype=memory.dtype,
        duplicate_radius=memory.duplicate_radius,
        seed=memory.seed,
    )


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


def build_daemon(settings: Settings, stack: ExitStack) -> Daemon:
    """A daemon reading the configured Kafka topics into the configured state directory.

    Everything it opens is closed by ``stack``.
    """
    kafka = settings.kafka
    options = client_options(kafka)
    stack.enter_context(StateLock(settings.state.dir))
    store = stack.enter_context(open_store(settings))
    if kafka.create_topics:
        ensure_topics(
            client_options=options,
            partitions=kafka.topic_partitions,
            topics=[kafka.samples_topic, kafka.feedback_topic, kafka.dead_letter_topic],
        )
    decode = TopicDecoder(
        samples_topic=kafka.samples_topic,
        feedback_topic=kafka.feedback_topic,
        features=settings.data.features,
        max_classes=settings.data.max_classes,
        max_message_bytes=settings.data.max_message_bytes,
    )
    sink = KafkaDeadLetterSink(topic=kafka.dead_letter_topic, client_options=options)
    stack.callback(sink.close)
    source = KafkaSource(
        topics=[kafka.samples_topic, kafka.feedback_topic],
        group_id=kafka.group_id,
        client_options=options,
        positions=store.positions(),
        start_from=kafka.start_from,
        max_poll_records=kafka.max_poll_records,
        fetchers=kafka.fetchers,
        decode=decode,
    )
    stack.callback(source.close)
    memory = open_memory(settings)
    stack.callback(memory.close)
    feed = MemoryFeed(
        store=store,
        memory=memory,
        snapshot_interval_s=settings.memory.snapshot_interval_s,
        batch_rows=settings.memory.follow_batch,
        retain_after=lambda: updater.cursor if updater is not None else feed.position,
    )
    updater = (
        build_updater(settings, store=store, memory=memory, feed=feed) if settings.learner.enabled else None
    )
    if updater is not None:
        updater.load_champion()
    return Daemon(
        ingestor=Ingestor(source=source, sink=sink, store=store, decode=decode),
        feed=feed,
        feed_interval_s=settings.memory.follow_interval_s,
        updater=updater,
        update_interval_s=settings.learner.interval_s,
        min_new_labels=settings.learner.min_new_labels,
    )


def open_registry(settings: Settings) -> ModelRegistry:
    """The model registry in the state directory."""
    return ModelRegistry(root=Path(settings.state.dir) / "models", keep_last=settings.learner.keep_versions)


def build_learner(
    settings: Settings, *, exclude_from_replay: Callable[[str], bool] | None = None
) -> AvalancheLearner:
    """A fresh learner as ``[learner]`` and ``[data]`` describe it."""
    # Imported here: Avalanche takes seconds to import, and status, forget and versions never need it.
    from lifelong.learners.avalanche import AvalancheLearner
    from lifelong.learners.models import build_model

    learner = settings.learner
    model = build_model(
        learner.model,
        features=settings.data.features,
        classes=settings.data.max_classes,
        options=learner.model_options,
        init_weights=learner.init_weights,
        freeze=learner.freeze,
    )
    try:
        return AvalancheLearner(
            model=model,
            classes=settings.data.max_classes,
            exclude_from_replay=exclude_from_replay,
            **learner.learner_options(),
        )
    except ValueError as error:  # the device, most likely
        raise ConfigError(f"learner: {error}") from None


def build_trainer(settings: Settings) -> Trainer:
    """The trainer: candidates built from ``[learner]``, judged by its gate settings."""
    learner = settings.learner
    gate = Gate(
        recent_tolerance=learner.gate_recent_tolerance,
        memory_tolerance=learner.gate_memory_tolerance,
        min_samples=learner.gate_min_samples,
        z=learner.gate_z,
    )
    trainer = Trainer(
        build=lambda: build_learner(settings, exclude_from_replay=trainer.held_out),
        gate=gate,
        holdout=learner.holdout,
    )
    trainer.build()  # a bad model, plugin or device fails at start, naming the key
    return trainer


def build_updater(
    settings: Settings, *, store: SampleStore, memory: RehearsalMemory, feed: MemoryFeed | None
) -> Updater:
    """Update rounds over the store and memory, versions in the state directory's registry."""

    def before_round() -> None:
        if feed is not None:
            feed.catch_up()
            feed.maybe_snapshot(force=True)

    return Updater(
        trainer=build_trainer(settings),
        store=store,
        memory=memory,
        registry=open_registry(settings),
        features=settings.data.features,
        recent=settings.learner.recent,
        config=settings.learner.model_dump(mode="json"),
        before_round=before_round,
    )
