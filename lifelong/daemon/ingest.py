"""Ingestion: decode each polled record, dead-letter the rejects, store the rest with their offsets."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from lifelong.connectors.base import Batch, DeadLetter, DeadLetterSink, Source, TopicPartition
from lifelong.events import Decoded, TopicDecoder
from lifelong.memory.samples import Applied, IngestBatch, SampleStore, Stored

log = logging.getLogger(__name__)


class Handoff:
    """Hands each stored batch to ``observe`` on a thread of its own, in order: the consumer goes on.

    What the watchers do with a batch (predict it with every member, publish the served
    label, score, feed the drift signals) then overlaps with decoding and storing the
    next. At most ``most`` batches wait: beyond that the consumer thread waits for the
    watcher (nothing is dropped, ingestion slows to what can be predicted). An exception
    from one batch is logged and the next batch is watched as usual. The thread starts
    with the first batch.

    Example::

        handoff = Handoff(watch.observe)
        ingestor.on_stored = handoff     # called on the consumer thread, returns at once
        handoff.drain()                  # every batch handed over has been observed
        handoff.close()                  # drains, then stops the thread
    """

    def __init__(self, observe: Callable[[Stored], None], *, most: int = 8) -> None:
        self.observe = observe
        self._queue: queue.Queue[Stored | None] = queue.Queue(maxsize=most)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the thread's start and stop, the count of what waits
        self._waiting = 0  # handed over, not yet observed

    def __call__(self, stored: Stored) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="lifelong-watch", daemon=True)
                self._thread.start()
            self._waiting += 1
        self._queue.put(stored)

    @property
    def waiting(self) -> int:
        """Batches handed over and not yet observed (the one being observed included)."""
        return self._waiting

    def drain(self) -> None:
        """Return once every batch handed over so far has been observed."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Observe what waits, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _watch(self) -> None:
        while True:
            stored = self._queue.get()
            try:
                if stored is None:
                    return
                self.observe(stored)
            except Exception:  # the batch is stored; watching it must not stop the watcher
                log.exception("watching a stored batch failed (metrics or live accuracy may lag)")
            finally:
                if stored is not None:
                    with self._lock:
                        self._waiting -= 1
                self._queue.task_done()


