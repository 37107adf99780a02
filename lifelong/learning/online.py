"""The online members: heads kept level with the store's label events, and the weights that serve them.

A thread of their own follows the sample store's label events as the memory
does: woken (:meth:`OnlineMembers.notify`) when ingestion is idle, and at most
every ``follow_interval_s`` while it is busy, it hands the events stored since
its last pass to the heads, so a label counts in the predictions made from then
on. (The heads learn the gate's held-out samples too: the gate judges network
versions, alone and in the vote beside the same heads, never the heads on their
own, and a head that forgets is seen failing the held-out samples it once
learned as surely as those it never saw.) It takes only
events whose samples have been predicted already (:meth:`OnlineMembers.observed`):
test, then train. Ingestion never waits for it, and it runs at a lower CPU
priority (nice 19, on Linux): under a burst the heads fall behind (the
``lifelong_heads_behind`` gauge) and learn the backlog in large batches when
the CPU is free. Before they learn them,
every member (each head, and the network serving) predicts those samples and
the ensemble's weights are scored on them: test, then train, at the moment the
label arrives. Scoring the predictions made when the samples arrived would
judge each member as it was a label delay ago (after a change, the head that
has already adapted would go unrecognised for that long). For the same reason
what waits is taken in a few batches, each scored before it is learned (a head
that restarts within a backlog is seen right on the rest of it), and the
updater's rounds train only on labels the vote has scored, so the network is
judged on every label before it trains on it. The held-out samples
among the events are kept per class, and every member is also scored on those of
the classes absent lately and on the past inputs of the classes present that newer
labels do not contradict (:class:`~lifelong.learners.ensemble.Probes`), so a member
that forgot them is not trusted for being right on the newest classes or inputs.
While the members are young they learn in small batches, each scored first. The heads' state and the
Hedge weights are written to ``state/heads/heads.safetensors`` (atomically,
with the last label event learned) every ``save_every`` labels and at shutdown;
a restart replays the events after that one, so the heads continue exactly. The
store keeps the label events after the file's (it trims only what every
follower has saved). A damaged or mismatched file is set aside and the heads
are rebuilt from the label events the store holds (they are a function of them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from lifelong.files import write_atomically
from lifelong.learners.base import Learner, class_probabilities
from lifelong.learners.ensemble import Hedge, Probes
from lifelong.learners.heads import WARMUP, Heads, Predictor
from lifelong.memory.reads import rows_matrix
from lifelong.memory.samples import SampleStore

log = logging.getLogger(__name__)

FORMAT = 3
FILE = "heads.safetensors"
NICE = 19  # the follower thread's niceness: under load it gets what ingestion leaves
STEPS = 4  # the labels waiting are learned in at least this many batches, each scored first


class OnlineMembers:
    """Online heads learning every label as it is stored, and the ensemble's weights.

    Example::

        online = OnlineMembers(heads=Heads(features=10, classes=2), hedge=Hedge(), store=store,
                               lock=lock, held_out=trainer.held_out, directory=state / "heads")
        online.load()
        online.start()                    # the follower thread
        online.notify()                   # after each stored batch with labels
        online.predict(x)                 # {"lda": ..., "lda_100": ...}
        online.close()                    # stops the thread, saves
    """

    def __init__(
        self,
        *,
        heads: Heads,
        hedge: Hedge,
        store: SampleStore,
        lock: AbstractContextManager[Any],
        held_out: Callable[[str], bool],
        directory: Path,
        network: Callable[[], tuple[Learner | None, int]] = lambda: (None, 0),
        on_learned: Callable[[int], None] | None = None,
        batch: int = 4096,
        score_most: int = 1024,
        save_every: int = 20_000,
    ) -> None:
        self.heads = heads
        self.hedge = hedge
        self.store = store
        self.lock = lock
        self.held_out = held_out
        self.directory = Path(directory)
        # The network serving and the last label event it trained on (it is scored on later ones).
        self.network = network
        self.on_learned = on_learned  # told how many label events each pass took in
        self.batch = batch
        self.score_most = score_most  # members scored on at most this many of each batch (the newest)
        self.save_every = save_every
        # Held-out samples of each class: the members are also scored on what the recent labels do not show.
        self.probes = Probes(classes=heads.classes, features=heads.features, window=self.hedge.window)
        self.cursor = 0  # the last label event learned
        self.saved = 0  # ... as of the file on disk (the store keeps the events after it)
        self._unsaved = 0
        self._guard = threading.Lock()  # the heads and weights: learning (follower) against saving, voting
        self._predictor: Predictor = heads.predictor()  # what serving predicts with: replaced after each pass
        self._observed = 0  # the last label event whose sample has been predicted
        self._progress = threading.Condition()  # notified as the cursor moves
        self._wake = threading.Event()
        self._wake.set()  # the first pass catches up with what was stored before the start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = -float("inf")

    def start(self) -> None:
        """Follow the store's label events on a thread of its own until :meth:`close`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="lifelong-heads", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        """New label events are stored: the follower takes them in."""
        self._wake.set()

    def observed(self, upto: int) -> None:
        """The samples of label events up to ``upto`` have been predicted: the heads may learn them."""
        self._observed = max(self._observed, upto)

    def scored_upto(self, stop: Callable[[], bool] | None = None, *, stall: float = 30.0) -> int:
        """The last label event the vote has scored, once it has scored those observed so far.

        What an update round may train on (test, then train). Waits as long as the follower
        keeps learning (a wide head's backlog may take minutes on a small machine), but no
        more than ``stall`` seconds without it taking in a batch, not at all when it is not
        running, and no longer once ``stop`` (asked every half second) answers True: an
        abandoned round does not wait for the vote.
        """
        target = self._observed
        self.notify()
        with self._progress:
            while self.cursor < target and self._thread is not None and not self._stop.is_set():
                before = self.cursor
                deadline = time.monotonic() + stall
                while not self._moved(before):
                    left = deadline - time.monotonic()
                    if left <= 0 or (stop is not None and stop()):
                        return self.cursor
                    self._progress.wait(min(left, 0.5))
            return self.cursor

    def _moved(self, since: int) -> bool:
        return self.cursor != since or self._stop.is_set()

    def close(self) -> None:
        """Stop following (after the pass under way) and save."""
        self._stop.set()
        self._wake.set()
        with self._progress:  # a round waiting for the vote goes on
            self._progress.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.save()

    def behind(self) -> int:
        """Label events stored that the heads have not taken in yet."""
        with self.lock:
            return max(0, self.store.last_label_event() - self.cursor)

    def _follow(self) -> None:
        # Learn with the CPU ingestion leaves: the threads torch starts from this one inherit it.
        # (Not Linux, or not allowed: the same priority as the rest.)
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                network, trained_upto = self.network()
                self.catch_up(network, network_trained_upto=trained_upto)
            except Exception:  # the heads fall behind; ingestion and serving go on
                if time.monotonic() - self._last_error_log >= 60.0:
                    self._last_error_log = time.monotonic()
                    log.exception("the online heads could not learn the newest labels (retrying)")

    @property
    def path(self) -> Path:
        return self.directory / FILE

    def catch_up(self, network: Learner | None = None, *, network_trained_upto: int = 0) -> int:
        """Score the members on the label events observed since the last call, then learn them.

        ``network``: the network serving, scored on the events after ``network_trained_upto``
        (the last one it trained on). Returns how many events were read.
        """
        read = 0
        # Each batch is scored before it is learned, so the vote sees a member adapt only from the
        # next batch on: what waits is taken in at least STEPS batches (of WARMUP or more), and while
        # the members are young in batches no larger than what they learned (32, 32, 64, 128, ...),
        # so the vote learns whom to trust from the first labels on.
        step = min(self.batch, max(WARMUP, -(-(self._observed - self.cursor) // STEPS)))
        while self.cursor < self._observed and not self._stop.is_set():  # closing: what is learned is saved
            with self.lock:
                size = min(step, max(WARMUP, self.heads.learned), self._observed - self.cursor)
                events = self.store.label_events(self.cursor, size)
            events = [e for e in events if e.seq <= self._observed]
            if not events:
                break
            x = rows_matrix([e.x for e in events], [e.dtype for e in events], self.heads.features)
            y = np.asarray([e.y for e in events], dtype=np.int64)
            recent = slice(-self.score_most, None)  # the weights need recent evidence only
            fresh = [e.seq > network_trained_upto for e in events[recent]]
            self._score(network, x[recent], y[recent], fresh)
            held = np.fromiter((self.held_out(e.id) for e in events), bool, len(events))
            with self._guard:  # saving reads them
                self.probes.observe(x, y, held=held)
            probe = self.probes.probes()  # only this thread changes them; serving does not wait on it
            if probe is not None:
                self._score_probes(network, *probe, scored=len(y[recent]))
            with self._guard:
                self.heads.learn(x, y)
            # Serving takes the new predictor before the events count as learned: whoever waits for
            # the heads to catch up (behind() == 0) then gets predictions that know these labels.
            self._predictor = self.heads.predictor()
            with self._progress:
                self.cursor = events[-1].seq
                self._progress.notify_all()
            read += len(events)
            self._unsaved += len(events)
            if self.on_learned is not None:
                self.on_learned(len(events))
        if self._unsaved >= self.save_every:
            self.save()
        return read

    def _score(
        self, network: Learner | None, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], fresh: list[bool]
    ) -> None:
        predicted = self.predict(x)
        if network is not None and any(fresh):
            keep = np.asarray(fresh)
            predicted["network"] = np.where(keep, network.predict(x), -1)
        with self._guard:
            self.hedge.score_predictions(predicted, y)

    def _score_probes(
        self,
        network: Learner | None,
        x: np.ndarray[Any, Any],
        y: np.ndarray[Any, Any],
        weights: np.ndarray[Any, Any],
        *,
        scored: int,
    ) -> None:
        """Score the members on held-out samples (the network never trains on them) weighing ``weights``."""
        predicted = self.predict(x)
        if network is not None:
            predicted["network"] = network.predict(x)
        with self._guard:
            self.hedge.score_predictions(predicted, y, weights=weights * scored)

    def predict(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each member's prediction of ``x`` (before the first labels, the prior's: class 0)."""
        return self._predictor.predict(x) if len(x) else {}

    def probabilities(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each member's class probabilities of ``x`` (rows x classes), what :meth:`serve` takes."""
        return self._predictor.probabilities(x) if len(x) else {}

    def serve(self, members: dict[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
        """The members' weighted vote of their probabilities or labels (see :meth:`Hedge.combine`)."""
        with self._guard:
            return self.hedge.combine(members, classes=self.heads.classes)

    def served_with(self, network: Learner, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """What would be served for ``x`` with ``network`` in the vote (as the champion is)."""
        beliefs = self.probabilities(x)
        beliefs["network"] = class_probabilities(network, x)
        return self.serve(beliefs)

    def weights(self, members: list[str]) -> dict[str, float]:
        """The members' weights in the vote now."""
        with self._guard:
            return self.hedge.weights(members)

    def vote(self) -> dict[str, Any]:
        """The vote now, for a version's lineage: each member's weight and the last label event learned."""
        return {"weights": self.weights([*self.heads.names, "network"]), "learned_upto": self.cursor}

    def save(self) -> None:
        """Write the heads and weights with the last label event learned (atomically)."""
        with self._guard:
            tensors, meta = self.heads.checkpoint()
            arrays, probes = self.probes.state()
            tensors |= {name: torch.from_numpy(array.copy()) for name, array in arrays.items()}
            cursor = self.cursor
            header = {
                "format": FORMAT,
                "cursor": cursor,
                "heads": meta,
                "hedge": self.hedge.state(),
                "probes": probes,
            }
            data = save(tensors, metadata={"lifelong": json.dumps(header)})
            self._unsaved = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, data)
        self.saved = cursor

    def load(self) -> None:
        """Continue from the saved file; rebuild from the store's label events when it cannot be used."""
        if not self.path.exists():
            return
        try:
            with safe_open(str(self.path), framework="pt") as file:
                saved = json.loads((file.metadata() or {})["lifelong"])
                tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
            if int(saved.get("format", 0)) != FORMAT:
                raise ValueError(f"format {saved.get('format')!r}, this version reads {FORMAT}")
            if int(saved["cursor"]) > self.store.last_label_event():
                raise ValueError(
                    f"it learned up to label event {saved['cursor']}, the sample store holds only "
                    f"{self.store.last_label_event()} (from another state directory?)"
                )
            heads, hedge = self.heads.fresh(), self.hedge.fresh()  # nothing half-restored on failure
            probes = Probes(classes=heads.classes, features=heads.features, window=self.hedge.window)
            heads.restore(tensors, saved["heads"])
            hedge.restore(saved["hedge"])
            probes.restore(
                {k: v.numpy() for k, v in tensors.items() if k.startswith("probes.")}, saved["probes"]
            )
        except Exception as error:  # safetensors raises its own error type on a damaged header
            aside = self.path.with_suffix(".unusable")
            self.path.replace(aside)
            log.warning(
                "the online heads' file %s cannot be used (%s); moved to %s, rebuilding the heads from "
                "the label events the sample store holds",
                self.path,
                error,
                aside,
            )
            return
        self.heads, self.hedge, self.probes = heads, hedge, probes
        self.cursor = self.saved = int(saved["cursor"])
        self._predictor = heads.predictor()
        log.info("online heads restored at label event %d", self.cursor)
