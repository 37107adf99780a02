"""Faults on the daemon's own disk (a damaged champion, a full disk) and probes and gauges on a fresh start.

On an in-memory bus with the real store, memory and registry (the Kafka faults are in test_faults_kafka.py).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from lifelong.benchmarks import digits
from lifelong.config import Settings, load_settings
from lifelong.connectors.memory import MemoryBus
from lifelong.daemon.app import Daemon, RunState
from lifelong.daemon.wiring import build_daemon, memory_connectors, open_memory, open_store
from lifelong.errors import DiskFull
from lifelong.events import encode_sample
from lifelong.learning.build import build_updater
from lifelong.learning.remember import MemoryFeed
from lifelong.memory.samples import IngestBatch
from lifelong.registry import open_registry
from tests import waiting
from tests.inprocess import daemon_on_bus
from tests.streams import stored

X, Y, _, _ = digits()

CONFIG = """
[state]
dir = "{dir}"
[data]
features = 64
max_classes = 10
[memory]
capacity = 500
follow_interval_s = 0
[learner]
epochs = 2
device = "cpu"
model_options = {{ hidden = [32] }}
gate_recent_tolerance = 1.0
gate_memory_tolerance = 1.0
[schedule]
interval_s = 3600
on_drift = false
grace_s = 10
[monitor]
auto_rollback = false
[http]
port = 0
admin_enabled = false
"""

wait_for = partial(waiting.wait_for, timeout_s=120.0)


@pytest.fixture
def settings(tmp_path: Path, clean_env: None) -> Settings:
    config = tmp_path / "lifelong.toml"
    config.write_text(CONFIG.format(dir=tmp_path / "state"))
    return load_settings(config)


def train_versions(settings: Settings, count: int) -> None:
    """``count`` promoted versions, each a round on a new slice of digits."""
    with open_store(settings) as store:
        memory = open_memory(settings)
        updater = build_updater(
            settings, store=store, memory=memory, feed=MemoryFeed(store=store, memory=memory)
        )
        for n, rows in enumerate(np.array_split(np.arange(900), count)):
            batch = IngestBatch()
            for offset, row in enumerate(rows):
                batch.samples.append(
                    stored(
                        _sample(f"v{n}-{row}", int(row)), "lifelong.samples", 0, int(rows[0]) + offset, 1000
                    )
                )
            batch.positions[("lifelong.samples", 0)] = int(rows[-1]) + 1
            store.apply(batch)
            outcome = updater.run_round()
            assert outcome is not None and outcome.promoted, outcome
        memory.close()


def _sample(id: str, row: int):  # type: ignore[no-untyped-def]
    from lifelong.events import Sample

    return Sample(id, X[row], int(Y[row]))


@pytest.fixture
def start(settings: Settings) -> Iterator:  # type: ignore[type-arg]
    """Build and run a daemon on a memory bus in a thread; stopped at the end."""
    with ExitStack() as stack:

        def started(bus: MemoryBus | None = None) -> tuple[Daemon, MemoryBus, CollectorRegistry]:
            daemon, bus, registry = stack.enter_context(daemon_on_bus(settings, bus))
            wait_for(lambda: daemon.state == RunState.RUNNING)
            return daemon, bus, registry

        yield started


def test_a_damaged_champion_falls_back_to_the_newest_intact_version_and_stays_ready(
    settings: Settings, start
) -> None:  # type: ignore[no-untyped-def]
    train_versions(settings, 3)
    registry = open_registry(settings)
    assert registry.champion().version == 3  # type: ignore[union-attr]
    weights = registry.get(3).path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    weights.write_bytes(bytes(data))

    daemon, bus, metrics = start()
    assert daemon.control is not None and daemon.control.updater.serving == 2
    versions = {v.version: v for v in open_registry(settings).versions()}
    assert versions[2].status == "champion"
    assert versions[3].status == "rolled_back"
    assert versions[3].rolled_back is not None and versions[3].rolled_back["trigger"] == "corrupt"
    assert str(weights.parent) in versions[3].rolled_back["reason"]
    assert metrics.get_sample_value("lifelong_rollbacks_total", {"trigger": "corrupt"}) == 1
    assert metrics.get_sample_value("lifelong_model_version") == 2
    events = [json.loads(r.value) for r in bus.records(settings.kafka.models_topic)]  # type: ignore[arg-type]
    assert [(e["event"], e["version"], e["champion"], e["trigger"]) for e in events] == [
        ("rolled_back", 2, 2, "corrupt")
    ]
    wait_for(lambda: daemon.readiness()[0], what=daemon.readiness)
    assert daemon.readiness()[1]["checks"]["model_loaded"] is True


def test_when_every_version_is_damaged_the_daemon_says_so_and_is_not_ready(settings: Settings, start) -> None:  # type: ignore[no-untyped-def]
    train_versions(settings, 2)
    for version in open_registry(settings).versions():
        (version.path / "model.safetensors").write_bytes(b"\0" * 100)
    daemon, _, metrics = start()
    ready, details = daemon.readiness()
    assert not ready and details["checks"]["model_loaded"] is False
    assert metrics.get_sample_value("lifelong_rollbacks_total", {"trigger": "corrupt"}) == 0


def test_before_the_first_version_readiness_and_gauges_claim_nothing(settings: Settings, start) -> None:  # type: ignore[no-untyped-def]
    daemon, bus, metrics = start()
    bus.produce(settings.kafka.samples_topic, encode_sample("a", X[0].tolist(), None))
    wait_for(lambda: daemon.ingestor.totals["samples"] == 1)
    ready, details = daemon.readiness()
    assert ready, details
    assert "model_loaded" not in details["checks"]
    assert details["model"] == {"serving": None, "champion": None}
    exposition = generate_latest(metrics).decode()
    for unknown in ("lifelong_prequential_accuracy", "lifelong_model_version", "lifelong_training_loss"):
        assert metrics.get_sample_value(unknown) is None
        assert f"\n{unknown} " not in exposition


def test_a_full_disk_stops_the_daemon_with_one_error_naming_the_state_directory(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = MemoryBus()
    with ExitStack() as stack:
        daemon = build_daemon(
            settings, stack, connectors=memory_connectors(settings, bus), metrics_registry=CollectorRegistry()
        )
        daemon.poll_timeout_s = 0.05
        assert daemon.feed is not None
        feed = daemon.feed

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(feed, "step", full)  # the memory's payload append meets a full disk
        bus.produce(settings.kafka.samples_topic, encode_sample("a", X[0].tolist(), int(Y[0])))
        with pytest.raises(DiskFull) as raised:
            daemon.run()
    message = str(raised.value)
    assert str(settings.state.dir) in message and "no space left" in message
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC
    assert daemon.state == RunState.STOPPED
    with open_store(settings, readonly=True) as store:  # what was committed before is kept
        assert store.status().samples == 1


def test_damaged_payload_rows_are_rebuilt_from_the_store_and_counted(settings: Settings, start) -> None:  # type: ignore[no-untyped-def]
    daemon, bus, metrics = start()
    daemon.gauges_interval_s = 0
    for row in range(200):
        bus.produce(settings.kafka.samples_topic, encode_sample(f"p{row}", X[row].tolist(), int(Y[row])))
    assert daemon.feed is not None
    memory = daemon.feed.memory
    wait_for(lambda: memory.size == 200, what=lambda: memory.size)
    with daemon.lock:
        memory.flush()
        payload = next((Path(settings.state.dir) / "memory").glob("payload-*.bin"))
        data = bytearray(payload.read_bytes())
        data[:1024] = bytes(b ^ 0xFF for b in data[:1024])  # the first rows of the log
        payload.write_bytes(bytes(data))
        drawn = memory.select(lambda id: True)
    assert len(drawn.ids) == 200
    for id, x in zip(drawn.ids, drawn.x, strict=True):
        assert np.array_equal(x, X[int(id[1:])].astype(np.float32)), id
    wait_for(
        lambda: (metrics.get_sample_value("lifelong_memory_damaged_rows", {"outcome": "rebuilt"}) or 0) > 0
    )
    assert metrics.get_sample_value("lifelong_memory_damaged_rows", {"outcome": "dropped"}) == 0