class Ingestor:
    """Moves records from a source into the sample store, exactly once.

    Example::

        decode = TopicDecoder(samples_topic="lifelong.samples", feedback_topic="lifelong.feedback",
                              features=64, max_classes=10)
        ingestor = Ingestor(source=source, sink=sink, store=store, decode=decode)
        ingestor.recover()
        while ...:
            ingestor.step(timeout_s=1.0)
    """

    def __init__(
        self,
        *,
        source: Source,
        sink: DeadLetterSink,
        store: SampleStore,
        decode: TopicDecoder,
        commit_interval_s: float = 1.0,
        lock: AbstractContextManager[Any] | None = None,
        on_stored: Callable[[Stored], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.sink = sink
        self.store = store
        self.decode = decode
        self.commit_interval_s = commit_interval_s
        # Held while a batch is stored: update rounds read the store from another thread.
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.on_stored = on_stored
        self.clock = clock
        self.totals: Counter[str] = Counter()
        self._positions: dict[TopicPartition, int] = {}
        self._uncommitted = False
        self._last_commit = clock()
        self._already_sent: set[tuple[str, int, int]] = set()
        self._unsent: list[Batch] = []  # a batch whose dead letters could not be delivered
        self._resend_check = False

    def recover(self) -> None:
        """Find the dead letters a crashed run sent after its last stored batch, so none is sent twice."""
        self._already_sent |= self.sink.sent_since(self.store.dead_letter_positions())
        if self._already_sent:
            log.info(
                "%d dead letters were sent before the last crash; not sending them again",
                len(self._already_sent),
            )

    def step(self, timeout_s: float) -> int:
        """Poll once and store what came; return the number of records handled.

        When the dead-letter topic cannot be reached the batch is kept (``ConnectionError``
        is raised) and the next step retries it after finding which dead letters did go out.
        """
        if self._unsent:
            if self._resend_check:
                self.recover()
                self._resend_check = False
            batches, self._unsent = self._unsent, []
        else:
            batches = list(self.source.poll(timeout_s))
        try:
            handled = self.ingest(batches) if batches else 0
        except ConnectionError:
            self._unsent, self._resend_check = batches, True
            raise
        if self._uncommitted and self.clock() - self._last_commit >= self.commit_interval_s:
            self.commit()
        return handled

    def ingest(self, batches: Sequence[Batch]) -> int:
        """Decode, dead-letter and store ``batches`` in one transaction."""
        batch = IngestBatch()
        letters: list[DeadLetter] = []
        events: Counter[tuple[str, str]] = Counter()
        handled = 0
        for part in batches:
            decoded: Decoded = part.decoded or self.decode(part.topic, part.values)
            topic, partition, offsets, stamps = part.topic, part.partition, part.offsets, part.timestamps
            events[(topic, "accepted")] += len(decoded.rows)
            events[(topic, "rejected")] += len(decoded.rejections)
            if decoded.feedback:
                batch.feedback.extend(
                    (*row, stamps[i]) for row, i in zip(decoded.rows, decoded.positions, strict=True)
                )
            else:
                batch.samples.extend(
                    (*row, topic, partition, offsets[i], stamps[i])
                    for row, i in zip(decoded.rows, decoded.positions, strict=True)
                )
            for i, reason, detail in decoded.rejections:
                batch.dead_letters[reason] += 1
                source = (topic, partition, offsets[i])
                if source in self._already_sent:
                    self._already_sent.discard(source)
                else:
                    letters.append(DeadLetter(part.record(i), reason, detail))
            batch.positions[(topic, partition)] = part.next_offset
            handled += len(part)
        if letters:
            # Delivered before the offsets move past them: a crash in between re-reads them,
            # and recover() keeps the second copy from being sent.
            batch.dead_letter_positions = dict(self.sink.send(letters))
        with self.lock:
            applied = self.store.apply(batch)
            labels_upto = self.store.last_label_event()
        self._count(batch, applied)
        self._positions.update(
            (TopicPartition(topic, partition), offset)
            for (topic, partition), offset in batch.positions.items()
        )
        self._uncommitted = True
        if self.on_stored is not None:
            try:
                self.on_stored(Stored(batch=batch, applied=applied, events=events, labels_upto=labels_upto))
            except Exception:  # the batch is stored; watching it must not stop ingestion
                log.exception("watching a stored batch failed (metrics or live accuracy may lag)")
        return handled

    def watch_waiting(self) -> int:
        """Stored batches the watchers have not observed yet (0 when they run on this thread)."""
        return self.on_stored.waiting if isinstance(self.on_stored, Handoff) else 0

    def drain(self) -> None:
        """Return once the watchers have observed every batch stored (see :class:`Handoff`)."""
        if isinstance(self.on_stored, Handoff):
            self.on_stored.drain()

    def close(self) -> None:
        """Let the watchers observe what was stored, then stop their thread."""
        if isinstance(self.on_stored, Handoff):
            self.on_stored.close()

    def commit(self) -> None:
        """Commit the stored positions to the bus, for lag tooling."""
        if self._uncommitted:
            self.source.commit(dict(self._positions))
            self._uncommitted = False
        self._last_commit = self.clock()

    def _count(self, batch: IngestBatch, applied: Applied) -> None:
        totals = self.totals
        totals["samples"] += len(batch.samples)
        totals["feedback"] += len(batch.feedback)
        totals["dead_letters"] += sum(batch.dead_letters.values())
        totals["stored"] += applied.stored
        totals["duplicates"] += applied.duplicates
        totals["labeled_late"] += applied.labeled_late
        totals["relabeled"] += applied.relabeled
        totals["expired"] += applied.expired_samples + applied.expired_feedback
