"""Conformance of every Source and DeadLetterSink: the in-memory ones and Kafka on the embedded broker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pytest
from kafka import KafkaConsumer, KafkaProducer

from lifelong.connectors.base import Batch, DeadLetter, DeadLetterSink, Record, Source, TopicPartition
from lifelong.connectors.broker import EmbeddedBroker
from lifelong.connectors.fetcher import _columns
from lifelong.connectors.headers import REASON, SOURCE_OFFSET, dead_letter_headers, source_of
from lifelong.connectors.kafka import KafkaSource, ensure_topics
from lifelong.connectors.kafka_topics import KafkaDeadLetterSink
from lifelong.connectors.memory import MemoryBus, MemoryDeadLetterSink, MemorySource
from lifelong.events import TopicDecoder, encode_sample


@dataclass
class Bus:
    """A topic writer plus factories for a source and a sink on the same bus."""

    produce: Callable[[str, bytes, int], None]
    source: Callable[..., Source]
    sink: Callable[[str], DeadLetterSink]
    read: Callable[[str], list[Record]]
    topic: Callable[[str], str]


def memory_bus(request: pytest.FixtureRequest) -> Bus:
    bus = MemoryBus(partitions=2)
    return Bus(
        produce=lambda topic, value, partition: bus.produce(topic, value, partition=partition),
        source=lambda topics, positions=None: MemorySource(
            bus=bus, topics=topics, positions=lambda tp: (positions or {}).get(tuple(tp))
        ),
        sink=lambda topic: MemoryDeadLetterSink(bus=bus, topic=topic),
        read=bus.records,
        topic=lambda stem: stem,
    )


def kafka_bus(request: pytest.FixtureRequest) -> Bus:
    broker: EmbeddedBroker = request.getfixturevalue("broker")
    unique = request.getfixturevalue("unique")
    options = {"bootstrap_servers": broker.bootstrap_servers}
    producer = KafkaProducer(**options)
    request.addfinalizer(producer.close)
    made: list = []

    def topic(stem: str) -> str:
        name = unique(stem)
        ensure_topics(client_options=options, topics=[name], partitions=2)
        return name

    def produce(topic: str, value: bytes, partition: int) -> None:
        producer.send(topic, value, partition=partition)
        producer.flush()

    def source(topics: list[str], positions: dict | None = None) -> Source:  # type: ignore[type-arg]
        made.append(
            KafkaSource(
                topics=topics, group_id=unique("g"), client_options=options, positions=positions or {}
            )
        )
        request.addfinalizer(made[-1].close)
        return made[-1]

    def sink(topic: str) -> DeadLetterSink:
        made.append(KafkaDeadLetterSink(topic=topic, client_options=options))
        request.addfinalizer(made[-1].close)
        return made[-1]

    def read(topic: str) -> list[Record]:
        consumer = KafkaConsumer(
            topic, auto_offset_reset="earliest", consumer_timeout_ms=1500, group_id=None, **options
        )
        out = [
            Record(r.topic, r.partition, r.offset, r.value, r.key, r.timestamp, tuple(r.headers))
            for r in consumer
        ]
        consumer.close()
        return out

    return Bus(produce, source, sink, read, topic)


@pytest.fixture(
    params=[memory_bus, pytest.param(kafka_bus, marks=pytest.mark.kafka)], ids=["memory", "kafka"]
)
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    yield request.param(request)


def drain(source: Source, want: int, timeout_s: float = 20.0) -> list[Batch]:
    got: list[Batch] = []
    deadline = time.monotonic() + timeout_s
    while sum(map(len, got)) < want and time.monotonic() < deadline:
        got.extend(source.poll(0.2))
    return got


def test_source_reads_every_partition_in_order_and_reports_lag(bus: Bus) -> None:
    topic = bus.topic("in")
    for i in range(10):
        bus.produce(topic, f"v{i}".encode(), i % 2)
    source = bus.source([topic])
    batches = drain(source, 10)
    by_partition: dict[int, list[int]] = {}
    for batch in batches:
        by_partition.setdefault(batch.partition, []).extend(batch.offsets)
        assert all(batch.record(i).value == value for i, value in enumerate(batch.values))
    assert by_partition == {0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 3, 4]}
    assert source.lag().drained
    bus.produce(topic, b"late", 1)
    assert len(drain(source, 1)) == 1


def test_source_starts_at_the_given_positions(bus: Bus) -> None:
    topic = bus.topic("in")
    for i in range(6):
        bus.produce(topic, f"v{i}".encode(), 0)
    source = bus.source([topic], {(topic, 0): 4})
    batches = drain(source, 2)
    assert [o for b in batches for o in b.offsets] == [4, 5]
    source.commit({TopicPartition(topic, 0): 6})


def test_sink_delivers_reasons_and_finds_them_again(bus: Bus) -> None:
    topic = bus.topic("dead")
    sink = bus.sink(topic)
    letters = [DeadLetter(Record("src", 1, offset, b"bad", b"k"), "not_json", "broken") for offset in (3, 4)]
    ends = sink.send(letters[:1])
    assert sum(ends.values()) == 1
    sink.send(letters[1:])
    delivered = bus.read(topic)
    assert [r.value for r in delivered] == [b"bad", b"bad"]
    assert all(dict(r.headers)[REASON] == b"not_json" for r in delivered)
    assert {source_of(r.headers) for r in delivered} == {("src", 1, 3), ("src", 1, 4)}
    assert sink.sent_since(dict(ends)) == {("src", 1, 4)}
    assert sink.sent_since({}) == {("src", 1, 3), ("src", 1, 4)}


FORGED = (("lifelong.reason", b"forged"), ("lifelong.source.offset", b"999"), ("trace", b"t1"))


def test_a_producers_lifelong_headers_are_kept_as_original() -> None:
    letter = DeadLetter(Record("src", 1, 7, b"bad", b"k", 5, FORGED), "not_json", "broken")
    headers = dead_letter_headers(letter)
    ours = [(name, value) for name, value in headers if name.startswith("lifelong.")]
    assert [value for name, value in ours if name == REASON] == [b"not_json"]
    assert [value for name, value in ours if name == SOURCE_OFFSET] == [b"7"]
    assert len({name for name, _ in ours}) == len(ours)  # each of ours once, none of the producer's
    assert headers[:3] == [
        ("original.lifelong.reason", b"forged"),
        ("original.lifelong.source.offset", b"999"),
        ("trace", b"t1"),
    ]
    assert source_of(headers) == ("src", 1, 7)


def test_sink_keeps_forged_headers_apart_from_its_own(bus: Bus) -> None:
    topic = bus.topic("dead")
    sink = bus.sink(topic)
    sink.send([DeadLetter(Record("src", 0, 3, b"bad", b"k", 5, FORGED), "bad_x", "broken")])
    [delivered] = bus.read(topic)
    first: dict[str, bytes] = {}
    for name, value in delivered.headers:
        first.setdefault(name, value)
    assert first[REASON] == b"bad_x" and first[SOURCE_OFFSET] == b"3"
    assert first["original.lifelong.reason"] == b"forged" and first["trace"] == b"t1"
    assert source_of(delivered.headers) == ("src", 0, 3)
    assert sink.sent_since({}) == {("src", 0, 3)}


class Polled(NamedTuple):
    """What kafka-python's poll gives the fetcher, as far as it reads it."""

    offset: int
    timestamp: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def test_fetcher_decodes_one_by_one_when_a_batch_raises() -> None:
    decode = TopicDecoder(samples_topic="s", feedback_topic="f", features=2, max_classes=3)

    def fragile(topic: str, values: list[bytes | None]) -> object:
        if b"poison" in values:
            raise RuntimeError(f"cannot decode {b'poison'!r}")
        return decode(topic, values)

    values = [encode_sample("a", [0, 1], 1), b"poison", b"{not json", encode_sample("b", [1, 0])]
    records = [Polled(10 + i, 100 + i, value, b"k%d" % i) for i, value in enumerate(values)]
    columns = _columns("s", 0, records, fragile)
    decoded = columns[-1]
    assert [row[0] for row in decoded.rows] == ["a", "b"] and decoded.positions == [0, 3]
    assert decoded.rejections[0] == (
        1,
        "undecodable",
        "decoding raised RuntimeError: cannot decode b'poison'",
    )
    assert [(i, reason) for i, reason, _ in decoded.rejections] == [(1, "undecodable"), (2, "not_json")]
    assert columns[3] == [None, b"poison", b"{not json", None]  # raw bytes travel for the rejected only
