"""What is served: the members' votes, weighted by each member's recent live accuracy (Hedge).

Each member (the network serving now, the online heads) predicts every sample;
when the sample's label comes, each member's prediction is scored. A member's
recent error rate is a discounted average (a score's weight halves after
``half_life`` newer scores), starting from a prior of 0.5 worth ``prior`` scores,
so a member that has just joined is not trusted before it has shown anything.
The weight of a member is ``exp(-rate * window)``, ``window`` being the scores
the discounting effectively remembers: two members apart by 5 points over a
window of 300 scores are 15 errors apart, a factor of e^15. The served label
is the class of highest weighted probability (each member's class probabilities
times its weight): the clearly better member decides alone, members about as
good decide together, each counting most where it is sure.

Recent labels alone would mislead the vote whenever they show only part of what
still holds: while only the newest classes arrive (class-incremental), or every
class arrives with new inputs (a new domain), a member that has forgotten the
rest is the most accurate on what arrives. :class:`Probes` keeps held-out samples
of each class, and every member is also scored on those of the classes absent
lately and on the past inputs of the classes present that newer labels do not
contradict (on a stream whose classes and inputs keep coming alike they are
judged as the recent labels are: there the recent labels alone decide).

Example (members give labels, or class probabilities, one row per sample):

>>> hedge = Hedge(half_life=200)
>>> for _ in range(50):
...     hedge.score("lda", True)
...     hedge.score("network", False)
>>> hedge.combine({"lda": np.array([1, 2]), "network": np.array([1, 0])}, classes=3)
array([1, 2])
>>> hedge.combine({"lda": np.array([[0.5, 0.5, 0.0]]), "network": np.array([[0.0, 0.0, 1.0]])}, classes=3)
array([0])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lifelong.labeled import Labeled, intensities
from lifelong.learners.gate import contradicted

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
        self,
        predicted: Mapping[str, np.ndarray[Any, Any]],
        y: np.ndarray[Any, Any],
        weights: np.ndarray[Any, Any] | None = None,
    ) -> None:
        """Score each member's predictions of samples labeled ``y`` (a prediction of -1: none).

        With ``weights`` (one per sample) the scores count that much each and do not age the
        others: the held-out samples of absent classes, scored again at each pass.
        """
        for member, labels in predicted.items():
            made = labels >= 0
            if weights is None:
                self.score(member, labels[made] == y[made])
                continue
            w = weights[made]
            self._errors[member] = self._errors.get(member, 0.0) + float(w @ (labels[made] != y[made]))
            self._scored[member] = self._scored.get(member, 0.0) + float(w.sum())

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
        """The label of highest weighted probability, the members' probabilities weighed by their weights.

        Each member gives its class probabilities (rows x ``classes``) or its labels (one per
        row, counted as certain). Averaging probabilities rather than votes lets members that
        know different things (the one that never forgets a class, the network that draws
        finer boundaries) correct each other where one of them is unsure.
        """
        weights = self.weights(predictions)
        n = len(next(iter(predictions.values())))
        votes = np.zeros((n, classes))
        rows = np.arange(n)
        for member, given in predictions.items():
            given = np.asarray(given)
            if given.ndim == 2:
                votes += weights[member] * given
            else:
                votes[rows, given.astype(np.int64)] += weights[member]
        chosen: np.ndarray[Any, Any] = votes.argmax(1)
        return chosen

    def state(self) -> dict[str, Any]:
        return {"format": FORMAT, "errors": dict(self._errors), "scored": dict(self._scored)}

    def restore(self, state: Mapping[str, Any]) -> None:
        if int(state.get("format", 0)) != FORMAT:
            raise ValueError(f"ensemble format {state.get('format')!r}, this version reads {FORMAT}")
        self._errors = {str(k): float(v) for k, v in state["errors"].items()}
        self._scored = {str(k): float(v) for k, v in state["scored"].items()}


class Probes:
    """Held-out samples kept per class, to score the members on what the recent labels do not show.

    Recent labels alone judge the members on the classes and inputs arriving now. Two
    kinds of knowledge still hold that they do not show:

    * **Classes absent lately** (class-incremental streams): a class is absent once
      ``absent_after`` labels have come without one of it; its last ``keep`` held-out
      samples score the members, class ``c`` weighing ``share_c / (1 - absent share)``
      per label scored from the stream in all (its samples evenly), so the vote is
      judged as if every class seen came at its share of all the labels so far.
    * **The past inputs of the classes present** (domain-incremental streams: a new
      permutation, angle or sensor brings every class back with new inputs): a
      reservoir of ``keep`` held-out samples per class drawn evenly over the whole
      stream scores the members too, those that newer labels contradict left out (a
      concept change: :func:`~lifelong.learners.gate.contradicted`, judged against the
      last ``recent`` labels, so once a third of the labels near a sample say otherwise
      it stops counting). Together they weigh ``past`` per label scored (the classes
      by their shares, each class's samples evenly): the vote is judged half on what
      arrives now and half on what still holds from before (``past = 1``), so a member
      that adapts to each new domain by forgetting the old ones is not trusted for
      being right on the newest. Those samples are scored again at every pass, so they
      are as much evidence as they are many, not more: while they are fewer than the
      ``window`` of labels the vote remembers (early on; two classes keep 64), they
      weigh ``past`` times their share of it. Weighed fully, a few dozen samples would
      decide the vote at the start of a stream, trusting whichever member happened to
      get those few right.

    On a stream whose inputs and classes keep coming alike both kinds are judged as the
    recent labels are, and change nothing.
    """

    def __init__(
        self,
        *,
        classes: int,
        features: int,
        keep: int = 32,
        absent_after: int = 300,
        recent: int = 100,
        past: float = 1.0,
        window: float = Hedge().window,  # the labels the vote remembers (half-life 200: 289)
        seed: int = 0,
    ) -> None:
        self.classes = classes
        self.keep = keep
        self.absent_after = absent_after
        self.recent = recent
        self.past = past
        self.window = window
        self.count = np.zeros(classes, dtype=np.int64)  # labels seen per class
        self.last = np.zeros(classes, dtype=np.int64)  # the label count at each class's last label
        self.seen = 0
        self.x = np.zeros((classes, keep, features), dtype=np.float32)  # ring buffers: the last held out
        self.filled = np.zeros(classes, dtype=np.int64)  # held-out samples seen per class
        self.reservoir = np.zeros((classes, keep, features), dtype=np.float32)  # drawn over the stream
        self.recent_x = np.zeros((0, features), dtype=np.float32)  # the last ``recent`` labels (any)
        self.recent_y = np.zeros(0, dtype=np.int64)
        self._rng = np.random.default_rng(seed)

    def observe(self, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], held: np.ndarray[Any, Any]) -> None:
        """Labeled rows, oldest first; the ``held`` ones (the gate's: no version trains on them) are kept."""
        y = np.asarray(y, dtype=np.int64)
        x = np.asarray(x)
        x = intensities(x)  # as models read it
        positions = self.seen + np.arange(1, len(y) + 1)
        np.add.at(self.count, y, 1)
        self.last[y] = positions  # the last occurrence of each class wins
        self.seen += len(y)
        for row, label in zip(x[held], y[held], strict=True):
            n = int(self.filled[label])
            self.x[label, n % self.keep] = row
            slot = n if n < self.keep else int(self._rng.integers(0, n + 1))
            if slot < self.keep:
                self.reservoir[label, slot] = row
            self.filled[label] += 1
        self.recent_x = np.concatenate([self.recent_x, x])[-self.recent :]
        self.recent_y = np.concatenate([self.recent_y, y])[-self.recent :]

    def absent(self) -> np.ndarray[Any, Any]:
        """Classes seen before, not within the last ``absent_after`` labels, with held-out samples kept."""
        return np.flatnonzero(
            (self.count > 0) & (self.seen - self.last >= self.absent_after) & (self.filled > 0)
        )

    def probes(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
        """(x, y, weight per row, per label scored from the stream) to score the members on; None: nothing."""
        absent = self.absent()
        present = np.setdiff1d(np.flatnonzero(self.filled > 0), absent)
        share = self.count / max(1, self.seen)
        missing = min(float(share[absent].sum()), 0.95)
        xs, ys, ws = [], [], []
        for c in absent:
            n = int(min(self.filled[c], self.keep))
            xs.append(self.x[c, :n])
            ys.append(np.full(n, c))
            ws.append(np.full(n, share[c] / (1.0 - missing) / n))
        if self.past > 0 and len(present):
            sizes = np.minimum(self.filled[present], self.keep)
            x = np.concatenate([self.reservoir[c, :n] for c, n in zip(present, sizes, strict=True)])
            y = np.repeat(present, sizes)
            newer = Labeled(ids=[""] * len(self.recent_y), x=self.recent_x, y=self.recent_y)
            holds = ~contradicted(Labeled(ids=[""] * len(y), x=x, y=y), [newer])
            kept = np.bincount(y[holds], minlength=self.classes)
            total = float(share[present].sum())
            # Each sample weighs at most one label of the vote's window (see the class's docstring).
            past = self.past * min(1.0, int(holds.sum()) / self.window)
            weight = past * share[y] / total / np.maximum(kept[y], 1)
            xs.append(x[holds])
            ys.append(y[holds])
            ws.append(weight[holds])
        if not xs or not sum(len(part) for part in ys):
            return None
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)

    def state(self) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, Any]]:
        arrays: dict[str, np.ndarray[Any, Any]] = {
            "probes.count": self.count,
            "probes.last": self.last,
            "probes.x": self.x,
            "probes.filled": self.filled,
            "probes.reservoir": self.reservoir,
            "probes.recent_x": self.recent_x,
            "probes.recent_y": self.recent_y,
        }
        return arrays, {"seen": self.seen, "keep": self.keep, "absent_after": self.absent_after}

    def restore(self, arrays: Mapping[str, np.ndarray[Any, Any]], meta: Mapping[str, Any]) -> None:
        if (int(meta["keep"]), *arrays["probes.x"].shape[::2]) != (self.keep, self.classes, self.x.shape[2]):
            raise ValueError("the saved held-out samples were kept for other classes, features or sizes")
        self.seen = int(meta["seen"])
        self.count = np.asarray(arrays["probes.count"], dtype=np.int64).copy()
        self.last = np.asarray(arrays["probes.last"], dtype=np.int64).copy()
        self.x = np.asarray(arrays["probes.x"], dtype=np.float32).copy()
        self.filled = np.asarray(arrays["probes.filled"], dtype=np.int64).copy()
        self.reservoir = np.asarray(arrays["probes.reservoir"], dtype=np.float32).copy()
        self.recent_x = np.asarray(arrays["probes.recent_x"], dtype=np.float32)[-self.recent :].copy()
        self.recent_y = np.asarray(arrays["probes.recent_y"], dtype=np.int64)[-self.recent :].copy()
        # The reservoir's draws go on from a generator of their own: any is as good as the one it had.
        self._rng = np.random.default_rng(self.seen)
