"""The two seams between the daemon and a message bus: where records come from, where dead letters go."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol


class TopicPartition(NamedTuple):
    """A partition of a topic."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}"


@dataclass(frozen=True, slots=True)
class Record:
    """One message as read from a topic."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    """Records read from one partition, in offset order, as columns (cheap to move between processes)."""

    topic: str
    partition: int
    offsets: list[int]
    values: list[bytes | None]
    timestamps: list[int]
    keys: list[bytes | None]
    headers: list[tuple[tuple[str, bytes], ...]]
    # What the source's decode callable made of the values, when it was given one.
    decoded: Any = None

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def next_offset(self) -> int:
        """The offset to read after this batch."""
        return self.offsets[-1] + 1

    def record(self, index: int) -> Record:
        """The ``index``-th record as one object."""
        return Record(
            self.topic,
            self.partition,
            self.offsets[index],
            self.values[index],
            self.keys[index],
            self.timestamps[index],
            self.headers[index],
        )

    @classmethod
    def of(cls, records: Sequence[Record]) -> Batch:
        """A batch of records that all come from one partition."""
        first = records[0]
        return cls(
            first.topic,
            first.partition,
            [r.offset for r in records],
            [r.value for r in records],
            [r.timestamp_ms for r in records],
            [r.key for r in records],
            [r.headers for r in records],
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record, its original bytes and why it was rejected."""

    record: Record
    reason: str
    detail: str

    @property
    def source(self) -> tuple[str, int, int]:
        """Where the record was read: (topic, partition, offset), its identity across restarts."""
        return (self.record.topic, self.record.partition, self.record.offset)


@dataclass(slots=True)
class Lag:
    """How far a source's read position is behind the end of each partition."""

    behind: dict[TopicPartition, int] = field(default_factory=dict)
    # Assigned partitions whose end the source has not learnt yet.
    unknown: int = 0

    @property
    def drained(self) -> bool:
        """True when every assigned partition has been read to its known end."""
        return not self.unknown and all(count <= 0 for count in self.behind.values())


class Source(Protocol):
    """Records from the samples and feedback topics.

    The source starts each partition at the offset its ``positions`` callback
    returns (the durable state's), so state and read position move together.
    """

    def poll(self, timeout_s: float) -> Sequence[Batch]:
        """Return the next records (possibly none), a batch per partition, in offset order."""
        ...

    def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        """Record the next offsets to read with the bus (for lag tooling), after the state holds them."""
        ...

    def lag(self) -> Lag:
        """How many records are left to read in each assigned partition."""
        ...


class DeadLetterSink(Protocol):
    """Where rejected records go, with their reason."""

    def send(self, letters: Sequence[DeadLetter]) -> Mapping[int, int]:
        """Deliver ``letters`` durably; return the sink's next offset per partition afterwards."""
        ...

    def sent_since(self, positions: Mapping[int, int]) -> set[tuple[str, int, int]]:
        """Sources of the letters delivered at or after ``positions`` (found again after a crash)."""
        ...


class Publisher(Protocol):
    """Events for other processes on a topic (model events, predictions); never blocks for long."""

    def publish(self, key: str, value: bytes) -> None:
        """Send ``value`` keyed by ``key``."""
        ...

    def close(self) -> None:
        """Deliver what is buffered and release the connection."""
        ...


class Tail(Protocol):
    """The values appended to one topic from now on (a serving process following model events)."""

    def poll(self, timeout_s: float) -> list[bytes]:
        """What arrived, waiting up to ``timeout_s`` for something."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...
