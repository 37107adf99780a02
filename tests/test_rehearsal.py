"""The rehearsal memory: bounded, balanced, diverse, exact snapshots, refusals, forgetting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.errors import SettingsChanged, StateError, UnsupportedFormat
from lifelong.memory import index as vector_index
from lifelong.memory.bags import Bag
from lifelong.memory.policies import POLICIES, Policy
from lifelong.memory.rehearsal import RehearsalMemory
from tests.memories import FEATURES, batches, corrupt_manifest


def contents(memory: RehearsalMemory) -> dict[str, tuple[int, list[float]]]:
    everything = memory.sample(memory.capacity)
    return {
        id: (int(y), x.tolist()) for id, x, y in zip(everything.ids, everything.x, everything.y, strict=True)
    }


@pytest.mark.parametrize("policy", POLICIES)
def test_capacity_is_never_exceeded(tmp_path: Path, policy: str) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=300, policy=policy)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    for ids, x, y in batches(rng, 40, 100):
        memory.add(ids, x, y)
        assert memory.size <= 300
        assert sum(memory.classes().values()) == memory.size
    assert memory.size == 300
    assert len(set(contents(memory))) == 300


def test_class_balanced_keeps_rare_classes(tmp_path: Path) -> None:
    skewed = [0.84, 0.04, 0.04, 0.04, 0.04]
    balanced = RehearsalMemory(tmp_path / "b", features=FEATURES, capacity=250, policy="class_balanced")
    reservoir = RehearsalMemory(tmp_path / "r", features=FEATURES, capacity=250, policy="reservoir")
    for ids, x, y in batches(np.random.default_rng(2), 50, 100, weights=skewed):
        balanced.add(ids, x, y)
        reservoir.add(ids, x, y)
    counts = balanced.classes()
    assert set(counts) == {0, 1, 2, 3, 4}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert min(reservoir.classes().values()) < 25  # the baseline loses the rare classes' share


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_every_sample_of_a_long_stream_is_kept_with_equal_chance(tmp_path: Path, policy: Policy) -> None:
    kept = np.zeros(500)
    for seed in range(40):
        memory = RehearsalMemory(
            tmp_path / str(seed), features=FEATURES, capacity=50, policy=policy, seed=seed
        )
        for ids, x, _ in batches(np.random.default_rng(seed), 10, 50):
            memory.add(ids, x, np.zeros(len(ids), dtype=np.int64))  # one class: a reservoir within it
        kept[[int(id[1:]) for id in memory.sample(50).ids]] += 1
        memory.close()
    # Each sample stays with probability 1/10: about 400 of the 4,000 for the first 100 and the last 100.
    first, last = kept[:100].sum(), kept[-100:].sum()
    assert abs(first - last) < 120, (first, last)
    assert 300 < first < 500


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_recency_leans_the_memory_to_the_newest_samples(tmp_path: Path, policy: Policy) -> None:
    def ages(recency: float) -> np.ndarray:  # type: ignore[type-arg]
        memory = RehearsalMemory(
            tmp_path / f"{policy}{recency}", features=FEATURES, capacity=50, policy=policy, recency=recency
        )
        for ids, x, _ in batches(np.random.default_rng(3), 40, 50):  # 2,000 samples, one class
            memory.add(ids, x, np.zeros(len(ids), dtype=np.int64))
        kept = np.array([int(id[1:]) for id in memory.sample(50).ids])
        memory.close()
        return kept

    alike, recent = ages(0.0), ages(0.1)
    # Without recency the kept samples span the stream; with 0.1 a sample's survival decays as
    # exp(-age / 500): the median kept sample is about 350 old.
    assert np.median(alike) < 1400
    assert np.median(recent) > 1500 and np.mean(recent) > np.mean(alike) + 400, np.sort(recent)
    with pytest.raises(ValueError, match="recency"):
        RehearsalMemory(tmp_path / "bad", features=FEATURES, capacity=5, recency=2.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_inputs_loaded_on_demand_give_the_same_memory(tmp_path: Path, policy: Policy) -> None:
    eager = RehearsalMemory(tmp_path / "e", features=FEATURES, capacity=200, policy=policy)
    lazy = RehearsalMemory(tmp_path / "l", features=FEATURES, capacity=200, policy=policy)
    offered = loaded = 0
    for ids, x, y in batches(np.random.default_rng(7), 30, 100):
        eager.add(ids, x, y)

        def load(positions: np.ndarray, x: np.ndarray = x) -> np.ndarray:  # type: ignore[type-arg]
            nonlocal loaded
            loaded += len(positions)
            return x[positions]

        lazy.add(ids + ids[:5], load, np.concatenate([y, y[:5]]))  # repeated ids are dropped first
        offered += len(ids)
    assert contents(lazy) == contents(eager)
    if policy == "diversity":  # near-duplicates are found from every key
        assert loaded == offered
    else:  # only the samples kept are loaded
        assert loaded < offered / 2


def test_diversity_stores_fewer_near_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    prototypes = rng.normal(size=(40, FEATURES)).astype(np.float32) * 5
    diverse = RehearsalMemory(tmp_path / "d", features=FEATURES, capacity=200, policy="diversity")
    reservoir = RehearsalMemory(tmp_path / "r", features=FEATURES, capacity=200, policy="reservoir")
    for b in range(30):
        picks = rng.integers(0, 40, size=50)  # repeats of 40 prototypes, with tiny noise
        x = prototypes[picks] + rng.normal(scale=1e-4, size=(50, FEATURES)).astype(np.float32)
        ids = [f"r{b}-{i}" for i in range(50)]
        diverse.add(ids, x, picks % 5)
        reservoir.add(ids, x, picks % 5)

    def near_duplicates(memory: RehearsalMemory) -> int:
        x = memory.sample(memory.capacity).x
        distances = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return int((distances[np.triu_indices(len(x), 1)] < 0.01).sum())

    assert near_duplicates(diverse) < near_duplicates(reservoir) / 10
    assert diverse.counters["near_duplicates"] > 1000


def test_diversity_finds_repeats_inside_a_large_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10_000, FEATURES)).astype(np.float32)
    twins = rng.choice(10_000, size=500, replace=False)  # repeated later in the same batch
    x = np.concatenate([x, x[twins] + rng.normal(scale=1e-4, size=(500, FEATURES)).astype(np.float32)])
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=20_000, policy="diversity")
    added = memory.add([f"s{i}" for i in range(len(x))], x, np.zeros(len(x), dtype=np.int64))
    assert added.near_duplicates >= 490  # the batch is large enough to be searched approximately
    assert added.near_duplicates <= 500 + 10


def test_snapshot_round_trip_is_exact(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=500, policy="class_balanced")
    stream = list(batches(np.random.default_rng(4), 30, 100))
    for ids, x, y in stream[:20]:
        memory.add(ids, x, y)
    memory.snapshot(offsets={"samples:0": 2000})
    restored = RehearsalMemory(tmp_path, features=FEATURES, capacity=500, policy="class_balanced")
    assert restored.offsets == {"samples:0": 2000}
    assert contents(restored) == contents(memory)
    assert restored.counters == memory.counters
    for ids, x, y in stream[20:]:  # the same future: random state was restored too
        memory.add(ids, x, y)
        restored.add(ids, x, y)
    assert contents(restored) == contents(memory)
    probe = stream[0][1][:5]
    assert restored.neighbors(probe, 3).ids == memory.neighbors(probe, 3).ids


def test_restore_discards_what_came_after_the_snapshot(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    stream = list(batches(np.random.default_rng(5), 4, 30))
    memory.add(*stream[0])
    memory.snapshot()
    expected = contents(memory)
    memory.add(*stream[1])  # then a crash, no snapshot
    restored = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    assert contents(restored) == expected


def test_compaction_keeps_contents_and_drops_old_payload_logs(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    for ids, x, y in batches(np.random.default_rng(13), 6, 100):
        memory.add(ids, x, y)  # 600 rows written for 100 slots
    expected = contents(memory)
    (tmp_path / "payload-7.bin").write_bytes(b"left by a crash")
    memory.snapshot()
    assert contents(memory) == expected
    assert sorted(p.name for p in tmp_path.glob("payload-*.bin")) == ["payload-1.bin", "payload-7.bin"]
    restored = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    assert contents(restored) == expected
    assert [p.name for p in tmp_path.glob("payload-*.bin")] == ["payload-1.bin"]
    assert (tmp_path / "payload-1.bin").stat().st_size == 100 * FEATURES * 4


def test_memory_grows_past_its_training_size(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=12_000, policy="diversity")
    stream = list(batches(np.random.default_rng(6), 15, 1000))
    for ids, x, y in stream[:13]:
        memory.add(ids, x, y)
    assert memory.size == 12_000
    memory.snapshot()
    restored = RehearsalMemory(tmp_path, features=FEATURES, capacity=12_000, policy="diversity")
    assert contents(restored) == contents(memory)
    for ids, x, y in stream[13:]:  # evictions from the most crowded region, identically
        memory.add(ids, x, y)
        restored.add(ids, x, y)
    assert memory.counters["evicted"] > 0
    assert contents(restored) == contents(memory)
    assert len(restored.neighbors(np.zeros((2, FEATURES)), 10).ids) >= 10
    # Exact search agrees with brute force over what is held; the IVF index finds most of it.
    probe = np.random.default_rng(7).random((5, FEATURES), dtype=np.float32)
    held = restored.sample(restored.size)
    distances = ((held.x[None, :, :] - probe[:, None, :]) ** 2).sum(-1)
    truth = {held.ids[i] for row in np.argsort(distances, axis=1)[:, :10] for i in row}
    assert set(restored.neighbors(probe, 10, exact=True).ids) == truth
    assert len(set(restored.neighbors(probe, 10).ids) & truth) >= 0.5 * len(truth)


def test_future_snapshot_is_refused_and_kept(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=50)
    memory.add(*next(batches(np.random.default_rng(7), 1, 20)))
    memory.snapshot()
    current = corrupt_manifest(tmp_path, lambda m, _: m.update(format=99))
    with pytest.raises(UnsupportedFormat, match=r"format 99.*upgrade lifelong"):
        RehearsalMemory(tmp_path, features=FEATURES, capacity=50)
    assert current.exists() and (current / "keys.npy").exists()


def test_corrupt_snapshot_is_refused_and_kept(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=50)
    stream = batches(np.random.default_rng(8), 2, 20)
    memory.add(*next(stream))
    memory.snapshot()
    memory.add(*next(stream))
    newest = memory.snapshot()
    with open(newest / "keys.npy", "r+b") as file:
        file.seek(200)
        file.write(b"\xff\xff\xff\xff")
    with pytest.raises(StateError, match=r"corrupt.*older snapshot"):
        RehearsalMemory(tmp_path, features=FEATURES, capacity=50)
    assert newest.exists()
    older = [p for p in (tmp_path / "snapshots").glob("snapshot-*") if p != newest]
    assert len(older) == 1  # the last good one is still there to fall back to


def test_changed_configuration_is_refused(tmp_path: Path) -> None:
    RehearsalMemory(tmp_path, features=FEATURES, capacity=50).snapshot()
    with pytest.raises(SettingsChanged, match="capacity=50"):
        RehearsalMemory(tmp_path, features=FEATURES, capacity=60)


def test_forgotten_ids_leave_every_structure(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    ids, x, y = next(batches(np.random.default_rng(9), 1, 50))
    memory.add(ids, x, y)
    memory.snapshot()
    target = ids[7]
    row = memory._slots.row[memory._slots.slot_of[target]]
    assert memory.forget([target, "unknown"]) == [target]
    assert target not in memory
    assert target not in memory.sample(100).ids
    assert target not in memory.neighbors(x[7:8], 50).ids
    payload = np.fromfile(tmp_path / "payload-0.bin", dtype=np.float32).reshape(-1, FEATURES)
    assert not payload[row].any() and payload[row - 1].any()
    memory.snapshot()
    restored = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    assert target not in restored and restored.size == 49
    for snapshot in (tmp_path / "snapshots").glob("snapshot-*"):
        assert target not in json.loads((snapshot / "ids.json").read_text())


def test_wide_inputs_are_projected(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=784, capacity=100, dtype=np.uint8)
    rng = np.random.default_rng(10)
    x = rng.integers(0, 256, size=(60, 784), dtype=np.uint8)
    memory.add([f"i{i}" for i in range(60)], x, rng.integers(0, 10, 60))
    assert memory.keys_of(x).shape == (60, 64)
    drawn = memory.sample(60)
    assert drawn.x.dtype == np.uint8
    assert {id: row.tolist() for id, row in zip(drawn.ids, drawn.x, strict=True)} == {
        f"i{i}": x[i].tolist() for i in range(60)
    }
    assert memory.neighbors(x[3:4], 1).ids == ["i3"]


def test_novelty_rises_for_new_data(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=500)
    rng = np.random.default_rng(11)
    for ids, x, y in batches(rng, 5, 100):
        memory.add(ids, x, y)
    familiar = memory.novelty(rng.normal(size=(100, FEATURES)) + 2)
    novel = memory.novelty(rng.normal(size=(100, FEATURES)) + 20)
    assert 0.5 < familiar < 2.0 < 5 < novel


def test_balanced_sampling(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=1000)
    for ids, x, y in batches(np.random.default_rng(12), 5, 100, weights=[0.8, 0.05, 0.05, 0.05, 0.05]):
        memory.add(ids, x, y)
    drawn = memory.sample(50, balanced=True)
    assert np.bincount(drawn.y).tolist() == [10, 10, 10, 10, 10]
    assert len(set(memory.sample(200).ids)) == 200


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=200))
def test_bag_behaves_like_a_set(operations: list[tuple[bool, int]]) -> None:
    bag, model = Bag(), set()
    rng = np.random.default_rng(0)
    for add, item in operations:
        if add:
            bag.add(item)
            model.add(item)
        else:
            bag.discard(item)
            model.discard(item)
        assert sorted(bag.array().tolist()) == sorted(model)
        if model:
            assert bag.choice(rng) in model
            assert set(bag.sample(rng, 5).tolist()) <= model


def test_gpu_searches_an_exact_copy_kept_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The GPU path with FAISS's CPU flat index in place of its GPU one: the same mirror logic.
    monkeypatch.setattr(vector_index, "gpu_count", lambda: 1)
    monkeypatch.setattr(vector_index, "gpu_flat_index", vector_index.faiss.IndexFlatL2)
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=12_000, policy="reservoir", device="auto")
    assert memory.device == "gpu"
    rng = np.random.default_rng(6)
    queries = rng.normal(size=(20, FEATURES)).astype(np.float32)
    for n, (ids, x, y) in enumerate(batches(rng, 30, 1000)):  # past the IVF's training size, with evictions
        memory.add(ids, x, y)
        if n % 10 == 9:
            memory.forget(ids[:100])
            assert memory.neighbors(queries, 5).ids == memory.neighbors(queries, 5, exact=True).ids
    assert memory._index.trained  # the IVF is kept on the CPU as the record (regions, snapshots)
    memory.add(["new"], queries[:1] + 1e-3, [0])  # a change since the last search is seen at once
    assert "new" in memory.neighbors(queries[:1], 1).ids


def test_probing_every_list_finds_the_exact_neighbours(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=12_000, nprobe=10_000)
    rng = np.random.default_rng(8)
    for ids, x, y in batches(rng, 12, 1000):
        memory.add(ids, x, y)
    assert memory._index.trained and memory.nprobe >= memory._index.nlist
    queries = rng.normal(size=(50, FEATURES)).astype(np.float32)
    assert memory.neighbors(queries, 10).ids == memory.neighbors(queries, 10, exact=True).ids


def test_gpu_device_without_a_gpu_build_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_index, "gpu_count", lambda: 0)  # as with faiss-cpu, even on a GPU machine
    with pytest.raises(ValueError, match=r"memory\.device = 'gpu'.*faiss-gpu"):
        vector_index.resolve_device("gpu")
    assert vector_index.resolve_device("auto") == "cpu"
