"""Ingestion over the in-memory bus: routing, dead letters with reasons, no duplicate letters on restart."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lifelong.connectors.headers import REASON, SOURCE_OFFSET, SOURCE_TOPIC
from lifelong.connectors.memory import MemoryBus, MemoryDeadLetterSink, MemorySource
from lifelong.daemon.app import Daemon, RunState, StateLock
from lifelong.daemon.ingest import Handoff, Ingestor
from lifelong.errors import StateInUse
from lifelong.events import TopicDecoder, encode_feedback, encode_sample
from lifelong.memory.samples import SampleStore, Stored

X = [0.5, 0.25]


def make_ingestor(bus: MemoryBus, store: SampleStore) -> Ingestor:
    return Ingestor(
        source=MemorySource(
            bus=bus,
            topics=["s", "f"],
            max_poll_records=3,
            positions=lambda tp: store.positions().get(tuple(tp)),
        ),  # type: ignore[arg-type]
        sink=MemoryDeadLetterSink(bus=bus, topic="dead"),
        store=store,
        decode=TopicDecoder(samples_topic="s", feedback_topic="f", features=2, max_classes=3),
        commit_interval_s=0,
    )


@pytest.fixture
def bus() -> MemoryBus:
    bus = MemoryBus()
    bus.produce("s", encode_sample("a", X, 1))
    bus.produce("s", b"garbage")
    bus.produce("s", encode_sample("b", X))
    bus.produce("f", encode_feedback("b", 2))
    bus.produce("f", b'{"id": "b", "y": 5}')
    bus.produce("s", encode_sample("a", X, 0))
    return bus


def test_burst_routes_topics_and_dead_letters_with_reasons(bus: MemoryBus, tmp_path: Path) -> None:
    with SampleStore.open(tmp_path) as store:
        daemon = Daemon(ingestor=make_ingestor(bus, store), poll_timeout_s=0)
        daemon.run(burst=True)
        assert daemon.state is RunState.STOPPED
        status = store.status()
        assert (status.samples, status.labeled, status.waiting) == (2, 2, 0)
        assert status.dead_letters_by_reason == {"bad_label": 1, "not_json": 1}
        assert status.offsets == {"f:0": 2, "s:0": 4}
        assert bus.committed == {("f", 0): 2, ("s", 0): 4}
        letters = bus.records("dead")
        assert [dict(r.headers)[REASON] for r in letters] == [b"not_json", b"bad_label"]
        assert dict(letters[0].headers)[SOURCE_TOPIC] == b"s"
        assert dict(letters[0].headers)[SOURCE_OFFSET] == b"1"
        assert letters[0].value == b"garbage"
        assert "duplicates=1" in daemon.summary()


def test_crash_after_dead_lettering_does_not_send_twice(
    bus: MemoryBus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SampleStore.open(tmp_path) as store:
        ingestor = make_ingestor(bus, store)

        def crash(batch: object) -> None:
            raise RuntimeError("killed between the dead-letter send and the store commit")

        monkeypatch.setattr(store, "apply", crash)
        with pytest.raises(RuntimeError):
            ingestor.step(0)
        monkeypatch.undo()
        assert len(bus.records("dead")) == 1
        assert store.status().samples == 0

        restarted = make_ingestor(bus, store)
        Daemon(ingestor=restarted, poll_timeout_s=0).run(burst=True)
        assert [dict(r.headers)[REASON] for r in bus.records("dead")] == [b"not_json", b"bad_label"]
        assert store.status().dead_letters == 2


def test_state_directory_has_one_owner(tmp_path: Path) -> None:
    with StateLock(tmp_path), pytest.raises(StateInUse, match="in use"), StateLock(tmp_path):
        pass
    with StateLock(tmp_path):
        pass


def test_stop_is_idempotent_and_ends_a_run(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path) as store:
        daemon = Daemon(ingestor=make_ingestor(MemoryBus(), store), poll_timeout_s=0)
        daemon.stop()
        daemon.stop()
        daemon.run()
        assert daemon.state is RunState.STOPPED


def test_the_watchers_observe_each_stored_batch_off_the_consumer_thread_in_order(tmp_path: Path) -> None:
    bus = MemoryBus()
    for i in range(9):
        bus.produce("s", encode_sample(f"s{i}", X, i % 3))
    release = threading.Event()
    seen: list[tuple[list[str], int, str]] = []

    def observe(stored: Stored) -> None:
        if not seen:
            release.wait(timeout=60)  # the watcher is slow on the first batch
        ids = [row[0] for row in stored.batch.samples]
        seen.append((ids, stored.labels_upto, threading.current_thread().name))
        if ids == ["s3", "s4", "s5"]:
            raise RuntimeError("one batch's watching fails")

    with SampleStore.open(tmp_path) as store:
        ingestor = make_ingestor(bus, store)
        ingestor.on_stored = Handoff(observe, most=1)
        assert ingestor.step(0) == 3  # handed over at once, though the watcher waits
        assert ingestor.step(0) == 3  # queued: one batch may wait
        assert store.status().samples == 6 and not seen
        assert ingestor.watch_waiting() == 2  # the one being observed, the one queued
        release.set()
        assert ingestor.step(0) == 3  # waited for room, dropped nothing
        ingestor.drain()
        assert [ids for ids, _, _ in seen] == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6", "s7", "s8"]]
        # Each batch carries the label events stored with it, not those stored while it waited:
        # the online members learn only labels whose samples were predicted.
        assert [upto for _, upto, _ in seen] == [3, 6, 9]
        assert {name for _, _, name in seen} == {"lifelong-watch"}
        assert ingestor.watch_waiting() == 0
        ingestor.close()
