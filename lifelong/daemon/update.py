"""Update rounds in the daemon: new labels from the store, replay from the memory, versions in the registry.

The labels a round trains on are the store's label events after the last
round's, so every label is trained on once; the label-event range, the Kafka
offset range per partition ingested since the previous version ([first, next))
and the memory snapshot behind a version are recorded in its lineage. The champion
serves from memory while a candidate trains; it changes only after the
registry has made the candidate champion durably, and follows a rollback made
from the command line while the daemon runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.errors import LifelongError, StateError
from lifelong.learners.base import Checkpoint, Labeled, Learner
from lifelong.learners.gate import finite
from lifelong.learners.trainer import Trainer
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore
from lifelong.registry import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)

LINEAGE_CURSOR = "label_events"


@dataclass(frozen=True)
class Outcome:
    """A finished round: the version it produced and why it was or was not promoted."""

    version: ModelVersion
    promoted: bool
    samples: int
    seconds: float
    loss: float


class Updater:
    """Runs update rounds against the registry's champion.

    Example::

        updater = Updater(trainer=trainer, store=store, memory=memory, registry=registry, features=784)
        updater.load_champion()
        if updater.pending() >= 1000:
            outcome = updater.run_round()
    """

    def __init__(
        self,
        *,
        trainer: Trainer,
        store: SampleStore,
        memory: RehearsalMemory,
        registry: ModelRegistry,
        features: int,
        recent: int = 1000,
        max_round_samples: int = 100_000,
        config: dict[str, Any] | None = None,
        before_round: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trainer = trainer
        self.store = store
        self.memory = memory
        self.registry = registry
        self.features = features
        self.recent = recent
        self.max_round_samples = max_round_samples
        self.config = config or {}
        self.before_round = before_round
        self.clock = clock
        self._serving: int | None = None
        versions = registry.versions()
        self._cursor = _trained_upto(versions)
        # Where the newest version's Kafka offset ranges end: the next version's start there.
        self._offsets_seen: dict[str, Any] = versions[-1].lineage.get("offsets", {}) if versions else {}
        if self._cursor > store.last_label_event():
            raise StateError(
                f"the model registry {registry.root} has trained on label event {self._cursor}, the sample "
                f"store holds only {store.last_label_event()}: they come from different states; move "
                f"{registry.root} aside to start the models afresh, or restore the matching store"
            )

    @property
    def serving(self) -> int | None:
        """The version number of the champion in memory (None before the first promotion)."""
        return self._serving

    @property
    def cursor(self) -> int:
        """The last label event an update round has trained on."""
        return self._cursor

    def pending(self) -> int:
        """Label events not trained on yet."""
        return max(0, self.store.last_label_event() - self._cursor)

    def load_champion(self) -> bool:
        """Serve the registry's champion if it is not the one in memory; keep the old one if it fails."""
        champion = self.registry.champion()
        if champion is None or champion.version == self._serving:
            return False
        try:
            loaded = self.registry.load(champion.version)
            learner = self.trainer.build()
            learner.restore(
                Checkpoint(weights=loaded.weights, state=loaded.state, meta=dict(loaded.info.learner))
            )
        except (LifelongError, RuntimeError, KeyError, ValueError) as error:
            log.error(
                "cannot serve model version %d (%s); version %s keeps serving",
                champion.version,
                error,
                self._serving,
            )
            return False
        self.trainer.promote(learner)
        log.info("serving model version %d (was %s)", champion.version, self._serving)
        self._serving = champion.version
        return True

    def run_round(self) -> Outcome | None:
        """Train on the labels since the last round, gate, record the version; None when there are none."""
        started = self.clock()
        self.load_champion()
        champion = self.registry.champion()
        if champion is not None and champion.version != self._serving:
            log.error(
                "the registry's champion %d cannot be served (see above): no update round until it can, "
                "or until `lifelong rollback` names one that loads",
                champion.version,
            )
            return None
        events = self.store.label_events(self._cursor, self.max_round_samples)
        if not events:
            return None
        first, last = events[0][0], events[-1][0]
        latest: dict[str, tuple[int, bytes, str]] = {}
        for _, id, y, x, dtype in events:  # an id labeled twice in the range keeps its last label
            latest[id] = (y, x, dtype)
        new = Labeled(
            ids=list(latest),
            x=_rows([np.frombuffer(x, dtype=np.dtype(d)) for _, x, d in latest.values()], self.features),
            y=np.asarray([y for y, _, _ in latest.values()], dtype=np.int64),
        )
        if not len(self.trainer.split(new)[0]):  # every label in the range is held out
            self._cursor = last
            return None
        if self.before_round is not None:
            self.before_round()  # the memory catches up and snapshots: the round's lineage names it
        recent = self._recent()
        held = self.memory.select(self.trainer.held_out)
        remembered = Labeled(ids=held.ids, x=held.x, y=held.y)
        parent = self._serving
        result = self.trainer.round(new, replay=self.memory, recent=recent, remembered=remembered)
        checkpoint = result.candidate.checkpoint()
        version = self.registry.add(
            weights=checkpoint.weights,
            state=checkpoint.state,
            promote=result.verdict.promote,
            scores=finite(result.verdict.scores) | {"training_loss": result.report.loss}
            if np.isfinite(result.report.loss)
            else finite(result.verdict.scores),
            parent=parent,
            lineage={
                LINEAGE_CURSOR: [first, last],
                "samples": result.report.samples,
                "replayed": result.report.replayed,
                "offsets": self._offset_ranges(),
                "memory_snapshot": _snapshot_name(self.memory),
            },
            config=self.config,
            learner=checkpoint.meta,
            reason=result.verdict.reason,
            expect_champion=parent,
        )
        self._offsets_seen = version.lineage["offsets"]
        if not version.lineage.get("superseded"):
            self._cursor = last
        promoted = version.decision == "promoted"
        if promoted:
            self.trainer.promote(result.candidate)
            self._serving = version.version
        return Outcome(
            version=version,
            promoted=promoted,
            samples=result.report.samples,
            seconds=self.clock() - started,
            loss=result.report.loss,
        )

    def _offset_ranges(self) -> dict[str, list[int]]:
        """Per partition, [first, next) offsets ingested since the previous version was recorded."""
        ranges = {}
        for (topic, partition), end in sorted(self.store.positions().items()):
            key = f"{topic}:{partition}"
            previous = self._offsets_seen.get(key, [0, 0])
            ranges[key] = [int(previous[1]) if isinstance(previous, list) else 0, end]
        return ranges

    def champion(self) -> Learner | None:
        """The learner serving now."""
        return self.trainer.champion

    def _recent(self) -> Labeled:
        fraction = max(self.trainer.holdout, 1e-3)
        rows = self.store.recent_labeled(
            self.trainer.held_out, limit=self.recent, scan=int(self.recent / fraction * 2)
        )
        return Labeled(
            ids=[id for id, _, _ in rows],
            x=_rows([x for _, x, _ in rows], self.features),
            y=np.asarray([y for _, _, y in rows], dtype=np.int64),
        )


def _trained_upto(versions: list[ModelVersion]) -> int:
    """The last label event any version trained on (one a rollback overtook trains again)."""
    return max(
        (int(v.lineage.get(LINEAGE_CURSOR, [0, 0])[1]) for v in versions if not v.lineage.get("superseded")),
        default=0,
    )


def _rows(parts: list[np.ndarray[Any, Any]], features: int) -> np.ndarray[Any, Any]:
    if not parts:
        return np.zeros((0, features), dtype=np.float32)
    dtypes = {part.dtype for part in parts}
    # Samples may mix float32 and uint8 encodings: uint8 intensities are read as [0, 1].
    if len(dtypes) > 1:
        parts = [p.astype(np.float32) / 255.0 if p.dtype == np.uint8 else p.astype(np.float32) for p in parts]
    return np.stack(parts)


def _snapshot_name(memory: RehearsalMemory) -> str | None:
    current = memory.current_snapshot()
    return None if current is None else current.name
