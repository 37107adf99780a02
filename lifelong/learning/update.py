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
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.errors import LifelongError, RoundAbandoned, RoundDeferred, StateError, StateMismatch
from lifelong.labeled import Labeled
from lifelong.learners.base import Learner
from lifelong.learners.gate import Verdict, contradicted, finite
from lifelong.learners.trainer import Trainer
from lifelong.learning.trust import LabelTrust
from lifelong.memory.reads import rows_matrix, stack_rows
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore
from lifelong.registry import ModelRegistry, ModelVersion, Status
from lifelong.serving import load_version

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
    parent: int | None = None

    @property
    def forgetting(self) -> float | None:
        """How much worse than its champion the candidate did on the memory's held-out samples."""
        scores = self.version.scores
        if "champion_memory" not in scores or "candidate_memory" not in scores:
            return None
        return float(scores["champion_memory"]) - float(scores["candidate_memory"])


@dataclass(frozen=True)
class Fallback:
    """The champion's files were damaged: ``target``, the newest intact version, serves instead."""

    damaged: int | None  # None when even the champion's description was unreadable
    target: ModelVersion
    reason: str


@dataclass(frozen=True)
class _RoundData:
    new: Labeled
    recent: Labeled
    remembered: Labeled
    first: int
    last: int
    snapshot: str | None
    offsets: dict[str, list[int]]


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
        max_round_labels: int = 100_000,
        config: dict[str, Any] | None = None,
        before_round: Callable[[], None] | None = None,
        trust: LabelTrust | None = None,
        lock: AbstractContextManager[Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trainer = trainer
        self.store = store
        self.memory = memory
        self.registry = registry
        self.features = features
        self.recent = recent
        self.max_round_labels = max_round_labels
        self.config = config or {}
        self.before_round = before_round
        self.trust = trust
        # The last label event the served vote has scored, once it has scored what was predicted (the
        # online members set it): a round trains only on labels every member was judged on first (test,
        # then train), so the vote never keeps trusting a network for what it did before labels it
        # then trained on unjudged.
        self.scored: Callable[[Callable[[], bool] | None], int] | None = None
        # The served vote as the round is recorded (each member's weight; the online members set it).
        self.vote: Callable[[], dict[str, Any]] | None = None
        # Held while the round reads the store and the memory, which the consumer thread writes.
        self.lock = lock if lock is not None else threading.RLock()
        self._swap = threading.RLock()  # the served champion changes under it (rounds, rollbacks)
        self.clock = clock
        self._serving: int | None = None
        self._predecessor: tuple[int, Learner] | None = None
        self._fallbacks: list[Fallback] = []
        versions = registry.versions()
        self._cursor = _trained_upto(versions)
        # Where the newest version's Kafka offset ranges end: the next version's start there.
        self._offsets_seen: dict[str, Any] = versions[-1].lineage.get("offsets", {}) if versions else {}
        if self._cursor > store.last_label_event():
            raise StateMismatch(
                f"the model registry {registry.root} has trained on label event {self._cursor}, the sample "
                f"store holds only {store.last_label_event()}: they come from different states; move "
                f"{registry.root} aside to start the models afresh, or restore the matching store"
            )

    @property
    def serving(self) -> int | None:
        """The version number of the champion in memory (None before the first promotion)."""
        return self._serving

    @property
    def predecessor(self) -> tuple[int, Learner] | None:
        """The champion the serving one replaced in this process, while it is kept for comparison."""
        return self._predecessor

    def forget_predecessor(self, version: int | None = None) -> None:
        """Release the predecessor (its comparison is over); only ``version`` if named."""
        with self._swap:
            if version is None or (self._predecessor is not None and self._predecessor[0] == version):
                self._predecessor = None

    @property
    def cursor(self) -> int:
        """The last label event an update round has trained on."""
        return self._cursor

    def pending(self) -> int:
        """Label events not trained on yet."""
        return max(0, self.store.last_label_event() - self._cursor)

    def load_champion(self) -> bool:
        """Serve the registry's champion if it is not the one in memory; keep the old one if it fails."""
        with self._swap:
            return self._load_champion()

    def _load_champion(self) -> bool:
        try:
            champion = self.registry.champion()
        except StateError as error:  # the champion's meta.json is damaged
            return self._fall_back(None, error)
        if champion is None or champion.version == self._serving:
            return False
        try:
            learner = load_version(self.registry, champion.version, self.trainer.build)
        except (LifelongError, OSError, RuntimeError, KeyError, ValueError) as error:
            return self._fall_back(champion.version, error)
        self._serve(champion.version, learner)
        return True

    def _serve(self, version: int, learner: Learner) -> None:
        self.trainer.promote(learner)
        self._predecessor = None
        log.info("serving model version %d (was %s)", version, self._serving)
        self._serving = version

    def _fall_back(self, damaged: int | None, error: BaseException) -> bool:
        """Roll the registry back to the newest promoted version that loads; whether one did.

        A damaged champion is marked rolled back (trigger ``corrupt``), so it is never served
        again on its own; each candidate is verified and loaded before it serves.
        """
        reason = f"model version {damaged if damaged is not None else '(champion)'} is damaged: {error}"
        log.error("cannot serve the champion: %s; falling back to the newest intact version", reason)
        candidates = [
            v.version
            for v in reversed(self.registry.versions())
            if v.status == Status.PROMOTED and v.version != damaged
        ]
        for number in candidates:
            try:
                learner = load_version(self.registry, number, self.trainer.build)
                target = self.registry.rollback(number, reason=reason, trigger="corrupt")
            except (LifelongError, OSError, RuntimeError, KeyError, ValueError) as failed:
                log.error("model version %d cannot serve either: %s", number, failed)
                continue
            log.warning("rolled back to model version %d: %s", number, reason)
            self._fallbacks.append(Fallback(damaged=damaged, target=target, reason=reason))
            if number == self._serving:
                return False
            self._serve(number, learner)
            return True
        log.error(
            "no intact model version to fall back to; version %s keeps serving. Name one with "
            "`lifelong rollback <version>`, or move the registry aside to train afresh",
            self._serving,
        )
        return False

    def take_fallbacks(self) -> list[Fallback]:
        """The fallbacks from damaged champions since the last call (for metrics and model events)."""
        with self._swap:
            taken, self._fallbacks = self._fallbacks, []
        return taken

    def run_round(self, *, stop: Callable[[], bool] | None = None) -> Outcome | None:
        """Train on the labels since the last round, gate, record the version; None when there are none.

        ``stop`` is asked between training steps: when it answers True the round is abandoned
        (:class:`~lifelong.errors.RoundAbandoned`), nothing is recorded and its labels wait.
        """
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
        if self.trust is not None:  # relabels the champion or the memory now corroborate join this round
            self.trust.review(self.trainer.champion, lock=self.lock)
        # Waits for the vote (not under the lock), as long as the round is not abandoned meanwhile.
        upto = self.scored(stop) if self.scored is not None else None
        if stop is not None and stop():
            raise RoundAbandoned("update round abandoned while waiting for the online members")
        with self.lock:
            data = self._gather(upto)
        if data is None:
            return None
        parent = self._serving
        self._retire_contradicted(data)
        result = self.trainer.round(
            data.new,
            replay=_Locked(self.memory, self.lock),
            recent=data.recent,
            remembered=data.remembered,
            stop=stop,
        )
        verdict = self._unjudged(result.verdict, len(data.new))
        checkpoint = result.candidate.checkpoint()
        scores = finite(verdict.scores)
        if np.isfinite(result.report.loss):
            scores["training_loss"] = result.report.loss
        # Recording and serving are one step for rollbacks, which take the same lock: a rollback
        # lands before (and the registry then keeps the candidate from champion) or after.
        with self._swap:
            version = self.registry.add(
                weights=checkpoint.weights,
                state=checkpoint.state,
                promote=verdict.promote,
                scores=scores,
                parent=parent,
                lineage={
                    LINEAGE_CURSOR: [data.first, data.last],
                    "samples": result.report.samples,
                    "replayed": result.report.replayed,
                    "offsets": data.offsets,
                    "memory_snapshot": data.snapshot,
                }
                | ({"vote": self.vote()} if self.vote is not None else {}),
                config=self.config,
                learner=checkpoint.meta,
                reason=verdict.reason,
                expect_champion=parent,
            )
            self._offsets_seen = version.lineage["offsets"]
            if not version.lineage.get("superseded"):
                self._cursor = data.last
            promoted = version.decision == "promoted"
            if promoted:
                previous = self.trainer.champion
                self._predecessor = (parent, previous) if parent is not None and previous else None
                self.trainer.promote(result.candidate)
                self._serving = version.version
        return Outcome(
            version=version,
            promoted=promoted,
            samples=result.report.samples,
            seconds=self.clock() - started,
            loss=result.report.loss,
            parent=parent,
        )

    def _unjudged(self, verdict: Verdict, samples: int) -> Verdict:
        """What a round the gate could not judge becomes: deferred, or promoted while the model is young.

        Young: the round brings at least as many labels as the champion has trained on, so it
        (at least) doubles what the model learned from; its live probation checks it after.
        A round that reached ``max_round_labels`` is recorded as it is (rejected).
        """
        if verdict.judged:
            return verdict
        if not verdict.change_pending and samples >= self._cursor:
            reason = f"{verdict.reason}; promoted while young: {samples} new labels, {self._cursor} before"
            return Verdict(True, verdict.scores, reason)
        if samples < self.max_round_labels:  # more labels and held-out samples come by the next round
            raise RoundDeferred(f"update round deferred: {verdict.reason}; its labels wait")
        return verdict

    def rollback(self, version: int | None, *, reason: str, trigger: str) -> ModelVersion:
        """Roll the registry back (to ``version`` or the previous champion) and serve the result."""
        with self._swap:
            target = self.registry.rollback(version, reason=reason, trigger=trigger)
            self._load_champion()
            return target

    def state(self) -> tuple[int | None, tuple[int, Learner] | None]:
        """The serving version and the predecessor kept beside it, read together."""
        with self._swap:
            return self._serving, self._predecessor

    def _gather(self, upto: int | None) -> _RoundData | None:
        """What a round reads from the store (label events up to ``upto``) and the memory, under the lock."""
        events = self.store.label_events(self._cursor, self.max_round_labels)
        if upto is not None:
            scored = [e for e in events if e.seq <= upto]
            if events and not scored:
                log.info(
                    "no update round: the online members have not scored the %d labels after event %d yet "
                    "(they stalled; see lifelong_heads_behind); the labels wait for the next round",
                    len(events),
                    upto,
                )
            events = scored
        if not events:
            return None
        first, last = events[0].seq, events[-1].seq
        latest = {e.id: e for e in events}  # an id labeled twice in the range keeps its last label
        rows = latest.values()
        new = Labeled(
            ids=list(latest),
            x=rows_matrix([e.x for e in rows], [e.dtype for e in rows], self.features),
            y=np.asarray([e.y for e in rows], dtype=np.int64),
        )
        if not len(self.trainer.split(new)[0]):  # every label in the range is held out
            self._cursor = last
            return None
        if self.before_round is not None:
            self.before_round()  # the memory catches up and snapshots: the round's lineage names it
        held = self.memory.select(self.trainer.held_out)
        return _RoundData(
            new=new,
            recent=self._recent(),
            remembered=held,
            first=first,
            last=last,
            snapshot=_snapshot_name(self.memory),
            offsets=self._offset_ranges(),
        )

    def _retire_contradicted(self, data: _RoundData, *, most: int = 50_000) -> None:
        """After a change the gate adopts, retire the memory samples new labels contradict.

        Replay then teaches the current concept. A change still to be confirmed retires nothing.

        Checked on up to ``most`` samples drawn from the memory per round (all of a memory that size).
        """
        champion = self.trainer.champion
        if champion is None or not self.memory.size:
            return
        current = self.trainer.gate.adopting(champion, data.recent)
        if current is None:
            return
        with self.lock:
            drawn = self.memory.sample(min(self.memory.size, most))
        held = Labeled(ids=list(drawn.ids), x=drawn.x, y=np.asarray(drawn.y))
        marks = contradicted(held, [current, data.new])
        stale = list(dict.fromkeys(id for id, c in zip(held.ids, marks, strict=True) if c))
        if stale:
            with self.lock:
                retired = self.memory.forget(stale)
            log.info(
                "the champion's errors rose %d held-out samples ago: %d memory samples the new labels "
                "contradict are retired",
                len(current),
                len(retired),
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
        rows.reverse()  # the store gives the newest first; the gate reads them in label order
        return Labeled(
            ids=[id for id, _, _ in rows],
            x=stack_rows([x for _, x, _ in rows], self.features),
            y=np.asarray([y for _, _, y in rows], dtype=np.int64),
        )


class _Locked:
    """The memory as a replay source whose draws take the state lock (the consumer adds beside them)."""

    def __init__(self, memory: RehearsalMemory, lock: AbstractContextManager[Any]) -> None:
        self.memory = memory
        self.lock = lock

    def sample(self, n: int, *, balanced: bool = False) -> Any:
        with self.lock:
            return self.memory.sample(n, balanced=balanced)


def _trained_upto(versions: list[ModelVersion]) -> int:
    """The last label event any version trained on (one a rollback overtook trains again)."""
    return max(
        (int(v.lineage.get(LINEAGE_CURSOR, [0, 0])[1]) for v in versions if not v.lineage.get("superseded")),
        default=0,
    )


def _snapshot_name(memory: RehearsalMemory) -> str | None:
    current = memory.current_snapshot()
    return None if current is None else current.name
