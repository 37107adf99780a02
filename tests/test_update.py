"""Update rounds in the daemon over a real store, memory and registry; versions and rollback from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.benchmarks import digits
from lifelong.config import load_settings
from lifelong.daemon.cli import main
from lifelong.daemon.wiring import open_memory, open_store
from lifelong.errors import RoundAbandoned, RoundDeferred
from lifelong.events import Sample
from lifelong.learning.build import build_updater
from lifelong.learning.remember import MemoryFeed
from lifelong.learning.update import Updater
from lifelong.memory.reads import rows_matrix
from lifelong.memory.samples import IngestBatch, SampleStore
from lifelong.registry import open_registry
from tests.streams import stored

X, Y, _, _ = digits()
CONFIG = """
[state]
dir = "{dir}"
[data]
features = 64
max_classes = 10
[memory]
capacity = 2000
[learner]
epochs = 5
device = "cpu"
model_options = {{ hidden = [64] }}
holdout = 0.1
[http]
port = 0
admin_token = "test-token"
"""


def feed_samples(store: SampleStore, rows: np.ndarray, labels: np.ndarray, *, start: int) -> None:
    batch = IngestBatch()
    for offset, (row, label) in enumerate(zip(rows, labels, strict=True)):
        sample = Sample(f"d{row}-{start + offset}", X[row], int(label))
        batch.samples.append(stored(sample, "lifelong.samples", 0, start + offset, 1000))
    batch.positions[("lifelong.samples", 0)] = start + len(rows)  # the next offset to read
    store.apply(batch)


def weights(updater: Updater) -> dict[str, torch.Tensor]:
    champion = updater.champion()
    assert champion is not None
    return champion.checkpoint().weights


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "lifelong.toml"
    path.write_text(CONFIG.format(dir=tmp_path / "state"))
    return path


def test_rounds_gate_rollback_and_a_corrupt_version(
    config: Path, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    settings = load_settings(config)
    old, new = np.flatnonzero(Y < 5), np.flatnonzero(Y >= 5)
    with open_store(settings) as store:
        memory = open_memory(settings)
        feed = MemoryFeed(store=store, memory=memory, snapshot_interval_s=0)
        updater = build_updater(settings, store=store, memory=memory, feed=feed)
        assert updater.run_round() is None  # nothing labeled yet

        feed_samples(store, old, Y[old], start=0)
        first = updater.run_round()
        assert first is not None and first.promoted and first.version.version == 1
        assert first.version.lineage["label_events"] == [1, len(old)]
        assert first.version.lineage["memory_snapshot"]
        assert updater.pending() == 0 and updater.serving == 1
        assert first.version.lineage["offsets"] == {"lifelong.samples:0": [0, len(old)]}

        feed_samples(store, new, Y[new], start=len(old))
        second = updater.run_round()
        assert second is not None and second.promoted, second.version.reason
        assert second.version.lineage["offsets"] == {"lifelong.samples:0": [len(old), len(Y)]}
        assert set(np.unique(updater.champion().predict(X))) > set(range(5))  # type: ignore[union-attr]

        before = weights(updater)
        # Shuffled labels, as a label-mapping bug upstream makes them: every class sent as another.
        shuffle = np.random.default_rng(0).permutation(10)
        while np.any(shuffle == np.arange(10)):
            shuffle = np.random.default_rng(int(shuffle[0]) + 1).permutation(10)
        poisoned = shuffle[Y]
        feed_samples(store, np.arange(len(Y)), poisoned, start=len(Y))
        # On the same inputs the champion's held-out errors jump: a change, or a bug. It is
        # adopted only once it holds for two rounds; this one is deferred, its labels wait.
        with pytest.raises(RoundDeferred, match="holds for 2 rounds"):
            updater.run_round()
        assert updater.serving == 2 and updater.pending() == len(Y)
        assert all(torch.equal(before[k], v) for k, v in weights(updater).items())

        # The CLI rolls back while the "daemon" (this updater) holds the state: it follows.
        assert main(["rollback", "--config", str(config), "--reason", "test"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["champion"] == 1
        assert updater.load_champion() and updater.serving == 1
        saved = open_registry(settings).load(1).weights
        assert all(torch.equal(saved[k], v) for k, v in weights(updater).items())

        # A damaged version directory is refused with a message naming it; the champion keeps serving.
        damaged = open_registry(settings).get(2).path / "model.safetensors"
        data = bytearray(damaged.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(bytes(data))
        assert main(["rollback", "2", "--config", str(config)]) == 2
        assert str(damaged.parent) in capsys.readouterr().err
        assert open_registry(settings).champion().version == 1  # type: ignore[union-attr]
        assert not updater.load_champion() and updater.serving == 1
        memory.close()

    assert main(["versions", "--config", str(config), "--json"]) == 0
    listed = {v["version"]: v for v in json.loads(capsys.readouterr().out)}
    assert {n: v["status"] for n, v in listed.items()} == {1: "champion", 2: "rolled_back"}
    assert all({"version", "status", "created_at", "scores"} <= set(v) for v in listed.values())
    assert main(["versions", "--config", str(config)]) == 0
    assert "rolled_back" in capsys.readouterr().out


def test_a_restarted_updater_resumes_after_the_last_round(config: Path, clean_env: None) -> None:
    # Rounds this small are too noisy for the gate to judge (it would defer): judge them anyway.
    settings = load_settings(config, environ={"LIFELONG_LEARNER__GATE_MAX_MARGIN": "1"})
    with open_store(settings) as store:
        memory = open_memory(settings)
        updater = build_updater(settings, store=store, memory=memory, feed=None)
        feed_samples(store, np.arange(300), Y[:300], start=0)
        assert updater.run_round() is not None
        feed_samples(store, np.arange(300, 400), Y[300:400], start=300)
        served = weights(updater)
        memory.close()
    with open_store(settings) as store:
        memory = open_memory(settings)
        again = build_updater(settings, store=store, memory=memory, feed=None)
        assert again.cursor == 300 and again.pending() == 100
        again.load_champion()
        assert all(torch.equal(served[k], v) for k, v in weights(again).items())
        # Training continues from what was read back from disk (EWC state in the model's order).
        outcome = again.run_round()
        assert outcome is not None and again.cursor == 400 and again.pending() == 0
        memory.close()


def test_stored_rows_become_one_writable_matrix_and_uint8_rows_scale_when_mixed() -> None:
    floats = np.array([0.5, -1.0], dtype="<f4")
    pixels = np.array([255, 0], dtype=np.uint8)
    same = rows_matrix([floats.tobytes(), floats.tobytes()], ["<f4", "<f4"], 2)
    assert same.flags.writeable and same.dtype == np.float32
    assert same.tolist() == [[0.5, -1.0], [0.5, -1.0]]
    mixed = rows_matrix([pixels.tobytes(), floats.tobytes()], ["|u1", "<f4"], 2)
    assert mixed.dtype == np.float32 and mixed.tolist() == [[1.0, 0.0], [0.5, -1.0]]


def test_a_young_model_grows_in_rounds_too_small_to_judge_and_then_defers(
    config: Path, clean_env: None
) -> None:
    # No held-out set is ever large enough to judge here: what rounds do then is under test.
    settings = load_settings(config, environ={"LIFELONG_LEARNER__GATE_MIN_SAMPLES": "100000"})
    with open_store(settings) as store:
        memory = open_memory(settings)
        updater = build_updater(settings, store=store, memory=memory, feed=None)
        feed_samples(store, np.arange(100), Y[:100], start=0)
        assert updater.run_round().promoted  # type: ignore[union-attr]  # the first version
        # 150 new labels, more than the 100 the champion learned from: the model is young and
        # (more than) doubles its data.
        feed_samples(store, np.arange(100, 250), Y[100:250], start=100)
        second = updater.run_round()
        assert second is not None and second.promoted, second
        assert "promoted while young" in (second.version.reason or "")
        # 100 more after 250: no longer young: the labels wait.
        feed_samples(store, np.arange(250, 350), Y[250:350], start=250)
        with pytest.raises(RoundDeferred, match="too few held-out samples"):
            updater.run_round()
        assert updater.pending() == 100 and updater.serving == 2
        memory.close()


def test_a_round_trains_only_on_labels_the_served_vote_has_scored(config: Path, clean_env: None) -> None:
    settings = load_settings(config, environ={"LIFELONG_LEARNER__GATE_MAX_MARGIN": "1"})
    with open_store(settings) as store:
        memory = open_memory(settings)
        updater = build_updater(settings, store=store, memory=memory, feed=None)
        scored = 0
        updater.scored = lambda stop: scored
        feed_samples(store, np.arange(300), Y[:300], start=0)
        assert updater.run_round() is None  # the vote has judged none of them: test, then train
        scored = 200
        assert updater.run_round() is not None and updater.cursor == 200
        scored = 300
        assert updater.run_round() is not None and updater.cursor == 300
        feed_samples(store, np.arange(300, 400), Y[300:400], start=300)
        with pytest.raises(RoundAbandoned):  # abandoned while it waited for the vote
            updater.run_round(stop=lambda: True)
        assert updater.cursor == 300 and updater.pending() == 100  # its labels wait
        memory.close()
