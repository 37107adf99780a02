"""What is served: the members' votes, weighted by each member's recent live accuracy (Hedge).

Each member (the network serving now, the online heads) predicts every sample;
when the sample's label comes, each member's prediction is scored. A member's
recent error rate is a discounted average (a score's weight halves after
``half_life`` newer scores), starting from a prior of 0.5 worth ``prior`` scores,
so a member that has just joined is not trusted before it has shown anything.
The weight of a member is ``exp(-rate * window)``, ``window`` being the scores
the discounting effectively remembers: two members apart by 5 points over a
window of 300 scores are 15 errors apart, a factor of e^15. The served label
is the weighted vote: the clearly better member decides alone, members about
as good vote together.

Example::

    hedge = Hedge(half_life=200)
    hedge.score("lda", True); hedge.score("network", False)
    hedge.combine({"lda": np.array([1, 2]), "network": np.array([1, 0])}, classes=3)   # array([1, 2])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT = 1


class Hedge:
    """Exponential weights over the members' discounted live error rates."""

    def __init__(self, *, half_life: float = 200.0, prior: float = 20.0) -> None:
        if half_life <= 0 or prior <= 0:
            raise ValueError(f"half_life and prior must be positive, got {half_life} and {prior}")
        self.half_life = half_life
        self.prior = prior
        self.decay = 0.5 ** (1.0 / half_life)
        self.window = 1.0 / (1.0 - self.decay)
        self._errors: dict[str, float] = {}
        self._scored: dict[str, float] = {}

    def fresh(self) -> Hedge:
        """New weights with the same settings, having scored nothing."""
        return Hedge(half_life=self.half_life, prior=self.prior)

    def score(self, member: str, right: bool | np.ndarray[Any, Any]) -> None:
        """``member``'s predictions were scored (one, or an array of them, oldest first)."""
        wrong = 1.0 - np.atleast_1d(np.asarray(right, dtype=np.float64))
        n = len(wrong)
        if not n:
            return
        weights = self.decay ** np.arange(n - 1, -1, -1, dtype=np.float64)
        fade = self.decay**n
        self._errors[member] = self._errors.get(member, 0.0) * fade + float(weights @ wrong)
        self._scored[member] = self._scored.get(member, 0.0) * fade + float(weights.sum())

    def score_predictions(
        self, predicted: Mapping[str, np.ndarray[Any, Any]], y: np.ndarray[Any, Any]
    ) -> None:
        """Score each member's predictions of samples labeled ``y`` (a prediction of -1: none)."""
        for member, labels in predicted.items():
            made = labels >= 0
            self.score(member, labels[made] == y[made])

    def error_rate(self, member: str) -> float:
        """``member``'s discounted error rate, the prior included."""
        return (self._errors.get(member, 0.0) + 0.5 * self.prior) / (
            self._scored.get(member, 0.0) + self.prior
        )

    def weights(self, members: Any) -> dict[str, float]:
        """Normalised weights of ``members`` (names)."""
        rates = {m: self.error_rate(m) for m in members}
        if not rates:
            return {}
        best = min(rates.values())
        raw = {m: math.exp(-(r - best) * self.window) for m, r in rates.items()}
        total = sum(raw.values())
        return {m: w / total for m, w in raw.items()}

    def combine(
        self, predictions: Mapping[str, np.ndarray[Any, Any]], *, classes: int
    ) -> np.ndarray[Any, Any]:
        """The weighted vote of the members' predicted labels."""
        weights = self.weights(predictions)
        n = len(next(iter(predictions.values())))
        votes = np.zeros((n, classes))
        rows = np.arange(n)
        for member, labels in predictions.items():
            votes[rows, np.asarray(labels, dtype=np.int64)] += weights[member]
        chosen: np.ndarray[Any, Any] = votes.argmax(1)
        return chosen

    def state(self) -> dict[str, Any]:
        return {"format": FORMAT, "errors": dict(self._errors), "scored": dict(self._scored)}

    def restore(self, state: Mapping[str, Any]) -> None:
        if int(state.get("format", 0)) != FORMAT:
            raise ValueError(f"ensemble format {state.get('format')!r}, this version reads {FORMAT}")
        self._errors = {str(k): float(v) for k, v in state["errors"].items()}
        self._scored = {str(k): float(v) for k, v in state["scored"].items()}
