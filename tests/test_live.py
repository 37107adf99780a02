"""Prequential accuracy and the live probation of a new version (monitor/live.py)."""

from __future__ import annotations

import math

import pytest

from lifelong.monitor.live import LiveAccuracy, Verdict


def test_each_prediction_is_scored_once_by_the_first_label_whenever_it_comes() -> None:
    live = LiveAccuracy(window=10)
    live.serving(1)
    assert math.isnan(live.accuracy)
    # "a" arrives labeled (scored at once), "b" waits for feedback, "c"'s label came first.
    assert live.labeled(["c"], [7]) == []
    assert live.predicted(["a", "b", "c"], {1: [3, 4, 7]}, labels=[3, None, None]) == [True, True]
    assert live.scored == 2
    assert live.labeled(["b"], [5]) == [False]
    assert live.labeled(["b"], [4]) == []  # a relabel does not score the prediction again
    assert live.accuracy == pytest.approx(2 / 3)


def test_the_window_slides_and_a_new_champion_starts_a_fresh_one() -> None:
    live = LiveAccuracy(window=4)
    live.serving(1)
    live.predicted([f"s{i}" for i in range(8)], {1: [0] * 8}, labels=[1] * 4 + [0] * 4)
    assert live.accuracy == 1.0 and live.scored == 4  # only the last four count
    live.serving(2)
    assert live.scored == 0


def test_pending_predictions_are_bounded() -> None:
    live = LiveAccuracy(window=10, max_pending=5)
    live.serving(1)
    live.predicted([f"s{i}" for i in range(8)], {1: [0] * 8}, labels=[None] * 8)
    assert live.dropped == 3
    assert live.labeled(["s0", "s7"], [0, 0]) == [True]  # s0 was evicted, s7 is still waiting


def probation_after(right_new: int, right_old: int, labels: int = 300) -> LiveAccuracy:
    """A version 2 on probation beside version 1, each right on the first ``right_*`` samples."""
    live = LiveAccuracy(window=100)
    live.serving(2, predecessor=1)
    ids = [f"s{i}" for i in range(labels)]
    new = [0 if i < right_new else 1 for i in range(labels)]
    old = [0 if i < right_old else 1 for i in range(labels)]
    live.predicted(ids, {2: new, 1: old}, labels=[0] * labels)
    return live


def judged(live: LiveAccuracy, *, window: int) -> Verdict | None:
    return live.judge(live.probation, margin=0.05, min_labels=200, window=window)


def test_predictions_an_earlier_champion_made_are_not_counted_against_the_new_one() -> None:
    live = LiveAccuracy(window=10)
    live.serving(1)
    live.predicted(["a", "b"], {1: [3, 4]}, labels=[None, None])
    live.serving(2)  # promoted while the labels were on their way
    assert live.labeled(["a", "b"], [3, 4]) == []
    assert live.scored == 0


def test_a_version_worse_than_its_predecessor_on_the_same_samples_is_rolled_back() -> None:
    verdict = judged(probation_after(right_new=150, right_old=270), window=1000)
    assert verdict is not None and verdict.rollback
    assert "0.500" in verdict.reason and "0.900" in verdict.reason


def test_a_drop_both_versions_share_is_the_stream_not_the_version() -> None:
    # A concept change: both are right on only half; the new one is no worse.
    verdict = judged(probation_after(right_new=150, right_old=150), window=1000)
    assert verdict is None  # still open: no fault found, the window is not over
    passed = judged(probation_after(right_new=150, right_old=150), window=300)
    assert passed is not None and not passed.rollback


def test_no_verdict_before_enough_labels() -> None:
    assert judged(probation_after(right_new=0, right_old=100, labels=100), window=1000) is None


def test_a_drop_within_the_noise_of_250_samples_is_not_a_fault() -> None:
    # The new version loses 19 samples its predecessor had and gains 5: 0.056 lower, about 2 SE.
    live = LiveAccuracy(window=100)
    live.serving(2, predecessor=1)
    both, lost, gained, neither = 200, 19, 5, 26
    old = [0] * both + [0] * lost + [1] * gained + [1] * neither
    new = [0] * both + [1] * lost + [0] * gained + [1] * neither
    live.predicted([f"s{i}" for i in range(250)], {2: new, 1: old}, labels=[0] * 250)
    probation = live.probation
    assert probation is not None and probation.drop_se == pytest.approx(0.019, abs=0.001)
    assert live.judge(probation, margin=0.05, min_labels=200, window=1000) is None
    assert live.judge(probation, margin=0.05, min_labels=200, window=1000, z=0).rollback  # type: ignore[union-attr]
