"""The evaluation gate: a candidate serves only if it is not worse than the champion for the world now.

Two held-out sets: recent labeled samples the candidate never trained on, and
the slice of the rehearsal memory that replay never draws (what it must not
forget). Which samples are held out is decided by a hash of their id, so the
choice is stable across rounds, restarts and processes: a held-out sample is
never trained on by any version. Both sets are scored by balanced accuracy (the
mean of per-class recall), so a class that has just appeared weighs as much as
the old ones.

Forgetting or a changed world? The gate tells them apart from the data:

1. **Where the world is now.** ADWIN runs over the champion's errors on the
   recent set in label order. When it finds that they rose at some point (the
   concept changed under the champion), the candidate is judged on the samples
   since that point, the *current* window, not on the older ones the new labels
   overrule.
2. **What still holds.** After such a change, a remembered sample counts as
   knowledge to keep only if newer labels do not contradict it: a held-out
   memory sample whose near neighbours among this round's samples and the current
   window (closer than 1.5 x the distance within which 90% of those samples find
   their own neighbours) carry another label in a third or more of cases is left
   out of the memory check.
3. **Enough to mean anything.** A set is judged only with at least ``min_samples``
   samples, and, unless the candidate is significantly better or worse on it, only
   when its noise allows no more than ``max_margin`` of drop beyond the tolerance
   (``z`` standard errors of the paired difference): a handful of samples cannot
   vouch that a candidate is not worse. When no set can be judged the round is *deferred*: nothing is
   recorded and its labels wait for the next round, with more held-out data. After
   a change, the memory alone never judges: the current window must.

A candidate is rejected if it is worse than the champion beyond the margin on
the current window, or on the remembered knowledge, unless its gain on the
current window (beyond its own noise) outweighs that loss: the world it is
served to now counts first, and what still holds is kept otherwise. Labels that
flip samples already labeled never get here unreviewed (``lifelong.learning.trust``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from river.drift import ADWIN

from lifelong.labeled import Labeled
from lifelong.learners.base import Learner
from lifelong.memory.index import exact_knn


def is_holdout(id: str, fraction: float) -> bool:
    """Whether sample ``id`` belongs to the held-out share ``fraction`` (stable: a hash of the id)."""
    return zlib.crc32(id.encode()) % 10_000 < fraction * 10_000


@dataclass(frozen=True)
class Verdict:
    """The gate's decision with the scores behind it; ``judged`` is False when no set could judge."""

    promote: bool
    scores: dict[str, float]
    reason: str
    judged: bool = True
    change_pending: bool = False  # a change seen, not yet for gate_change_rounds rounds


@dataclass(frozen=True)
class Comparison:
    """Candidate against champion on one held-out set (balanced accuracy, paired difference)."""

    samples: int
    candidate: float
    champion: float
    difference: float
    noise: float  # z standard errors of the paired difference
    tolerance: float

    @property
    def margin(self) -> float:
        return self.tolerance + self.noise

    @property
    def worse(self) -> bool:
        return self.difference < -self.margin

    @property
    def conclusive(self) -> bool:
        """Significantly worse or significantly better, however noisy: the set decides either way."""
        return self.worse or self.difference > self.noise

    @property
    def clear_gain(self) -> float:
        """The gain beyond noise (0 when within it)."""
        return max(0.0, self.difference - self.noise)


