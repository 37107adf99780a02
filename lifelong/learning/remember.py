"""Keeps the rehearsal memory following the sample store's label events, exactly once.

The store records every label it gives in an outbox (``label_events``) in the
same transaction as the event that gave it. The memory consumes that outbox by
sequence number and records the last one in its snapshots, so after any crash
it resumes where its snapshot stops and the store still has everything after.
Consumed events are trimmed only once a snapshot holds them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lifelong.errors import StateMismatch
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore

log = logging.getLogger(__name__)

CURSOR = "label_seq"


class MemoryFeed:
    """Moves newly labeled samples from the store into the memory; snapshots it on a cadence.

    Example::

        feed = MemoryFeed(store=store, memory=memory, snapshot_interval_s=60)
        feed.catch_up()          # everything labeled so far
        feed.maybe_snapshot()
    """

    def __init__(
        self,
        *,
        store: SampleStore,
        memory: RehearsalMemory,
        snapshot_interval_s: float = 60.0,
        follow_batch: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        retain_after: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.snapshot_interval_s = snapshot_interval_s
        self.follow_batch = follow_batch
        self.clock = clock
        # Another follower (the update rounds) may still need events the memory has consumed.
        self.retain_after = retain_after
        self._last_snapshot = clock()
        self._dirty = False
        if self.position > store.last_label_event():
            raise StateMismatch(
                f"the rehearsal memory in {memory.directory} has consumed label event {self.position}, "
                f"the sample store only {store.last_label_event()}: they come from different states; "
                f"move {memory.directory} aside to rebuild the memory from the store"
            )

    @property
    def position(self) -> int:
        """The last label event the memory holds."""
        return int(self.memory.offsets.get(CURSOR, 0))

    @property
    def lag(self) -> int:
        """Label events the memory has not consumed yet."""
        return self.store.last_label_event() - self.position

    def step(self, limit: int | None = None) -> int:
        """Consume up to ``limit`` (default ``follow_batch``) label events; return how many."""
        events = self.store.labels_given(self.position, limit or self.follow_batch)
        if not events:
            return 0
        latest = {e.id: e.y for e in events}  # an id labeled twice here keeps its last label
        new_ids, new_y, old_ids, old_y = [], [], [], []
        for id, y in latest.items():
            if id in self.memory:
                old_ids.append(id)
                old_y.append(y)
            else:
                new_ids.append(id)
                new_y.append(y)
        if old_ids:
            self.memory.relabel(old_ids, old_y)
        if new_ids:
            # Inputs are read from the store only for the samples the memory keeps.
            def inputs(positions: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
                return np.stack(self.store.inputs([new_ids[p] for p in positions.tolist()]))

            self.memory.add(new_ids, inputs, np.asarray(new_y))
        self.memory.offsets[CURSOR] = events[-1].seq
        self._dirty = True
        return len(events)

    def catch_up(self) -> int:
        """Consume every pending label event."""
        total = 0
        while handled := self.step():
            total += handled
        return total

    def maybe_snapshot(self, *, force: bool = False) -> bool:
        """Snapshot the memory if the interval has passed (or ``force``) and it changed; trim the outbox."""
        if not self._dirty or (not force and self.clock() - self._last_snapshot < self.snapshot_interval_s):
            return False
        self.memory.snapshot()
        upto = self.position if self.retain_after is None else min(self.position, self.retain_after())
        self.store.trim_label_events(upto)
        self._last_snapshot = self.clock()
        self._dirty = False
        return True
