"""Kafka through kafka-python: the source of samples and feedback, and the dead-letter sink.

Parsing records is most of a kafka-python consumer's work and holds the GIL, so
:class:`KafkaSource` runs the consumer in a child process (the fetcher) and
the daemon decodes and stores on the other core. Partitions are assigned
manually, never through a group join: the durable state owns the read
position, and the group id only receives committed offsets for lag tooling.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from lifelong.connectors.base import Batch, DeadLetter, Lag, TopicPartition
from lifelong.connectors.headers import dead_letter_headers, source_of
from lifelong.errors import LifelongError

log = logging.getLogger(__name__)

_IDLE_POLL_MS = 200
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_BYTES = 1 << 20


class BrokerUnavailable(LifelongError, ConnectionError):
    """The Kafka cluster cannot be reached or refused an operation."""


class FetcherExited(LifelongError, RuntimeError):
    """A fetcher process died: not an outage to wait out, the daemon must restart."""


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

    ``decode``, when given, is a picklable callable ``(topic, values) -> decoded`` that the
    fetchers run on each batch, so decoding, too, happens beside the daemon; its result is
    the batch's ``decoded``, and only rejected records keep their raw bytes.

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
        fetchers: int = 2,
        decode: Callable[[str, list[bytes | None]], Any] | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        if fetchers < 1:
            raise ValueError(f"fetchers must be >= 1, got {fetchers!r}")
        self.topics = list(topics)
        self.group_id = group_id
        self.client_options = dict(client_options)
        self.start_from = start_from
        self.max_poll_records = max_poll_records
        self.fetchers = fetchers
        self._highwater: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}
        self._connected = False
        self._probe = _Probe(self.client_options["bootstrap_servers"])
        self._ready: set[int] = set()
        self._early: list[Batch] = []
        self._children = [
            _Fetcher(
                {
                    "topics": self.topics,
                    "group_id": group_id,
                    "options": self.client_options,
                    "positions": dict(positions),
                    "start_from": start_from,
                    "max_poll_records": max_poll_records,
                    "share": (index, fetchers),
                    "decode": decode,
                    "parent": os.getpid(),
                }
            )
            for index in range(fetchers)
        ]
        self._await_ready(start_timeout_s)

    @property
    def connected(self) -> bool:
        """Whether a bootstrap server accepts connections and the fetchers' last polls did not fail."""
        return self._connected and self._probe.reachable

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self._ready) < len(self._children):
            ready = wait([c.inbox for c in self._children], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.close()
                raise BrokerUnavailable(
                    f"partitions of {self.topics} not assigned within {timeout_s}s from "
                    f"{self.client_options.get('bootstrap_servers')}"
                )
            for inbox in ready:
                # A fetcher may send records before its siblings are ready: keep them for poll.
                self._early.extend(self._receive(inbox))  # type: ignore[arg-type]

    def poll(self, timeout_s: float) -> Sequence[Batch]:
        """The batches the fetchers have ready, waiting up to ``timeout_s`` for the first."""
        batches, self._early = self._early, []
        inboxes = [c.inbox for c in self._children]
        ready = wait(inboxes, 0 if batches else timeout_s)
        while ready and len(batches) < 64:
            for inbox in ready:
                batches.extend(self._receive(inbox))  # type: ignore[arg-type]
            ready = wait(inboxes, 0)
        return batches

    def _receive(self, inbox: Connection) -> list[Batch]:
        try:
            kind, payload, highwater, index = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):
            raise FetcherExited("a Kafka fetcher process exited; restart the daemon") from None
        self._highwater.update(highwater)
        if kind == "error":
            self._connected = False
            log.warning("Kafka fetcher %d: %s", index, payload)
            return []
        self._connected = True
        if kind == "ready":
            self._ready.add(index)
            self._next.update(payload)
            return []
        batches = [Batch(*columns) for columns in payload]
        for batch in batches:
            self._next[TopicPartition(batch.topic, batch.partition)] = batch.next_offset
        return batches

    def commit(self, positions: Mapping[TopicPartition, int]) -> None:
        """Ask the fetchers to commit ``positions`` for the group (asynchronously)."""
        for child in self._children:
            child.send(("commit", dict(positions)))

    def lag(self) -> Lag:
        """Records between what was handed out and each partition's high watermark."""
        known = {tp: self._highwater[tp] - n for tp, n in self._next.items() if tp in self._highwater}
        return Lag(known, unknown=len(self._next) - len(known))

    def close(self) -> None:
        """Stop the fetchers."""
        self._probe.close()
        for child in self._children:
            child.close()


