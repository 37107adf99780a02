"""The serving client (lifelong/serving.py): loads the champion, reloads on model events."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.benchmarks import digits
from lifelong.config import load_settings
from lifelong.connectors.memory import MemoryBus, MemoryTail
from lifelong.daemon.wiring import open_memory, open_store
from lifelong.errors import LifelongError
from lifelong.learners.configured import build_learner
from lifelong.learning.build import build_updater
from lifelong.learning.remember import MemoryFeed
from lifelong.registry import open_registry
from lifelong.serving import ServingModel
from tests import waiting
from tests.test_update import CONFIG, feed_samples

X, Y, _, _ = digits()


wait_for = partial(waiting.wait_for, timeout_s=10.0)


def test_the_champion_is_served_and_reloaded_on_model_events(tmp_path: Path, clean_env: None) -> None:
    config = tmp_path / "lifelong.toml"
    config.write_text(CONFIG.format(dir=tmp_path / "state"))
    settings = load_settings(config)
    registry = open_registry(settings)
    bus = MemoryBus()
    events = MemoryTail(bus=bus, topic=settings.kafka.models_topic)
    serving = ServingModel(
        registry=registry, build=lambda: build_learner(settings), events=events, check_s=3600
    )
    assert serving.version is None
    with pytest.raises(LifelongError, match="no model version"):
        serving.predict(X[:3])
    serving.follow()
    try:
        with open_store(settings) as store:
            memory = open_memory(settings)
            updater = build_updater(
                settings, store=store, memory=memory, feed=MemoryFeed(store=store, memory=memory)
            )
            old, new = np.flatnonzero(Y < 5), np.flatnonzero(Y >= 5)
            feed_samples(store, old, Y[old], start=0)
            assert updater.run_round().promoted  # type: ignore[union-attr]
            # Without a promotion event the client keeps what it has (its periodic check is an hour
            # away): events that reload nothing are read (the second is read only after the first
            # was handled) and the version stays.
            for quiet in (b"not json", json.dumps({"event": "rejected", "version": 2}).encode()):
                bus.produce(settings.kafka.models_topic, quiet)
                wait_for(lambda: events.position == len(bus.records(settings.kafka.models_topic)))
            assert serving.version is None
            bus.produce(settings.kafka.models_topic, json.dumps({"event": "promoted", "version": 1}).encode())
            wait_for(lambda: serving.version == 1)
            champion = updater.champion()
            assert champion is not None
            assert np.array_equal(serving.predict(X), champion.predict(X))

            feed_samples(store, new, Y[new], start=len(old))
            assert updater.run_round().promoted  # type: ignore[union-attr]
            bus.produce(settings.kafka.models_topic, json.dumps({"event": "promoted", "version": 2}).encode())
            wait_for(lambda: serving.version == 2)
            registry.rollback(reason="test")
            bus.produce(settings.kafka.models_topic, b"not json")  # ignored
            bus.produce(
                settings.kafka.models_topic, json.dumps({"event": "rolled_back", "version": 1}).encode()
            )
            wait_for(lambda: serving.version == 1)
            weights = registry.load(1).weights
            served = serving._served[1].checkpoint().weights  # type: ignore[index, attr-defined]
            assert all(torch.equal(weights[k], v) for k, v in served.items())
            memory.close()
    finally:
        serving.close()
