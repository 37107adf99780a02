"""Drift signals, each a score and an alarm with hysteresis: feature novelty, label shift, accuracy drops.

- ``novelty``: how far new samples lie from the rehearsal memory (its mean k-NN distance over the
  memory's own; 1.0 = typical). Raised at ``novelty_alarm``, cleared below ``novelty_clear``.
- ``label_shift``: the Jensen-Shannon distance (base 2, in [0, 1]) between the class mix of the last
  ``window`` labels and of the ``window`` before them. Raised and cleared the same way.
- ``accuracy``: ADWIN (river's) over the prequential 0/1 errors; the score is the rise in error rate
  it found, an alarm only when accuracy fell. It clears once the hold time passes without another.

An alarm stays raised at least ``hold_s`` and until its score clears, so a score hovering at the
threshold raises one alarm, not one per batch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from river.drift import ADWIN
from scipy.spatial.distance import jensenshannon


@dataclass
class Alarm:
    """A thresholded score with hysteresis: raise at ``high``, clear below ``low`` after ``hold_s``."""

    high: float
    low: float
    hold_s: float
    raised: bool = False
    since: float = 0.0
    score: float = 0.0

    def update(self, score: float, now: float) -> bool:
        """Take a new score; True when this raises the alarm."""
        self.score = score
        if not self.raised and score >= self.high:
            self.raised, self.since = True, now
            return True
        if self.raised and score < self.low and now - self.since >= self.hold_s:
            self.raised = False
        return False


@dataclass
class DriftMonitor:
    """The three drift signals; feed it scores, labels and prequential errors.

    Example::

        drift = DriftMonitor(classes=10)
        raised = drift.observe_labels([3, 3, 4]) + drift.observe_errors([True, False])
        drift.scores()   # {"novelty": 0.0, "label_shift": 0.0, "accuracy": 0.0}
    """

    classes: int
    window: int = 500
    novelty_alarm: float = 1.5
    novelty_clear: float = 1.2
    label_shift_alarm: float = 0.3
    label_shift_clear: float = 0.15
    adwin_delta: float = 0.002
    hold_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _alarms: dict[str, Alarm] = field(init=False)
    _labels: deque[int] = field(init=False)
    _adwin: ADWIN = field(init=False)

    def __post_init__(self) -> None:
        if self.novelty_clear > self.novelty_alarm or self.label_shift_clear > self.label_shift_alarm:
            raise ValueError("a drift alarm's clear level must not exceed its alarm level")
        self._alarms = {
            "novelty": Alarm(self.novelty_alarm, self.novelty_clear, self.hold_s),
            "label_shift": Alarm(self.label_shift_alarm, self.label_shift_clear, self.hold_s),
            # Raised by ADWIN's detections rather than a threshold: any positive rise counts.
            "accuracy": Alarm(float("inf"), float("inf"), self.hold_s),
        }
        self._labels = deque(maxlen=2 * self.window)
        self._adwin = ADWIN(delta=self.adwin_delta)

    def scores(self) -> dict[str, float]:
        """Each signal's latest score."""
        return {name: alarm.score for name, alarm in self._alarms.items()}

    def raised(self) -> dict[str, bool]:
        """Whether each signal's alarm is raised now."""
        return {name: alarm.raised for name, alarm in self._alarms.items()}

    def observe_novelty(self, score: float) -> list[str]:
        """A novelty score for a batch of new samples; the alarms it raised."""
        return ["novelty"] if self._alarms["novelty"].update(score, self.clock()) else []

    def observe_labels(self, labels: Iterable[int]) -> list[str]:
        """Labels as they arrive; the alarms they raised."""
        self._labels.extend(labels)
        if len(self._labels) < 2 * self.window:
            return []
        counts = np.bincount(np.fromiter(self._labels, dtype=np.int64), minlength=self.classes)
        older = np.bincount(
            np.fromiter(list(self._labels)[: self.window], dtype=np.int64), minlength=self.classes
        )
        newer = counts - older
        score = float(jensenshannon(older, newer, base=2))
        return ["label_shift"] if self._alarms["label_shift"].update(score, self.clock()) else []

    def observe_errors(self, right: Iterable[bool]) -> list[str]:
        """Prequential outcomes (True: predicted right); the alarms they raised."""
        alarm = self._alarms["accuracy"]
        now = self.clock()
        rise = 0.0
        for outcome in right:
            before, width = self._adwin.estimation, self._adwin.width
            self._adwin.update(0 if outcome else 1)
            if self._adwin.drift_detected:
                # The error rate of what ADWIN dropped, from the means before and after the cut.
                dropped = width + 1 - self._adwin.width
                old = before * width + (0 if outcome else 1) - self._adwin.estimation * self._adwin.width
                rise = max(rise, self._adwin.estimation - old / dropped) if dropped > 0 else rise
        if rise > 0:
            newly = not alarm.raised
            alarm.raised, alarm.since, alarm.score = True, now, rise
            return ["accuracy"] if newly else []
        if alarm.raised and now - alarm.since >= alarm.hold_s:
            alarm.raised, alarm.score = False, 0.0
        return []