class _Probe:
    """Whether a TCP connection to one of the bootstrap servers opens, checked on a thread.

    A fetcher's consumer retries quietly while the cluster is away; this is what
    readiness can see meanwhile, without ever blocking the consumer loop.
    """

    def __init__(
        self, servers: str | Sequence[str], *, interval_s: float = 2.0, timeout_s: float = 2.0
    ) -> None:
        listed = servers.split(",") if isinstance(servers, str) else list(servers)
        self.addresses = [(host, int(port)) for host, _, port in (s.strip().rpartition(":") for s in listed)]
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.reachable = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lifelong-broker-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            reachable = any(self._opens(address) for address in self.addresses)
            if reachable != self.reachable:
                log.log(
                    logging.INFO if reachable else logging.WARNING,
                    "Kafka %s",
                    "reachable again" if reachable else f"unreachable at {self.addresses}",
                )
            self.reachable = reachable

    def _opens(self, address: tuple[str, int]) -> bool:
        try:
            with socket.create_connection(address, timeout=self.timeout_s):
                return True
        except OSError:
            return False

    def close(self) -> None:
        self._stop.set()


class _Fetcher:
    """The daemon's end of one fetcher process and its two pipes."""

    def __init__(self, config: dict[str, Any]) -> None:
        # A plain child process, not multiprocessing's spawn, which would re-run the caller's
        # __main__ module.
        inbox_read, inbox_write = os.pipe()
        outbox_read, outbox_write = os.pipe()
        for fd in (inbox_read, outbox_read):
            with contextlib.suppress(OSError):  # Linux only; fewer wake-ups per batch
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lifelong.connectors.kafka", str(inbox_write), str(outbox_read)],
            pass_fds=(inbox_write, outbox_read),
            stdin=subprocess.DEVNULL,
        )
        os.close(inbox_write)
        os.close(outbox_read)
        self.inbox = Connection(inbox_read, writable=False)
        self.outbox = Connection(outbox_write, readable=False)
        self.send(config)

    def send(self, message: Any) -> None:
        try:
            self.outbox.send(message)
        except OSError:
            raise BrokerUnavailable("a Kafka fetcher process exited") from None

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(BrokerUnavailable):
                self.send(("stop", None))
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.inbox.close()
        self.outbox.close()


def _fetch(outbox: Connection, inbox: Connection) -> None:
    """The fetcher process: poll Kafka, ship columns to the daemon, commit on request."""
    config: dict[str, Any] = inbox.recv()
    # Signals go to the daemon, which stops us through the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KafkaTP
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    index = config["share"][0]
    decode = config["decode"]

    def send(kind: str, payload: Any, highwater: dict[TopicPartition, int]) -> None:
        outbox.send_bytes(pickle.dumps((kind, payload, highwater, index), protocol=5))

    consumer: Any = None
    backoff = 0.5
    try:
        while os.getppid() == config["parent"]:
            try:
                if consumer is None:
                    consumer = _connect(KafkaConsumer, KafkaTP, config)
                    send("ready", _starting_positions(consumer), {})
                    backoff = 0.5
                mine = consumer.assignment()
                while inbox.poll(0 if mine else _IDLE_POLL_MS / 1000):
                    command, argument = inbox.recv()
                    if command == "stop":
                        return
                    offsets = {
                        KafkaTP(tp.topic, tp.partition): OffsetAndMetadata(offset, "", -1)
                        for tp, offset in argument.items()
                    }
                    if offsets.keys() & mine:
                        consumer.commit({k: v for k, v in offsets.items() if k in mine})
                if not mine:  # more fetchers than partitions: this one has nothing to read
                    send("idle", [], {})
                    continue
                polled = consumer.poll(timeout_ms=_IDLE_POLL_MS, max_records=config["max_poll_records"])
                columns = []
                highwater: dict[TopicPartition, int] = {}
                for ktp, records in polled.items():
                    columns.append(_columns(ktp.topic, ktp.partition, records, decode))
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


