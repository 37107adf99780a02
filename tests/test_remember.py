"""The memory follows the store's label events exactly once, across snapshots and restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifelong.errors import StateMismatch
from lifelong.events import Sample
from lifelong.learning.remember import MemoryFeed
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import IngestBatch, SampleStore
from tests.streams import stored

FEATURES = 4


def sample(i: int, y: int | None) -> Sample:
    return Sample(f"s{i}", np.full(FEATURES, i, dtype=np.float32), y)


def apply(store: SampleStore, *events) -> None:  # type: ignore[no-untyped-def]
    batch = IngestBatch()
    for event in events:
        if isinstance(event, Sample):
            batch.samples.append(stored(event, "s", 0, 0, 1000))
        else:
            batch.feedback.append((*event, 1000))
    store.apply(batch)


def memory_at(path: Path) -> RehearsalMemory:
    return RehearsalMemory(path, features=FEATURES, capacity=100)


def held(memory: RehearsalMemory) -> dict[str, tuple[int, float]]:
    drawn = memory.sample(memory.capacity)
    return {id: (int(y), float(x[0])) for id, x, y in zip(drawn.ids, drawn.x, drawn.y, strict=True)}


def test_memory_gets_inline_late_and_changed_labels(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path / "store") as store:
        feed = MemoryFeed(store=store, memory=memory_at(tmp_path / "m"), snapshot_interval_s=0)
        apply(store, sample(1, 1), sample(2, None), ("s3", 2))
        assert feed.lag == 1
        feed.catch_up()
        assert held(feed.memory) == {"s1": (1, 1.0)}
        apply(store, ("s2", 0), sample(3, None), ("s1", 3))  # late label, early one applied, a change
        feed.catch_up()
        assert held(feed.memory) == {"s1": (3, 1.0), "s2": (0, 2.0), "s3": (2, 3.0)}
        assert feed.memory.classes() == {0: 1, 2: 1, 3: 1}
        assert feed.lag == 0


def test_restart_from_an_older_snapshot_replays_exactly_what_it_missed(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path / "store") as store:
        feed = MemoryFeed(store=store, memory=memory_at(tmp_path / "m"), snapshot_interval_s=0)
        apply(store, *(sample(i, i % 3) for i in range(10)))
        feed.catch_up()
        assert feed.maybe_snapshot()
        apply(store, *(sample(i, i % 3) for i in range(10, 20)), ("s0", 2))
        feed.catch_up()  # ... and a crash before the next snapshot
        expected = held(feed.memory)
        feed.memory.close()

        restarted = MemoryFeed(store=store, memory=memory_at(tmp_path / "m"), snapshot_interval_s=0)
        assert restarted.lag == 11
        restarted.catch_up()
        assert held(restarted.memory) == expected
        restarted.maybe_snapshot()
        assert store.label_events(0, 100) == []  # consumed and durable: trimmed


def test_a_memory_ahead_of_its_store_is_refused(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path / "store") as store:
        feed = MemoryFeed(store=store, memory=memory_at(tmp_path / "m"), snapshot_interval_s=0)
        apply(store, sample(1, 1))
        feed.catch_up()
        feed.maybe_snapshot(force=True)
        feed.memory.close()
    with (
        SampleStore.open(tmp_path / "other") as fresh,
        pytest.raises(StateMismatch, match="different states"),
    ):
        MemoryFeed(store=fresh, memory=memory_at(tmp_path / "m"))


def test_forget_leaves_the_store(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path) as store:
        apply(store, sample(1, 1), sample(2, None), ("s2", 1), sample(3, 0))
        assert store.forget(["s2", "s9"]) == ["s2"]
        assert [id for id, _, _ in store.labeled()] == ["s1", "s3"]
        assert all(event.id != "s2" for event in store.label_events(0, 10))
        raw = (tmp_path / "samples.sqlite").read_bytes()
        assert np.full(FEATURES, 2, dtype=np.float32).tobytes() not in raw
