"""Drift signals: hysteresis, label shift, accuracy drops through ADWIN (monitor/drift.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong.monitor.drift import Alarm, DriftMonitor


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_alarm_is_raised_once_and_cleared_only_below_its_clear_level_after_the_hold() -> None:
    alarm = Alarm(high=1.5, low=1.2, hold_s=10)
    assert alarm.update(1.6, now=0)
    assert not alarm.update(1.4, now=1) and alarm.raised  # hovering: no second alarm
    assert not alarm.update(1.6, now=2)
    assert not alarm.update(1.0, now=5) and alarm.raised  # below the clear level, but held
    assert not alarm.update(1.0, now=11) and not alarm.raised
    assert alarm.update(1.7, now=12)


def test_a_change_of_class_mix_raises_label_shift() -> None:
    clock = Clock()
    drift = DriftMonitor(classes=10, window=100, hold_s=10, clock=clock)
    rng = np.random.default_rng(0)
    assert drift.observe_labels(rng.integers(0, 5, 200).tolist()) == []
    assert drift.scores()["label_shift"] < 0.15  # the same mix in both windows
    raised = drift.observe_labels(rng.integers(5, 10, 50).tolist())
    raised += drift.observe_labels(rng.integers(5, 10, 50).tolist())
    assert raised == ["label_shift"] and drift.raised()["label_shift"]
    assert drift.scores()["label_shift"] > 0.9  # disjoint classes: near the maximum, 1
    drift.observe_labels(rng.integers(5, 10, 100).tolist())
    assert drift.scores()["label_shift"] < 0.15 and drift.raised()["label_shift"]  # held
    clock.now = 11
    drift.observe_labels(rng.integers(5, 10, 10).tolist())
    assert not drift.raised()["label_shift"]


def test_adwin_alarms_when_accuracy_falls_not_when_it_rises() -> None:
    clock = Clock()
    drift = DriftMonitor(classes=10, hold_s=30, clock=clock)
    rng = np.random.default_rng(1)
    assert drift.observe_errors((rng.random(2000) < 0.5).tolist()) == []  # 50% right
    assert drift.observe_errors((rng.random(1000) < 0.95).tolist()) == []  # better: no alarm
    assert drift.scores()["accuracy"] == 0.0
    raised = drift.observe_errors((rng.random(1000) < 0.4).tolist())
    assert raised == ["accuracy"]
    assert 0.1 < drift.scores()["accuracy"] <= 0.6  # the error rate rose by 0.55: ADWIN sees part at first
    clock.now = 31
    drift.observe_errors([True])
    assert not drift.raised()["accuracy"] and drift.scores()["accuracy"] == 0.0


def test_novelty_uses_its_thresholds() -> None:
    drift = DriftMonitor(classes=10, novelty_alarm=2.0, novelty_clear=1.5, hold_s=0, clock=Clock())
    assert drift.observe_novelty(1.1) == []
    assert drift.observe_novelty(2.5) == ["novelty"]
    assert drift.observe_novelty(1.4) == [] and not drift.raised()["novelty"]


def test_clear_levels_above_alarm_levels_are_refused() -> None:
    with pytest.raises(ValueError, match="clear level"):
        DriftMonitor(classes=10, novelty_alarm=1.2, novelty_clear=1.5)
