"""Label trust: relabels the store held back are released once corroborated, dropped once stale.

The store holds every feedback label that would change a label already given
(:mod:`lifelong.memory.held`). Before each update round the daemon reviews them:

- a held label the serving model predicts for its sample is released (a correction
  the model already believes: the old label was the mistake);
- so is one most of the sample's nearest neighbours in the rehearsal memory carry
  (the world around it says so: after a genuine concept change, the new samples'
  labels corroborate relabels of old ones);
- one that waited ``hold_s`` (stream time) without either is dropped; the label in
  place stays.

Poisoned feedback (one class relabeled as another, in bulk) contradicts both the
model and the neighbours, so it waits and is dropped without ever being trained
on, replayed or used to judge a candidate. A genuine change reaches the model
through new samples first; relabels of old samples follow once the model agrees.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.learners.base import Learner
from lifelong.memory.reads import stack_rows
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Review:
    """What one review did."""

    released: int = 0
    dropped: int = 0
    waiting: int = 0


class LabelTrust:
    """Reviews the store's held relabels against the champion and the memory's neighbours.

    Example::

        trust = LabelTrust(store=store, memory=memory, features=64, hold_s=86400)
        review = trust.review(champion)      # Review(released=3, dropped=0, waiting=1997)
    """

    def __init__(
        self,
        *,
        store: SampleStore,
        memory: RehearsalMemory | None,
        features: int,
        hold_s: float = 7 * 86400.0,
        neighbours: int = 5,
        limit: int = 20_000,
    ) -> None:
        self.store = store
        self.memory = memory
        self.features = features
        self.hold_s = hold_s
        self.neighbours = neighbours
        self.limit = limit  # the oldest this many are reviewed per round

    def review(self, champion: Learner | None, *, lock: AbstractContextManager[Any]) -> Review:
        """Release the corroborated held labels, drop the stale ones; the caller holds no lock."""
        with lock:
            held = self.store.held_labels(self.limit)
            if not held:
                return Review()
            cutoff = self.store.stream_time_ms() - int(self.hold_s * 1000)
            stale = [h.id for h in held if h.timestamp_ms < cutoff]
            fresh = [h for h in held if h.timestamp_ms >= cutoff]
            found = self.store.inputs_found([h.id for h in fresh])
        # A relabel of an early label waits for its sample (or for hold_s) like the rest.
        fresh = [h for h, x in zip(fresh, found, strict=True) if x is not None]
        rows = [x for x in found if x is not None]
        agree = np.zeros(len(fresh), dtype=bool)
        if fresh:
            x = stack_rows(rows, self.features)
            wanted = np.array([h.y for h in fresh])
            if champion is not None:
                agree |= champion.predict(x) == wanted
            if self.memory is not None:
                with lock:
                    agree |= self._neighbours_agree(x, wanted, [h.id for h in fresh])
        released = [h.id for h, ok in zip(fresh, agree, strict=True) if ok]
        with lock:
            if released:
                self.store.release_labels(released)
            if stale:
                self.store.drop_held(stale)
            waiting = self.store.held_count()
        if released or stale:
            log.info(
                "held relabels: %d released (the model or the neighbours agree), %d dropped after "
                "waiting %.0fs uncorroborated, %d waiting",
                len(released),
                len(stale),
                self.hold_s,
                waiting,
            )
        pairs = Counter((h.was, h.y) for h, ok in zip(fresh, agree, strict=True) if not ok)
        if pairs:
            (was, y), count = pairs.most_common(1)[0]
            log.warning(
                "%d relabels wait uncorroborated; the most common turns class %d into %d (%d): "
                "poisoned or buggy feedback looks like this, so they are not trained on",
                sum(pairs.values()),
                was,
                y,
                count,
            )
        return Review(released=len(released), dropped=len(stale), waiting=waiting)

    def _neighbours_agree(
        self, x: np.ndarray[Any, Any], wanted: np.ndarray[Any, Any], ids: list[str]
    ) -> np.ndarray[Any, Any]:
        """Whether most of each row's nearest memory samples (itself excluded) carry the wanted label."""
        memory = self.memory
        if memory is None or memory.size <= self.neighbours:
            return np.zeros(len(x), dtype=bool)
        agree = np.zeros(len(x), dtype=bool)
        for row in range(len(x)):
            near = memory.neighbors(x[row : row + 1], k=self.neighbours + 1)
            labels = [y for id, y in zip(near.ids, near.y, strict=True) if id != ids[row]][: self.neighbours]
            agree[row] = bool(labels) and sum(int(y) == wanted[row] for y in labels) * 2 > len(labels)
        return agree
