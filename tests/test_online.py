"""The online members follow the store's label events, scored before learned, and restart exactly."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lifelong.events import Sample
from lifelong.learners.ensemble import Hedge
from lifelong.learners.heads import Heads
from lifelong.learning.online import OnlineMembers
from lifelong.memory.samples import IngestBatch, SampleStore
from tests.blobs import CLASSES, FEATURES, accuracy, blobs
from tests.streams import stored


def test_the_daemons_heads_take_a_backlog_in_steps_each_scored_first(tmp_path: Path) -> None:
    x, y = blobs(1400, 13)
    with SampleStore.open(tmp_path / "store") as store:
        fill(store, x[:1000], y[:1000], 0)
        online = online_at(store, tmp_path / "heads")
        online.batch = 4096
        online.observed(store.last_label_event())
        online.catch_up()
        steps: list[int] = []
        online.on_learned = steps.append
        fill(store, x[1000:], y[1000:], 1000)
        online.observed(store.last_label_event())
        assert online.catch_up() == 400
        assert steps == [100, 100, 100, 100]  # the vote sees a member adapt within the backlog


def fill(store: SampleStore, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], start: int) -> None:
    batch = IngestBatch()
    for i, (row, label) in enumerate(zip(x, y, strict=True)):
        batch.samples.append(stored(Sample(f"s{start + i}", row, int(label)), "s", 0, start + i, 1000))
    batch.positions[("s", 0)] = start + len(x)
    store.apply(batch)


def online_at(store: SampleStore, directory: Path) -> OnlineMembers:
    return OnlineMembers(
        heads=Heads(features=FEATURES, classes=CLASSES, heads=[0, 100], head_features=32),
        hedge=Hedge(),
        store=store,
        lock=threading.RLock(),
        held_out=lambda id: id.endswith("7"),
        directory=directory,
        batch=128,
    )


def test_the_daemons_heads_follow_the_store_and_restart_exactly(tmp_path: Path) -> None:
    x, y = blobs(900, 9)
    test_x, _ = blobs(200, 10)
    with SampleStore.open(tmp_path / "store") as store:
        fill(store, x[:500], y[:500], 0)
        online = online_at(store, tmp_path / "heads")
        assert online.catch_up() == 0  # no sample predicted yet: its label waits (test, then train)
        online.observed(store.last_label_event())
        assert online.catch_up() == 500
        assert online.heads.learned == 500  # the gate's held-out samples too: the gate judges the network
        online.save()
        fill(store, x[500:], y[500:], 500)
        online.observed(store.last_label_event())
        online.catch_up()
        expected = online.predict(test_x)
        weights = online.hedge.weights(["lda", "lda_100"])

        restarted = online_at(store, tmp_path / "heads")
        restarted.load()  # the state saved at event 500; the events after it are replayed
        assert restarted.cursor == 500
        restarted.observed(store.last_label_event())
        restarted.catch_up()
        for name, labels in expected.items():
            np.testing.assert_array_equal(restarted.predict(test_x)[name], labels)
        assert restarted.hedge.weights(["lda", "lda_100"]) == pytest.approx(weights)

        # A damaged file is set aside and the heads are rebuilt from the store's label events.
        (tmp_path / "heads" / "heads.safetensors").write_bytes(b"\x00" * 64)
        rebuilt = online_at(store, tmp_path / "heads")
        rebuilt.load()
        assert rebuilt.cursor == 0 and (tmp_path / "heads" / "heads.unusable").exists()
        rebuilt.observed(store.last_label_event())
        rebuilt.catch_up()
        # The same labels in the same order; batches cut elsewhere scale a few rows differently.
        for name, labels in expected.items():
            assert accuracy(rebuilt.predict(test_x)[name], labels) >= 0.98


def test_the_daemons_heads_keep_held_out_samples_of_absent_classes_across_a_restart(tmp_path: Path) -> None:
    tasks = [blobs(700, 20 + k, classes=classes) for k, classes in enumerate([[0, 1], [2, 3], [4]])]
    with SampleStore.open(tmp_path / "store") as store:
        online = online_at(store, tmp_path / "heads")
        start = 0
        for x, y in tasks:
            fill(store, x, y, start)
            start += len(y)
            online.observed(store.last_label_event())
            online.catch_up()
        assert online.probes.absent().tolist() == [0, 1, 2, 3]
        test_x, test_y = blobs(500, 30)
        assert accuracy(online.serve(online.predict(test_x)), test_y) >= 0.9
        weights = online.weights(["lda", "lda_100", "prior"])
        assert weights["prior"] < 1e-6  # right on the last task, wrong on every absent class
        online.save()
        again = online_at(store, tmp_path / "heads")
        again.load()
        assert again.probes.absent().tolist() == [0, 1, 2, 3]
        assert again.weights(["lda", "lda_100", "prior"]) == pytest.approx(weights)


def test_a_round_waits_for_the_vote_while_it_learns_not_once_it_stalls(tmp_path: Path) -> None:
    x, y = blobs(300, 14)
    with SampleStore.open(tmp_path / "store") as store:
        fill(store, x, y, 0)
        online = online_at(store, tmp_path / "heads")
        learn = online.heads.learn
        release = threading.Semaphore(0)

        def stalled(x: Any, y: Any) -> None:  # a learner that takes a batch when the test says
            release.acquire()
            learn(x, y)

        online.heads.learn = stalled  # type: ignore[method-assign]
        online.observed(store.last_label_event())
        online.start()
        try:
            assert online.scored_upto(stall=0.2) == 0  # nothing learned: the round does not hang on it

            def slow(x: Any, y: Any) -> None:  # each batch takes a second: five, longer than the stall
                time.sleep(1.0)
                learn(x, y)

            online.heads.learn = slow  # type: ignore[method-assign]
            release.release()
            assert online.scored_upto(stall=3.0) == 300
        finally:
            release.release()  # a follower still waiting to take a batch
            online.close()


def test_an_abandoned_round_stops_waiting_for_the_vote(tmp_path: Path) -> None:
    x, y = blobs(300, 15)
    with SampleStore.open(tmp_path / "store") as store:
        fill(store, x, y, 0)
        online = online_at(store, tmp_path / "heads")
        release = threading.Event()
        learn = online.heads.learn

        def stalled(x: Any, y: Any) -> None:  # a follower stuck in its first batch
            release.wait()
            learn(x, y)

        online.heads.learn = stalled  # type: ignore[method-assign]
        online.observed(store.last_label_event())
        online.start()
        try:
            started = time.monotonic()
            # The follower never moves: without the round's stop flag this would wait out the stall.
            assert online.scored_upto(lambda: True, stall=30.0) == 0
            assert time.monotonic() - started < 30.0
        finally:
            release.set()
            online.close()
