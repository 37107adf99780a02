"""Live (prequential) accuracy: each sample is predicted on arrival and scored when its label comes.

Test, then train: the prediction is made by the champion serving when the
sample arrives, before any round can have trained on its label. A label that
arrives before its sample waits for it. Each prediction is scored once, by the
first label its sample gets (a later relabel changes the training data, not the
score of a prediction already made).

With online members (the heads and the network, served by their weighted vote),
each member's prediction is recorded beside the served one and scored with it
(:attr:`LiveAccuracy.members`, each member's recent accuracy). The live
accuracy is then the served prediction's.

While a newly promoted version is on probation, its predecessor predicts every
sample too, and the two are compared on the same samples: a drop in the new
version's accuracy is then its own fault, not the stream's (a concept change
lowers both).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SERVED = "served"  # the key of the served prediction in a sample's row (members are named, versions numbered)


@dataclass
class Probation:
    """A newly promoted version scored beside its predecessor on the same live samples."""

    version: int
    predecessor: int
    labels: int = 0
    right: int = 0
    predecessor_right: int = 0
    gained: int = 0  # samples the new version got right and its predecessor wrong
    lost: int = 0  # ... and the other way round

    @property
    def drop_se(self) -> float:
        """The standard error of the paired accuracy difference (0 before any label)."""
        if not self.labels:
            return 0.0
        n = self.labels
        mean = (self.gained - self.lost) / n
        return math.sqrt(max((self.gained + self.lost) / n - mean * mean, 0.0) / n)

    @property
    def accuracy(self) -> float:
        """The new version's live accuracy so far (NaN before any label)."""
        return self.right / self.labels if self.labels else math.nan

    @property
    def predecessor_accuracy(self) -> float:
        """The predecessor's, on the same samples."""
        return self.predecessor_right / self.labels if self.labels else math.nan


@dataclass(frozen=True)
class Verdict:
    """What a probation concluded: roll back or not, and why."""

    rollback: bool
    reason: str


