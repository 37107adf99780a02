"""Kafka through kafka-python: the source of samples and feedback, and the dead-letter sink.

Parsing records is most of a kafka-python consumer's work and holds the GIL, so
:class:`KafkaSource` runs the consumer in a child process (the fetcher) and
the daemon decodes and stores on the other core. Partitions are assigned
manually, never through a group join: the durable state owns the read
position, and the group id only receives committed offsets for lag tooling.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from lifelong.connectors.base import Batch, DeadLetter, Lag, TopicPartition
from lifelong.connectors.headers import dead_letter_headers, source_of
from lifelong.errors import LifelongError

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 200


class BrokerUnavailable(LifelongError, ConnectionError):
    """The Kafka cluster cannot be reached or refused an operation."""


def ensure_topics(
    *, client_options: Mapping[str, Any], topics: Sequence[str], partitions: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(**client_options)
    except KafkaError as error:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {client_options.get('bootstrap_servers')}: {error!r}"
        ) from None
    try:
        missing = [t for t in topics if t not in set(admin.list_topics())]
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, partitions, 1)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


class KafkaSource:
    """Samples and feedback from Kafka, read by a fetcher process from the state's offsets.

    Example::

        source = KafkaSource(topics=["lifelong.samples"], group_id="lifelong",
                             client_options={"bootstrap_servers": "127.0.0.1:9092"},
                             positions=store.positions())
        batches = source.poll(1.0)
    """

    def __init__(
        self,
        *,
        topics: Sequence[str],
        group_id: str,
        client_options: Mapping[str, Any],
        positions: Mapping[tuple[str, int], int],
        start_from: str = "earliest",
        max_poll_records: int = 5000,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.topics = list(topics)
        self.group_id = group_id
        self.client_options = dict(client_options)
        self.start_from = start_from
        self.max_poll_records = max_poll_records
        self._highwater: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self._connected = False
        context = multiprocessing.get_context("spawn")
        self._inbox, child_outbox = context.Pipe(duplex=False)
        child_inbox, self._outbox = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_fetch,
            name="lifelong-fetcher",
            daemon=True,
            args=(
                child_outbox,
                child_inbox,
                {
                    "topics": self.topics,
                    "group_id": group_id,
                    "options": self.client_options,
                    "positions": dict(positions),
                    "start_from": start_from,
                    "max_poll_records": max_poll_records,
                    "parent": os.getpid(),
                },
            ),
        )
        self._process.start()
        child_outbox.close()
        child_inbox.close()
        self._await_ready(start_timeout_s)

    @property
    def connected(self) -> bool:
        """Whether the fetcher's last poll reached the cluster."""
        return self._connected

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._next:
            if not self._inbox.poll(max(0.0, deadline - time.monotonic())):
                self.close()
                raise BrokerUnavailable(
                    f"no partitions of {self.topics} assigned within {timeout_s}s from "
                    f"{self.client_options.get('bootstrap_servers')}"
                )
            self._receive()

    def poll(self, timeout_s: float) -> Sequence[Batch]:
        """The batches the fetcher has ready, waiting up to ``timeout_s`` for the first."""
        batches: list[Batch] = []
        if not self._inbox.poll(timeout_s):
            return batches
        while True:
            batches.extend(self._receive())
            if len(batches) >= 64 or not self._inbox.poll(0):
                return batches

    def _receive(self) -> list[Batch]:
        try:
            kind, payload, highwater = pickle.loads(self._inbox.recv_bytes())
        except (EOFError, OSError):
            raise BrokerUnavailable("the Kafka fetcher process exited") from None
        self._highwater.update(highwater)
        if kind == "error":
            self._connected = False
            log.warning("Kafka fetcher: %s", payload)
            return []
        self._connected = True
        if kind == "ready":
            self._next.update(payload)
            return []
        batches = [Batch(*columns) for columns in payload]
        for batch in batches:
            self._next[TopicPartition(batch.topic, batch.partition)] = batch.next_offset
        return batches

    def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        """Ask the fetcher to commit ``positions`` for the group (asynchronously)."""
        try:
            self._outbox.send(("commit", dict(positions)))
        except OSError:
            raise BrokerUnavailable("the Kafka fetcher process exited") from None

    def lag(self) -> Lag:
        """Records between what was handed out and each partition's high watermark."""
        return Lag({tp: self._highwater.get(tp, position) - position for tp, position in self._next.items()})

    def close(self) -> None:
        """Stop the fetcher."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._outbox.send(("stop", None))
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._inbox.close()
        self._outbox.close()


def _fetch(outbox: Connection, inbox: Connection, config: dict[str, Any]) -> None:
    """The fetcher process: poll Kafka, ship columns to the daemon, commit on request."""
    # Signals go to the daemon, which stops us through the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaTP
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    def send(kind: str, payload: Any, highwater: dict[TopicPartition, int]) -> None:
        outbox.send_bytes(pickle.dumps((kind, payload, highwater), protocol=5))

    consumer: Any = None
    backoff = 0.5
    try:
        while os.getppid() == config["parent"]:
            try:
                if consumer is None:
                    consumer = _connect(KafkaConsumer, KafkaTP, config)
                    send("ready", *_starting_positions(consumer))
                    backoff = 0.5
                while inbox.poll(0):
                    command, argument = inbox.recv()
                    if command == "stop":
                        return
                    consumer.commit_async(
                        {
                            KafkaTP(tp.topic, tp.partition): OffsetAndMetadata(offset, "", -1)
                            for tp, offset in argument.items()
                        }
                    )
                polled = consumer.poll(timeout_ms=_IDLE_POLL_MS, max_records=config["max_poll_records"])
                columns = []
                highwater: dict[TopicPartition, int] = {}
                for ktp, records in polled.items():
                    tp = TopicPartition(ktp.topic, ktp.partition)
                    columns.append(
                        (
                            tp.topic,
                            tp.partition,
                            [r.offset for r in records],
                            [r.value for r in records],
                            [r.timestamp for r in records],
                            [r.key for r in records],
                            [tuple(r.headers) for r in records],
                        )
                    )
                for ktp in consumer.assignment():
                    mark = consumer.highwater(ktp)
                    if mark is not None:
                        highwater[TopicPartition(ktp.topic, ktp.partition)] = mark
                send("records" if columns else "idle", columns, highwater)
            except KafkaError as error:
                send("error", f"{type(error).__name__}: {error}", {})
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        return
    finally:
        if consumer is not None:
            consumer.close(autocommit=False)


def _connect(consumer_class: Any, tp_class: Any, config: dict[str, Any]) -> Any:
    consumer = consumer_class(
        group_id=config["group_id"],
        enable_auto_commit=False,
        auto_offset_reset=config["start_from"],
        max_poll_records=config["max_poll_records"],
        **config["options"],
    )
    partitions = []
    for topic in config["topics"]:
        found = consumer.partitions_for_topic(topic)
        if not found:
            consumer.close(autocommit=False)
            from kafka.errors import UnknownTopicOrPartitionError

            raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
        partitions += [tp_class(topic, p) for p in sorted(found)]
    consumer.assign(partitions)
    stored = config["positions"]
    for ktp in partitions:
        offset = stored.get((ktp.topic, ktp.partition))
        if offset is not None:
            consumer.seek(ktp, offset)
        elif config["start_from"] == "latest":
            consumer.seek_to_end(ktp)
        else:
            consumer.seek_to_beginning(ktp)
    return consumer


def _starting_positions(
    consumer: Any,
) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    assigned = list(consumer.assignment())
    ends = consumer.end_offsets(assigned)
    positions = {TopicPartition(k.topic, k.partition): consumer.position(k) for k in assigned}
    highwater = {TopicPartition(k.topic, k.partition): ends[k] for k in assigned}
    return positions, highwater


class KafkaDeadLetterSink:
    """Produces dead letters to a topic with reason and source headers, acknowledged by all replicas."""

    def __init__(
        self,
        *,
        topic: str,
        client_options: Mapping[str, Any],
        max_value_bytes: int = 900_000,
        timeout_s: float = 60.0,
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.client_options = dict(client_options)
        self.max_value_bytes = max_value_bytes
        self.timeout_s = timeout_s
        self._producer = KafkaProducer(acks="all", linger_ms=5, **self.client_options)

    def send(self, letters: Sequence[DeadLetter]) -> Mapping[int, int]:
        """Deliver and flush; return the next offset of each partition written."""
        futures = []
        for letter in letters:
            value = letter.record.value
            headers = dead_letter_headers(letter)
            if value is not None and len(value) > self.max_value_bytes:
                # Larger than the topic may accept: keep the head and say so.
                headers.append(("lifelong.truncated_from", str(len(value)).encode()))
                value = value[: self.max_value_bytes]
            futures.append(
                self._producer.send(self.topic, value=value, key=letter.record.key, headers=headers)
            )
        self._producer.flush(timeout=self.timeout_s)
        ends: dict[int, int] = {}
        for future in futures:
            try:
                metadata = future.get(timeout=self.timeout_s)
            except Exception as error:
                raise BrokerUnavailable(f"dead letter not delivered to {self.topic!r}: {error!r}") from None
            ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
        return ends

    def sent_since(self, positions: Mapping[int, int]) -> set[tuple[str, int, int]]:
        """Sources of the dead letters at or after ``positions`` (read back without a group)."""
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTP

        consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **self.client_options)
        try:
            found_partitions = consumer.partitions_for_topic(self.topic) or set()
            partitions = [KafkaTP(self.topic, p) for p in sorted(found_partitions)]
            if not partitions:
                return set()
            ends = consumer.end_offsets(partitions)
            todo = [tp for tp in partitions if ends[tp] > positions.get(tp.partition, 0)]
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, positions.get(tp.partition, 0))
            found: set[tuple[str, int, int]] = set()
            deadline = time.monotonic() + self.timeout_s
            while todo and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        source = source_of(record.headers)
                        if source is not None:
                            found.add(source)
                todo = [tp for tp in todo if consumer.position(tp) < ends[tp]]
            if todo:
                raise BrokerUnavailable(f"could not read back {self.topic!r} within {self.timeout_s}s")
            return found
        finally:
            consumer.close(autocommit=False)

    def close(self) -> None:
        """Flush and close the producer."""
        self._producer.close(timeout=self.timeout_s)
