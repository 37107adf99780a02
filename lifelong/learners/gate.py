"""The evaluation gate: a candidate serves only if it is not worse than the champion on held-out data.

Two held-out sets: recent labeled samples the candidate never trained on, and
the slice of the rehearsal memory that replay never draws (what it must not
forget). Both are scored by balanced accuracy (the mean of per-class recall), so a
class that has just appeared weighs as much as the old ones. Which samples are
held out is decided by a hash of their id, so the choice is stable across
rounds, restarts and processes: a held-out sample is never trained on by any
version.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.learners.base import Labeled, Learner


def is_holdout(id: str, fraction: float) -> bool:
    """Whether sample ``id`` belongs to the held-out share ``fraction`` (stable: a hash of the id)."""
    return zlib.crc32(id.encode()) % 10_000 < fraction * 10_000


@dataclass(frozen=True)
class Verdict:
    """The gate's decision with the scores behind it."""

    promote: bool
    scores: dict[str, float]
    reason: str


class Gate:
    """Promote a candidate unless it is worse than the champion beyond a tolerance on either held-out set.

    "Worse" means the candidate's balanced accuracy trails the champion's by more
    than the tolerance plus ``z`` standard errors of the paired difference (both
    models score the same samples), so a small held-out set's noise does not
    reject good updates while a real drop, such as training on shuffled labels,
    is caught.

    Example::

        gate = Gate(recent_tolerance=0.02, memory_tolerance=0.02)
        verdict = gate.judge(candidate, champion, recent=recent, remembered=memory_slice)
        if verdict.promote: ...
    """

    def __init__(
        self,
        *,
        recent_tolerance: float = 0.02,
        memory_tolerance: float = 0.02,
        min_samples: int = 20,
        z: float = 2.0,
    ) -> None:
        if recent_tolerance < 0 or memory_tolerance < 0 or min_samples < 1 or z < 0:
            raise ValueError("tolerances and z must be >= 0 and min_samples >= 1")
        self.recent_tolerance = recent_tolerance
        self.memory_tolerance = memory_tolerance
        self.min_samples = min_samples
        self.z = z

    def judge(
        self, candidate: Learner, champion: Learner | None, *, recent: Labeled, remembered: Labeled
    ) -> Verdict:
        """Score both learners on both sets and decide."""
        scores: dict[str, float] = {"recent_samples": len(recent), "memory_samples": len(remembered)}
        failures: list[str] = []
        judged = 0
        for name, data, tolerance in (
            ("recent", recent, self.recent_tolerance),
            ("memory", remembered, self.memory_tolerance),
        ):
            if not len(data):
                continue
            weights = _class_weights(data.y)
            mine = candidate.predict(data.x) == data.y
            scores[f"candidate_{name}"] = float(weights @ mine)
            if champion is None:
                continue
            theirs = champion.predict(data.x) == data.y
            scores[f"champion_{name}"] = float(weights @ theirs)
            difference = mine.astype(np.float64) - theirs
            mean = float(weights @ difference)
            margin = tolerance + self.z * float(np.sqrt(weights**2 @ (difference - mean) ** 2))
            scores[f"{name}_margin"] = margin
            if len(data) < self.min_samples:
                continue
            judged += 1
            if mean < -margin:
                failures.append(
                    f"{name} accuracy {scores[f'candidate_{name}']:.3f} < champion's "
                    f"{scores[f'champion_{name}']:.3f} by more than {margin:.3f}"
                )
        if champion is None:
            return Verdict(True, scores, "first version: no champion to beat")
        if failures:
            return Verdict(False, scores, "; ".join(failures))
        if not len(recent) and not len(remembered):
            return Verdict(True, scores, "no held-out data (holdout = 0?): promoted unjudged")
        if not judged:
            return Verdict(
                False, scores, f"fewer than {self.min_samples} held-out samples on both sets: cannot judge"
            )
        return Verdict(True, scores, "not worse than the champion on held-out data")


def _class_weights(y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Per-sample weights that make a weighted mean the balanced (per-class averaged) mean."""
    labels, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return 1.0 / (len(labels) * counts[inverse])


def finite(scores: dict[str, Any]) -> dict[str, float]:
    """The scores that are finite numbers (JSON has no NaN)."""
    return {k: float(v) for k, v in scores.items() if isinstance(v, int | float) and math.isfinite(v)}