class LiveAccuracy:
    """Prequential accuracy over a sliding window, and the probation of new versions.

    Example (version 3 serves; sample "a" came with its label, "b"'s comes later as feedback):

    >>> live = LiveAccuracy(window=500)
    >>> live.serving(3)
    >>> live.predicted(["a", "b"], {3: [1, 2]}, labels=[1, None])
    [True]
    >>> live.labeled(["b"], [0])
    [False]
    >>> live.accuracy
    0.5
    """

    def __init__(
        self,
        *,
        window: int = 500,
        max_pending: int = 200_000,
    ) -> None:
        if window < 1 or max_pending < 1:
            raise ValueError(f"window and max_pending must be positive, got {window} and {max_pending}")
        self.window = window
        self.max_pending = max_pending
        self.members: dict[str, deque[bool]] = {}  # each online member's recent scores
        self.member_totals: dict[str, list[int]] = {}  # ... and [right, scored] since the start
        self._pending: OrderedDict[str, dict[int | str, int]] = OrderedDict()
        self._early: OrderedDict[str, int] = OrderedDict()
        self._scores: deque[bool] = deque(maxlen=window)
        self._champion: int | None = None
        self.probation: Probation | None = None
        self.dropped = 0  # predictions evicted unscored (their label never came in time)

    @property
    def accuracy(self) -> float:
        """The share of the window's scored predictions that were right (NaN before any)."""
        return sum(self._scores) / len(self._scores) if self._scores else math.nan

    @property
    def scored(self) -> int:
        """Scored predictions in the window."""
        return len(self._scores)

    def serving(self, version: int | None, *, predecessor: int | None = None) -> None:
        """The champion changed to ``version``; with a ``predecessor``, put it on probation."""
        if version == self._champion:
            return
        self._champion = version
        self._scores.clear()  # the window describes the version serving
        self.probation = (
            Probation(version=version, predecessor=predecessor)
            if version is not None and predecessor is not None
            else None
        )

    def end_probation(self, probation: Probation | None = None) -> None:
        """Stop comparing (the version passed, or it was rolled back); only ``probation`` if named."""
        if probation is None or self.probation is probation:
            self.probation = None

    def member_accuracy(self, member: str) -> float:
        """``member``'s accuracy over its last ``window`` scored predictions (NaN before any)."""
        scores = self.members.get(member)
        return sum(scores) / len(scores) if scores else math.nan

    def predicted(
        self,
        ids: list[str],
        predictions: Mapping[int, Iterable[int]],
        labels: list[int | None],
        *,
        members: Mapping[str, Iterable[int]] | None = None,
        served: Iterable[int] | None = None,
    ) -> list[bool]:
        """Record each version's (and member's) prediction of ``ids``; score those already labeled.

        ``served``: what was served when it was not a version's own prediction (an ensemble).
        Returns the served predictions' scores (True: right), for the drift detector.
        """
        columns: dict[int | str, np.ndarray[Any, Any]] = {
            version: np.asarray(list(p), dtype=np.int64) for version, p in predictions.items()
        }
        columns.update((name, np.asarray(list(p), dtype=np.int64)) for name, p in (members or {}).items())
        if served is not None:
            columns[SERVED] = np.asarray(list(served), dtype=np.int64)
        known: list[int] = []  # rows whose label is here already (inline, or feedback that came first)
        known_labels: list[int] = []
        for i, id in enumerate(ids):
            label = labels[i] if labels[i] is not None else self._early.pop(id, None)
            if label is None:
                self._pending[id] = {key: int(column[i]) for key, column in columns.items()}
                self._pending.move_to_end(id)
            else:
                self._pending.pop(id, None)
                known.append(i)
                known_labels.append(label)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
            self.dropped += 1
        scores: list[bool] = []
        if known:
            rows = np.asarray(known)
            self._score({key: column[rows] for key, column in columns.items()}, known_labels, scores)
        return scores

    def labeled(self, ids: list[str], labels: list[int]) -> list[bool]:
        """Score the predictions these feedback labels answer; keep the others' labels for their samples."""
        # Rows predicted by the same versions and members are scored together (in label order).
        groups: dict[tuple[int | str, ...], tuple[list[dict[int | str, int]], list[int]]] = {}
        for id, label in zip(ids, labels, strict=True):
            row = self._pending.pop(id, None)
            if row is not None:
                rows, answers = groups.setdefault(tuple(row), ([], []))
                rows.append(row)
                answers.append(label)
            elif id not in self._early:
                self._early[id] = label
        while len(self._early) > self.max_pending:
            self._early.popitem(last=False)
        scores: list[bool] = []
        for keys, (rows, answers) in groups.items():
            columns = {key: np.fromiter((row[key] for row in rows), np.int64, len(rows)) for key in keys}
            self._score(columns, answers, scores)
        return scores

    def _score(
        self, columns: Mapping[int | str, np.ndarray[Any, Any]], labels: list[int], scores: list[bool]
    ) -> None:
        """Count the served predictions (ones an earlier champion served alone count for nobody)."""
        y = np.asarray(labels, dtype=np.int64)
        champion = self._champion
        main = SERVED if SERVED in columns else champion
        if main is not None and main in columns:
            right = (columns[main] == y).tolist()
            self._scores.extend(right)
            scores.extend(right)
        for key, predicted in columns.items():
            if isinstance(key, str) and key != SERVED:
                hits = predicted == y
                self.members.setdefault(key, deque(maxlen=self.window)).extend(hits.tolist())
                totals = self.member_totals.setdefault(key, [0, 0])
                totals[0] += int(hits.sum())
                totals[1] += len(hits)
        probation = self.probation
        if probation is not None and probation.version in columns and probation.predecessor in columns:
            new, old = columns[probation.version] == y, columns[probation.predecessor] == y
            probation.labels += len(y)
            probation.right += int(new.sum())
            probation.predecessor_right += int(old.sum())
            probation.gained += int((new & ~old).sum())
            probation.lost += int((old & ~new).sum())

    def judge(
        self, probation: Probation | None, *, margin: float, min_labels: int, window: int, z: float = 2.0
    ) -> Verdict | None:
        """``probation``'s verdict once ``min_labels`` are in; None while it is still open.

        Rolls back when the new version's accuracy is below its predecessor's by more than
        ``margin`` plus ``z`` standard errors of the paired difference (a few samples' luck
        is not a fault); passes once ``window`` labels have come without that.
        """
        if probation is None or probation.labels < min_labels:
            return None
        drop = probation.predecessor_accuracy - probation.accuracy
        if drop > margin + z * probation.drop_se:
            return Verdict(
                rollback=True,
                reason=(
                    f"live accuracy {probation.accuracy:.3f} < predecessor v{probation.predecessor}'s "
                    f"{probation.predecessor_accuracy:.3f} on the same {probation.labels} labeled samples "
                    f"(margin {margin:.3f} + {z:g} x SE {probation.drop_se:.3f})"
                ),
            )
        if probation.labels >= window:
            return Verdict(
                rollback=False,
                reason=(
                    f"live accuracy {probation.accuracy:.3f} vs predecessor's "
                    f"{probation.predecessor_accuracy:.3f} over {probation.labels} labeled samples"
                ),
            )
        return None
