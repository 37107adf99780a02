"""The running daemon on an in-memory bus: rounds beside the consumer, live accuracy, automatic rollback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from lifelong.benchmarks import digits
from lifelong.config import Settings
from lifelong.connectors.memory import MemoryBus
from lifelong.daemon.app import Daemon, RunState
from lifelong.events import encode_sample
from lifelong.registry import open_registry
from tests import waiting
from tests.inprocess import daemon_from_config

X, Y, _, _ = digits()

CONFIG = """
[state]
dir = "{dir}"
[data]
features = 64
max_classes = 10
[memory]
capacity = 1000
follow_interval_s = 0
[learner]
# Fast to learn, the clean versions and the poisoned one alike: their gap is far beyond noise.
epochs = 5
lr = 0.003
device = "cpu"
model_options = {{ hidden = [64] }}
# The gate is off here: the live probation must catch what it lets through.
gate_recent_tolerance = 1.0
gate_memory_tolerance = 1.0
[schedule]
interval_s = 0.3
min_new_labels = 700
first_round_labels = 700
on_drift = false
grace_s = 10
[monitor]
window = 100
publish_predictions = true
rollback_min_labels = 200
rollback_margin = 0.05
[http]
port = 0
admin_enabled = false
"""


def produce(bus: MemoryBus, settings: Settings, rows: np.ndarray, labels: np.ndarray, prefix: str) -> None:
    for row, label in zip(rows, labels, strict=True):
        value = encode_sample(f"{prefix}{row}", X[row].tolist(), int(label))
        bus.produce(settings.kafka.samples_topic, value, key=f"{prefix}{row}".encode())


wait_for = partial(waiting.wait_for, timeout_s=120.0)


@pytest.fixture
def running(
    tmp_path: Path, clean_env: None
) -> Iterator[tuple[Daemon, MemoryBus, Settings, CollectorRegistry]]:
    with daemon_from_config(CONFIG, tmp_path) as running:
        yield running
    assert running[0].state == RunState.STOPPED


def champion(settings: Settings) -> int | None:
    found = open_registry(settings).champion()
    return None if found is None else found.version


def test_a_poisoned_version_the_gate_let_through_is_rolled_back_by_live_accuracy(running) -> None:  # type: ignore[no-untyped-def]
    daemon, bus, settings, registry = running
    first, later = np.arange(800), np.arange(800, 1300)
    produce(bus, settings, first, Y[first], "clean-")
    wait_for(lambda: champion(settings) == 1)

    # A label-mapping bug upstream: every class sent as another. The gate is off; v2 is promoted.
    shuffle = np.roll(np.arange(10), 3)
    produce(bus, settings, first, shuffle[Y[first]], "poisoned-")
    wait_for(lambda: champion(settings) == 2)
    wait_for(lambda: daemon.control.live.probation is not None)  # type: ignore[union-attr]

    # Clean samples arrive: v2 and v1 both predict them; v2 is far worse on the same samples.
    produce(bus, settings, later, Y[later], "live-")
    control = daemon.control
    assert control is not None
    # The models-topic event is the rollback's last step (the registry changes first, then the
    # metrics): waiting for it keeps the checks below from racing the daemon thread.
    wait_for(
        lambda: len(bus.records(settings.kafka.models_topic)) == 3,
        what=lambda: (control.live.probation, control.updater.state()[0], control.counts),
    )
    assert champion(settings) == 1
    versions = {v.version: v for v in open_registry(settings).versions()}
    assert versions[2].status == "rolled_back"
    assert versions[2].rolled_back is not None and versions[2].rolled_back["trigger"] == "auto"
    assert "predecessor v1" in versions[2].rolled_back["reason"]
    assert daemon.control is not None and daemon.control.updater.serving == 1
    assert registry.get_sample_value("lifelong_rollbacks_total", {"trigger": "auto"}) == 1
    assert registry.get_sample_value("lifelong_model_version") == 1
    assert registry.get_sample_value("lifelong_updates_total", {"result": "promoted"}) == 2

    events = [json.loads(r.value) for r in bus.records(settings.kafka.models_topic)]  # type: ignore[arg-type]
    assert [(e["event"], e["version"], e["champion"]) for e in events] == [
        ("promoted", 1, 1),
        ("promoted", 2, 2),
        ("rolled_back", 1, 1),
    ]
    assert events[-1]["trigger"] == "auto" and events[-1]["parent"] == 2


def test_live_accuracy_is_counted_and_ingestion_goes_on_while_a_round_trains(running) -> None:  # type: ignore[no-untyped-def]
    daemon, bus, settings, registry = running
    topic = settings.kafka.predictions_topic
    # The first round is held at its start until the test has seen ingestion go on beside it.
    assert daemon.control is not None
    trainer = daemon.control.updater.trainer
    release, train = threading.Event(), trainer.round

    def held_round(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=120)
        return train(*args, **kwargs)

    trainer.round = held_round  # type: ignore[method-assign]
    first = np.arange(800)
    produce(bus, settings, first, Y[first], "a-")
    wait_for(lambda: registry.get_sample_value("lifelong_update_running") == 1, timeout_s=60)
    # A round is training: the consumer keeps storing what arrives meanwhile.
    later = np.arange(800, 1000)
    produce(bus, settings, later, Y[later], "b-")
    stored = lambda: registry.get_sample_value(  # noqa: E731
        "lifelong_events_total", {"topic": settings.kafka.samples_topic, "outcome": "accepted"}
    )
    wait_for(lambda: stored() == 1000, timeout_s=30)
    assert registry.get_sample_value("lifelong_update_running") == 1  # stored while the round runs
    release.set()
    wait_for(lambda: champion(settings) == 1)
    rest = np.arange(1000, len(Y))
    produce(bus, settings, rest, Y[rest], "c-")
    last = f"c-{len(Y) - 1}"  # every sample is predicted (the online heads serve from the first labels)
    wait_for(lambda: bool(bus.records(topic)) and json.loads(bus.records(topic)[-1].value)["id"] == last)
    accuracy = registry.get_sample_value("lifelong_prequential_accuracy")
    assert accuracy is not None and 0.6 < accuracy <= 1.0  # digits, one round of 800: well above chance
    assert daemon.control is not None and daemon.control.live.scored == 100  # the window
    published = [json.loads(r.value) for r in bus.records(topic)]  # type: ignore[arg-type]
    assert len(published) == registry.get_sample_value("lifelong_predictions_total")
    assert published[-1]["version"] == 1
    assert 0 <= published[-1]["y"] < 10


def test_inputs_beyond_the_fitted_range_are_counted(running) -> None:  # type: ignore[no-untyped-def]
    daemon, bus, settings, registry = running
    first = np.arange(800)
    produce(bus, settings, first, Y[first], "clean-")
    # Serving, not only recorded: the registry holds version 1 a moment before the daemon serves it,
    # and only the served network's fitted range is checked.
    assert daemon.control is not None
    wait_for(lambda: daemon.control.updater.serving == 1)
    wait_for(lambda: registry.get_sample_value("lifelong_predictions_total") is not None)
    assert not registry.get_sample_value("lifelong_inputs_out_of_range_total")
    # A feed that starts sending one column in other units (x 1000).
    for row in range(800, 850):
        x = X[row].copy()
        x[10] = 1000.0
        value = encode_sample(f"units-{row}", x.tolist())
        bus.produce(settings.kafka.samples_topic, value, key=f"units-{row}".encode())
    wait_for(lambda: registry.get_sample_value("lifelong_inputs_out_of_range_total") == 50)