@dataclass
class _Judging:
    scores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Gate:
    """Promote a candidate unless it is worse than the champion for the current concept or what still holds.

    Example::

        gate = Gate(recent_tolerance=0.02, memory_tolerance=0.02)
        verdict = gate.judge(candidate, champion, recent=recent, remembered=memory_slice, newer=trained_on)
        if verdict.promote: ...
    """

    def __init__(
        self,
        *,
        recent_tolerance: float = 0.02,
        memory_tolerance: float = 0.02,
        min_samples: int = 20,
        z: float = 2.0,
        max_margin: float = 0.1,
        change_delta: float = 0.002,
        change_rounds: int = 2,
        neighbours: int = 5,
    ) -> None:
        if recent_tolerance < 0 or memory_tolerance < 0 or min_samples < 1 or z < 0 or max_margin <= 0:
            raise ValueError("tolerances and z must be >= 0, max_margin > 0 and min_samples >= 1")
        if not 0 < change_delta < 1:
            raise ValueError(f"change_delta must lie in (0, 1), got {change_delta!r}")
        self.recent_tolerance = recent_tolerance
        self.memory_tolerance = memory_tolerance
        self.min_samples = min_samples
        self.z = z
        self.max_margin = max_margin
        self.change_delta = change_delta
        self.change_rounds = change_rounds
        self.neighbours = neighbours
        self._streak = 0  # consecutive judgements that found the champion's errors rising
        self._evidence: str | None = None  # the newest recent sample the last judgement saw

    def judge(
        self,
        candidate: Learner,
        champion: Learner | None,
        *,
        recent: Labeled,
        remembered: Labeled,
        newer: Labeled | None = None,
        served: Callable[[Learner, np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None = None,
    ) -> Verdict:
        """Score both learners and decide; ``recent`` is in label order (oldest first).

        ``newer`` are the samples this round trained on: with the current window they are
        what a remembered sample's label is checked against after a change. ``served(network, x)``:
        what would be served with that network among the online members (their vote); a
        candidate that passes is then also judged as served, on the same samples by the same
        rule, so it is promoted only if what users get with it is not worse either.
        """
        scores: dict[str, float] = {"recent_samples": len(recent), "memory_samples": len(remembered)}
        if champion is None:
            for name, data in (("recent", recent), ("memory", remembered)):
                if len(data):
                    scores[f"candidate_{name}"] = _balanced(candidate.predict(data.x) == data.y, data.y)
            return Verdict(True, scores, "first version: no champion to beat")
        if not len(recent) and not len(remembered):
            return Verdict(True, scores, "no held-out data (holdout = 0?): promoted unjudged")
        if self.recent_tolerance >= 1 and self.memory_tolerance >= 1:
            return Verdict(True, scores, "the gate is off (both tolerances 1): promoted unjudged")
        judging = _Judging(scores)
        current = self._current(champion, recent, judging)
        # Consecutive judgements that saw the change on newer evidence each time (a rerun on the
        # same held-out samples confirms nothing).
        newest = recent.ids[-1] if len(recent) else None
        if not scores["change"]:
            self._streak = 0
        elif newest != self._evidence:
            self._streak += 1
        self._evidence = newest
        if scores["change"]:
            if self._streak < self.change_rounds:
                # A label-mapping bug looks like a change for a moment; a change holds.
                reason = (
                    f"the champion's errors rose {len(current)} samples ago: a change is adopted once it "
                    f"holds for {self.change_rounds} rounds (seen in {self._streak})"
                )
                return Verdict(False, scores, reason, judged=False, change_pending=True)
            remembered = self._uncontradicted(remembered, current, newer, judging)
        sets = (
            ("recent", current, self.recent_tolerance),
            ("memory", remembered, self.memory_tolerance),
        )
        verdict = self._decide(self._comparisons(sets, candidate.predict, champion.predict, judging), judging)
        if not verdict.promote or served is None:
            return verdict
        # The network is one member of what is served: judged as served, by the same rule.
        vote = _Judging(scores)
        comparisons = self._comparisons(
            sets, partial(served, candidate), partial(served, champion), vote, prefix="served_"
        )
        as_served = self._decide(comparisons, vote)
        if not as_served.judged or as_served.promote:
            return verdict
        return Verdict(False, scores, f"as served (the members' vote with it): {as_served.reason}")

    def _comparisons(
        self,
        sets: tuple[tuple[str, Labeled, float], ...],
        candidate: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]],
        champion: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]],
        judging: _Judging,
        *,
        prefix: str = "",
    ) -> dict[str, Comparison]:
        """The sets that can judge: each with enough samples, and noise within ``max_margin``."""
        comparisons: dict[str, Comparison] = {}
        for name, data, tolerance in sets:
            if not len(data):
                continue
            compared = self._compare(
                candidate(data.x) == data.y, champion(data.x) == data.y, data.y, tolerance
            )
            judging.scores.update(
                {
                    f"{prefix}candidate_{name}": compared.candidate,
                    f"{prefix}champion_{name}": compared.champion,
                    f"{prefix}{name}_margin": compared.margin,
                    f"{prefix}{name}_judged_samples": compared.samples,
                }
            )
            if tolerance >= 1.0:  # a check switched off passes anything, on any number of samples
                comparisons[name] = compared
            elif compared.samples < self.min_samples:
                judging.notes.append(f"{name}: {compared.samples} samples < {self.min_samples}, not judged")
            elif compared.noise > self.max_margin and not compared.conclusive:
                judging.notes.append(
                    f"{name}: noise {compared.noise:.3f} > {self.max_margin} on {compared.samples} samples, "
                    "not judged"
                )
            else:
                comparisons[name] = compared
        return comparisons

    def _decide(self, comparisons: dict[str, Comparison], judging: _Judging) -> Verdict:
        notes = f" [{'; '.join(judging.notes)}]" if judging.notes else ""
        if not comparisons:
            return Verdict(False, judging.scores, f"too few held-out samples to judge{notes}", judged=False)
        now, kept = comparisons.get("recent"), comparisons.get("memory")
        if judging.scores.get("change") and now is None:
            # What still holds alone cannot judge a candidate for a world that changed: wait for it.
            reason = f"a change is adopted but too few samples show the current concept yet{notes}"
            return Verdict(False, judging.scores, reason, judged=False)
        where = "on the current concept" if judging.scores.get("change") else "on recent data"
        if now is not None and now.worse:
            return Verdict(
                False,
                judging.scores,
                f"recent accuracy {now.candidate:.3f} < champion's {now.champion:.3f} by more than "
                f"{now.margin:.3f} {where}{notes}",
            )
        if kept is not None and kept.worse:
            loss = -kept.difference
            if now is None or now.clear_gain < loss:  # a tie goes to the world as it is now
                return Verdict(
                    False,
                    judging.scores,
                    f"memory accuracy {kept.candidate:.3f} < champion's {kept.champion:.3f} by more than "
                    f"{kept.margin:.3f}: it forgets what still holds"
                    + (f" and gains only {now.clear_gain:.3f} {where}" if now is not None else "")
                    + notes,
                )
            return Verdict(
                True,
                judging.scores,
                f"gains {now.clear_gain:.3f} {where}, more than it loses on memory ({loss:.3f}){notes}",
            )
        return Verdict(True, judging.scores, f"not worse than the champion {where} or on memory{notes}")

    def _compare(
        self,
        mine: np.ndarray[Any, Any],
        theirs: np.ndarray[Any, Any],
        y: np.ndarray[Any, Any],
        tolerance: float,
    ) -> Comparison:
        """Paired: ``mine`` and ``theirs`` say which samples each got right."""
        weights = _class_weights(y)
        difference = mine.astype(np.float64) - theirs
        mean = float(weights @ difference)
        noise = self.z * float(np.sqrt(weights**2 @ (difference - mean) ** 2))
        return Comparison(
            samples=len(y),
            candidate=float(weights @ mine),
            champion=float(weights @ theirs),
            difference=mean,
            noise=noise,
            tolerance=tolerance,
        )

    def since_change(self, champion: Learner, recent: Labeled) -> Labeled | None:
        """The recent samples (label order) since the champion's errors rose; None when they did not."""
        judging = _Judging()
        current = self._current(champion, recent, judging)
        return current if judging.scores["change"] else None

    def adopting(self, champion: Learner, recent: Labeled) -> Labeled | None:
        """The current window when judging ``recent`` now would adopt a change (it held long enough).

        What a round may act on before training (retiring the memory the change contradicts):
        nothing while the change is still to be confirmed, as a label-mapping bug would be.
        """
        current = self.since_change(champion, recent)
        if current is None:
            return None
        newest = recent.ids[-1] if len(recent) else None
        streak = self._streak + (newest != self._evidence)
        return current if streak >= self.change_rounds else None

    def _current(self, champion: Learner, recent: Labeled, judging: _Judging) -> Labeled:
        """The recent samples since the champion's errors last rose (all of them when they did not)."""
        judging.scores["change"] = 0.0
        if len(recent) < 2 * self.min_samples:
            return recent
        errors = (champion.predict(recent.x) != recent.y).astype(float)
        # A changed concept relabels what was already there: only classes the champion trained on and
        # that the older half of the window holds count. A class new to the stream is new knowledge
        # (its errors fall as it is learned), not a change.
        seen = getattr(champion, "seen", None)
        established = np.unique(recent.y[: len(recent) // 2])
        if seen is not None:
            established = np.intersect1d(established, seen)
        known = np.isin(recent.y, established)
        errors = errors[known]
        if len(errors) < 2 * self.min_samples:
            return recent
        detector = ADWIN(delta=self.change_delta, clock=1)
        if not any(detector.update(error) or detector.drift_detected for error in errors):
            return recent
        # ADWIN says whether the errors changed; where is the cut with the largest rise, in standard
        # errors (ADWIN's own window lags the change by its check granularity).
        start = _steepest_rise(errors, self.min_samples // 2)
        if start is None:  # the change made the champion better: nothing to adapt to
            return recent
        rise = f"{errors[:start].mean():.2f} -> {errors[start:].mean():.2f}"
        start = int(np.flatnonzero(known)[start])  # the cut among known-class samples, in all of them
        judging.scores.update({"change": 1.0, "current_samples": len(recent) - start})
        judging.notes.append(
            f"the champion's errors rose {len(recent) - start} samples ago ({rise}): judged on those"
        )
        return recent.take(np.arange(len(recent)) >= start)

    def _uncontradicted(
        self, remembered: Labeled, current: Labeled, newer: Labeled | None, judging: _Judging
    ) -> Labeled:
        """The remembered samples that newer labels do not contradict (see :func:`contradicted`)."""
        newer_parts = [current] + ([newer] if newer is not None and len(newer) else [])
        mask = contradicted(remembered, newer_parts, k=self.neighbours)
        judging.scores["memory_contradicted"] = int(mask.sum())
        if mask.any():
            judging.notes.append(f"{int(mask.sum())} remembered samples contradicted by newer labels")
        return remembered.take(~mask)


def contradicted(older: Labeled, newer: list[Labeled], *, k: int = 5) -> np.ndarray[Any, Any]:
    """Which ``older`` samples newer labels contradict (a third or more of their close neighbours disagree).

    "Close" is within 1.5 x the distance inside which 90% of the newer samples find their own
    ``k``-th neighbour; a sample far from every newer one is not contradicted (nothing says
    otherwise there). Inputs are standardized by the newer samples' statistics first. Among
    neighbours equally close (inputs that repeat, as categorical ones do) the newest count.
    """
    # Newest first: of neighbours equally close (repeated inputs) the newest labels are the ones found.
    reference_x = np.concatenate([np.asarray(p.x, dtype=np.float32) for p in newer])[-20_000:][::-1]
    reference_y = np.concatenate([p.y for p in newer])[-20_000:][::-1]
    k = min(k, len(reference_y) - 1)
    if not len(older) or k < 1:
        return np.zeros(len(older), dtype=bool)
    mean = reference_x.mean(0)
    scale = reference_x.std(0)
    scale[scale < 1e-6] = 1.0
    reference = (reference_x - mean) / scale
    queries = (np.asarray(older.x, dtype=np.float32) - mean) / scale
    own, _ = exact_knn(reference[:2000], reference, k + 1)  # squared distances, the k-th past itself
    radius = float(np.quantile(own[:, k], 0.9)) * 1.5**2
    distances, found = exact_knn(queries, reference, k)
    near = distances <= radius
    disagree = (reference_y[found] != older.y[:, None]) & near
    # A third or more of the close neighbours saying otherwise contradicts (a boundary the change
    # moved included); far from every newer sample nothing does: it is still to be kept.
    return near.any(1) & (disagree.sum(1) * 3 >= near.sum(1))  # type: ignore[no-any-return]


def _steepest_rise(errors: np.ndarray[Any, Any], least: int) -> int | None:
    """The cut after which the error rate rose most (in standard errors), or None if it fell."""
    n = len(errors)
    cuts = np.arange(max(1, least), n - max(1, least) + 1)
    if not len(cuts):
        return None
    before = np.cumsum(errors)[cuts - 1] / cuts
    after = (errors.sum() - np.cumsum(errors)[cuts - 1]) / (n - cuts)
    rate = errors.mean()
    spread = np.sqrt(max(rate * (1 - rate), 1e-12) * (1 / cuts + 1 / (n - cuts)))
    rise = (after - before) / spread
    best = int(np.argmax(rise))
    return int(cuts[best]) if rise[best] > 0 else None


def _balanced(right: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    return float(_class_weights(y) @ right)


def _class_weights(y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Per-sample weights that make a weighted mean the balanced (per-class averaged) mean."""
    labels, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return 1.0 / (len(labels) * counts[inverse])


def finite(scores: dict[str, Any]) -> dict[str, float]:
    """The scores that are finite numbers (JSON has no NaN)."""
    return {k: float(v) for k, v in scores.items() if isinstance(v, int | float) and math.isfinite(v)}
