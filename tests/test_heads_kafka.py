"""On the embedded broker: a new class is predicted right from its first labels, before any update round."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong.benchmarks import digits
from tests.kafka_setup import Running, events, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

X, Y, _, _ = digits()


def test_a_new_class_is_predicted_right_within_fifty_of_its_labels_before_any_round(setup) -> None:  # type: ignore[no-untyped-def]
    run = setup(
        "heads",
        # No round runs in this test: only the online heads can serve.
        schedule={"interval_s": 3600, "on_drift": False, "first_round_labels": 100_000},
        monitor={"window": 80},
    )
    daemon = Running(run, run.state.parent / "heads.log")
    try:
        known = np.flatnonzero(Y < 5)[:300]
        new = np.flatnonzero(Y == 5)
        taught, asked = new[:50], new[50:130]
        assert len(asked) == 80  # the live accuracy's window: it holds exactly their scores
        run.produce(events(X[known], Y[known], "a") + events(X[taught], Y[taught], "b"))
        wait_for(lambda: daemon.value("lifelong_heads_labels_total") == len(known) + len(taught))
        # Samples of the new class, unlabeled: predicted on arrival; their labels come once all are.
        asking = events(X[asked], Y[asked], "q", feedback_every=1)
        run.produce(asking[: len(asked)])
        stored = {"topic": run.samples, "outcome": "accepted"}
        wait_for(lambda: daemon.value("lifelong_events_total", **stored) == len(known) + 50 + len(asked))
        run.produce(asking[len(asked) :])
        wait_for(lambda: daemon.value("lifelong_heads_labels_total") == len(known) + 50 + len(asked))
        # The window holds exactly the asked samples' scores: predicted before their labels came.
        # Each member alone gets 0.88-0.95 of them after 50 labels of the class (in the order the two
        # partitions happen to deliver); the vote 0.90-0.91 in five runs. A vote handed to a member
        # slow on the new class (the never-forgetting head before it solved its covariance again for
        # new classes) served 0.78.
        accuracy = daemon.value("lifelong_prequential_accuracy")
        assert accuracy is not None and accuracy >= 0.85, accuracy
        assert daemon.value("lifelong_model_version") is None  # no round has run
        assert (daemon.value("lifelong_member_weight", member="lda") or 0) > 0
    finally:
        code, _ = daemon.stop(grace_s=20)
    assert code == 0
    assert (run.state / "heads" / "heads.safetensors").exists()  # saved at shutdown