def _columns(topic: str, partition: int, records: list[Any], decode: Any) -> tuple[Any, ...]:
    """A batch's columns; with a decoder, raw bytes travel only for the records it rejected."""
    offsets = [r.offset for r in records]
    timestamps = [r.timestamp for r in records]
    values = [r.value for r in records]
    if decode is None:
        return (
            topic,
            partition,
            offsets,
            values,
            timestamps,
            [r.key for r in records],
            [tuple(r.headers) if r.headers else () for r in records],
        )
    decoded = decode(topic, values)
    keep: list[Any] = [None] * len(records)
    keys = [None] * len(records)
    headers: list[Any] = [()] * len(records)
    for position, _, _ in decoded.rejections:
        record = records[position]
        keep[position], keys[position] = record.value, record.key
        headers[position] = tuple(record.headers) if record.headers else ()
    return (topic, partition, offsets, keep, timestamps, keys, headers, decoded)


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
    index, count = config["share"]
    partitions = partitions[index::count]
    if partitions:
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


def _starting_positions(consumer: Any) -> dict[TopicPartition, int]:
    # No end offsets here: only a fetch response's high watermark is trusted for the end
    # (the embedded broker's ListOffsets answers the last batch's base offset + 1).
    return {TopicPartition(k.topic, k.partition): consumer.position(k) for k in consumer.assignment()}


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
        from kafka.errors import KafkaError

        futures = []
        try:
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
        except KafkaError as error:
            raise BrokerUnavailable(f"dead letters not delivered to {self.topic!r}: {error!r}") from None
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
        from kafka.errors import KafkaError

        try:
            return self._sent_since(positions)
        except KafkaError as error:
            raise BrokerUnavailable(f"cannot read back {self.topic!r}: {error!r}") from None

    def _sent_since(self, positions: Mapping[int, int]) -> set[tuple[str, int, int]]:
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


class KafkaPublisher:
    """Publishes JSON events to one topic without ever blocking the caller for long.

    Model events and predictions are notices for other processes: when the cluster cannot take
    them (an outage, a full buffer) they are counted in ``dropped`` and logged, never waited for.
    """

    def __init__(
        self, *, topic: str, client_options: Mapping[str, Any], acks: int | str = 1, max_block_ms: int = 100
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.dropped = 0
        self._producer = KafkaProducer(
            acks=acks,
            enable_idempotence=acks == "all",  # kafka-python warns when acks=1 meets its idempotent default
            linger_ms=20,
            max_block_ms=max_block_ms,
            **dict(client_options),
        )
        with contextlib.suppress(Exception):  # learn the topic's partitions now, not on the first send
            self._producer.partitions_for(topic)

    def publish(self, key: str, value: bytes) -> None:
        """Hand ``value`` to the producer (delivered in the background)."""
        try:
            future = self._producer.send(self.topic, key=key.encode(), value=value)
        except Exception as error:  # KafkaTimeoutError when full or the cluster is away
            self._drop(error)
            return
        future.add_errback(self._drop)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until what was handed over is delivered (or ``timeout_s`` passes)."""
        self._producer.flush(timeout=timeout_s)

    def _drop(self, error: BaseException) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("%d events for %r not delivered so far (last: %r)", self.dropped, self.topic, error)

    def close(self) -> None:
        """Deliver what is buffered (a few seconds at most) and close."""
        self._producer.close(timeout=5)


class KafkaTail:
    """A topic's new values on every partition, without a consumer group (each follower sees all)."""

    def __init__(self, *, topic: str, client_options: Mapping[str, Any]) -> None:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTP

        self.topic = topic
        self._consumer = KafkaConsumer(group_id=None, enable_auto_commit=False, **dict(client_options))
        partitions = [KafkaTP(topic, p) for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            self._consumer.close()
            raise BrokerUnavailable(f"topic {topic!r} does not exist (has the daemon started?)")
        self._consumer.assign(partitions)
        self._consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the end now: an event right after this is not missed
            self._consumer.position(partition)

    def poll(self, timeout_s: float) -> list[bytes]:
        """What arrived, waiting up to ``timeout_s``."""
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        return [r.value for records in polled.values() for r in records if r.value is not None]

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close(autocommit=False)


if __name__ == "__main__":
    _fetch(Connection(int(sys.argv[1]), readable=False), Connection(int(sys.argv[2]), writable=False))
