"""One update round as the daemon and the benchmarks run it: train a candidate from the champion, gate it.

The candidate is a fresh learner restored from the champion's checkpoint, so
the champion keeps serving untouched while the candidate trains; the caller
records the candidate (in the registry) and only then calls :meth:`promote`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.labeled import Labeled
from lifelong.learners.base import Learner, ReplaySource, RoundReport
from lifelong.learners.gate import Gate, Verdict, is_holdout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Round:
    """A trained candidate, what its training did, and the gate's verdict on it."""

    candidate: Learner
    report: RoundReport
    verdict: Verdict


class Trainer:
    """Runs update rounds against a champion.

    Example::

        trainer = Trainer(build=lambda: AvalancheLearner(model=mlp(64, 10), classes=10), gate=Gate())
        result = trainer.round(new, replay=memory, recent=recent, remembered=memory_slice)
        if result.verdict.promote:
            trainer.promote(result.candidate)
    """

    def __init__(
        self,
        *,
        build: Callable[[], Learner],
        gate: Gate,
        holdout: float = 0.1,
        served: Callable[[Learner, np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None = None,
    ) -> None:
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must lie in [0, 1), got {holdout!r}")
        self.build = build
        self.gate = gate
        self.holdout = holdout
        # What would be served with a network among the online members (the gate judges that too).
        self.served = served
        self.champion: Learner | None = None

    def held_out(self, id: str) -> bool:
        """Whether sample ``id`` is kept out of training for the gate."""
        return self.holdout > 0 and is_holdout(id, self.holdout)

    def split(self, data: Labeled) -> tuple[Labeled, Labeled]:
        """(train, held out) parts of ``data``."""
        mask = np.fromiter((self.held_out(id) for id in data.ids), dtype=bool, count=len(data))
        return data.take(~mask), data.take(mask)

    def candidate(self) -> Learner:
        """A new learner continuing from the champion (or fresh before the first promotion)."""
        learner = self.build()
        if self.champion is not None:
            learner.restore(self.champion.checkpoint())
        return learner

    def round(
        self,
        new: Labeled,
        *,
        replay: ReplaySource | None,
        recent: Labeled,
        remembered: Labeled,
        stop: Callable[[], bool] | None = None,
    ) -> Round:
        """Train a candidate on ``new`` (held-out rows dropped) with replay; judge it on the held-out sets.

        ``recent`` is in label order (oldest first); ``remembered`` is the memory's held-out slice,
        the rows of ``new`` in it are left out.
        """
        train, _ = self.split(new)
        # What the model must not forget is what it knew before this round: the memory's held-out
        # slice without this round's samples, which may be mislabeled (and then the recent set is too).
        arriving = set(new.ids)
        remembered = remembered.take(
            np.fromiter((id not in arriving for id in remembered.ids), bool, len(remembered))
        )
        candidate = self.candidate()
        report = candidate.update(train, replay, stop=stop)
        verdict = self.gate.judge(
            candidate, self.champion, recent=recent, remembered=remembered, newer=train, served=self.served
        )
        log.info(
            "update round: %d samples, %d replayed, %d steps in %.1fs; %s (%s)",
            report.samples,
            report.replayed,
            report.steps,
            report.seconds,
            "promote" if verdict.promote else "reject",
            verdict.reason,
        )
        return Round(candidate=candidate, report=report, verdict=verdict)

    def promote(self, learner: Learner) -> None:
        """Make ``learner`` the champion (after the caller has recorded it)."""
        self.champion = learner
