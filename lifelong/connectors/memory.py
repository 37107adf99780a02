"""An in-process message bus with the same seams as Kafka, for unit tests and in-process runs."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from lifelong.connectors.base import Batch, DeadLetter, Lag, Record, TopicPartition
from lifelong.connectors.headers import dead_letter_headers, source_of


class MemoryBus:
    """Topics of partitions of records, held in lists.

    Example::

        bus = MemoryBus()
        bus.produce("lifelong.samples", b'{"id": "a", "x": [1.0]}')
        source = MemorySource(bus=bus, topics=["lifelong.samples"])
    """

    def __init__(self, *, partitions: int = 1) -> None:
        self.partitions = partitions
        self._topics: dict[str, list[list[Record]]] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.appended = threading.Condition()  # notified on every produce: a poll waits on it

    def topic(self, name: str) -> list[list[Record]]:
        """The partitions of ``name``, created on first use."""
        return self._topics.setdefault(name, [[] for _ in range(self.partitions)])

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
        timestamp_ms: int = 0,
    ) -> Record:
        """Append a record; without a partition, the key (or round robin) chooses one."""
        partitions = self.topic(topic)
        if partition is None:
            count = sum(len(p) for p in partitions)
            partition = (zlib.crc32(key) if key is not None else count) % len(partitions)
        log = partitions[partition]
        record = Record(topic, partition, len(log), value, key, timestamp_ms, tuple(headers))
        with self.appended:
            log.append(record)
            self.appended.notify_all()
        return record

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, partition by partition."""
        return [record for log in self.topic(topic) for record in log]


class MemorySource:
    """Reads topics of a :class:`MemoryBus` from the positions the state gives."""

    def __init__(
        self,
        *,
        bus: MemoryBus,
        topics: Sequence[str],
        positions: Callable[[TopicPartition], int | None] = lambda tp: None,
        max_poll_records: int = 500,
    ) -> None:
        self.bus = bus
        self.topics = list(topics)
        self.max_poll_records = max_poll_records
        self._next: dict[TopicPartition, int] = {}
        for topic in self.topics:
            for partition in range(len(bus.topic(topic))):
                tp = TopicPartition(topic, partition)
                self._next[tp] = positions(tp) or 0

    def poll(self, timeout_s: float) -> Sequence[Batch]:
        """Up to ``max_poll_records`` records, taken across partitions in turn.

        Waits up to ``timeout_s`` for one, as Kafka's poll does: an idle consumer loop never spins.
        """
        with self.bus.appended:
            self.bus.appended.wait_for(self._available, timeout=max(0.0, timeout_s))
        out: list[Batch] = []
        budget = self.max_poll_records
        for tp, start in self._next.items():
            chunk = self.bus.topic(tp.topic)[tp.partition][start : start + budget]
            if chunk:
                out.append(Batch.of(chunk))
                budget -= len(chunk)
                self._next[tp] = start + len(chunk)
        return out

    def _available(self) -> bool:
        return any(len(self.bus.topic(tp.topic)[tp.partition]) > start for tp, start in self._next.items())

    def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        """Remember ``positions`` on the bus, as Kafka would for the group."""
        self.bus.committed.update(positions)

    def lag(self) -> Lag:
        """Records left per partition."""
        return Lag({tp: len(self.bus.topic(tp.topic)[tp.partition]) - n for tp, n in self._next.items()})


class MemoryDeadLetterSink:
    """Appends dead letters to a topic of a :class:`MemoryBus`."""

    def __init__(self, *, bus: MemoryBus, topic: str) -> None:
        self.bus = bus
        self.topic = topic

    def send(self, letters: Sequence[DeadLetter]) -> Mapping[int, int]:
        """Append the letters with their reason headers; return the end offsets."""
        for letter in letters:
            self.bus.produce(
                self.topic,
                letter.record.value,
                key=letter.record.key,
                partition=letter.record.partition % self.bus.partitions,
                headers=dead_letter_headers(letter),
            )
        return {p: len(log) for p, log in enumerate(self.bus.topic(self.topic))}

    def sent_since(self, positions: Mapping[int, int]) -> set[tuple[str, int, int]]:
        """Sources of the letters at or after ``positions``."""
        found: set[tuple[str, int, int]] = set()
        for partition, log in enumerate(self.bus.topic(self.topic)):
            for record in log[positions.get(partition, 0) :]:
                source = source_of(record.headers)
                if source is not None:
                    found.add(source)
        return found


class MemoryPublisher:
    """A :class:`~lifelong.connectors.base.Publisher` onto a :class:`MemoryBus` topic."""

    def __init__(self, *, bus: MemoryBus, topic: str) -> None:
        self.bus = bus
        self.topic = topic

    def publish(self, key: str, value: bytes) -> None:
        """Append to the topic."""
        self.bus.produce(self.topic, value, key=key.encode())

    def close(self) -> None:
        """Nothing to release."""


class MemoryTail:
    """A :class:`~lifelong.connectors.base.Tail` of a :class:`MemoryBus` topic, from its end at creation."""

    def __init__(self, *, bus: MemoryBus, topic: str) -> None:
        self.bus = bus
        self.topic = topic
        self._seen = len(bus.records(topic))

    @property
    def position(self) -> int:
        """Records of the topic read so far (counting those there at creation)."""
        return self._seen

    def poll(self, timeout_s: float) -> list[bytes]:
        """Values appended since the last poll (waiting up to ``timeout_s`` for one)."""
        with self.bus.appended:
            self.bus.appended.wait_for(
                lambda: len(self.bus.records(self.topic)) > self._seen, timeout=max(0.0, timeout_s)
            )
        records = self.bus.records(self.topic)
        new, self._seen = records[self._seen :], len(records)
        return [r.value for r in new if r.value is not None]

    def close(self) -> None:
        """Nothing to release."""
