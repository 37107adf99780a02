"""Kafka through kafka-python, the daemon's other uses: the dead-letter sink, event publishing, a tail.

The source of samples and feedback, with its fetcher processes, is :mod:`lifelong.connectors.kafka`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lifelong.connectors.base import DeadLetter
from lifelong.connectors.headers import dead_letter_headers, source_of
from lifelong.connectors.kafka import BrokerUnavailable

log = logging.getLogger(__name__)


def close_producer(producer: Any, timeout_s: float) -> bool:
    """Deliver what ``producer`` buffers within ``timeout_s``, then close it; whether all was delivered.

    kafka-python's own ``close`` raises when its flush times out and then leaves the I/O thread
    running, which keeps the process from exiting; here what is left is abandoned instead.
    """
    from kafka.errors import KafkaError

    try:
        producer.flush(timeout=timeout_s)
        delivered = True
    except KafkaError:
        delivered = False
        sender = getattr(producer, "_sender", None)
        if sender is not None:  # fail what is buffered, so the close below does not wait for it
            sender.force_close()
            sender.join(timeout_s)
    try:
        producer.close(timeout=timeout_s if delivered else 0)
    except KafkaError as error:
        log.warning("the Kafka producer did not close cleanly: %r", error)
    return delivered


class KafkaDeadLetterSink:
    """Produces dead letters to a topic with reason and source headers, acknowledged by all replicas.

    No call waits for the cluster longer than ``timeout_s``: what is not acknowledged by then
    raises :class:`BrokerUnavailable`, and the caller keeps the batch to send again.
    """

    def __init__(
        self,
        *,
        topic: str,
        client_options: Mapping[str, Any],
        max_value_bytes: int = 900_000,
        timeout_s: float = 5.0,
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self.client_options = dict(client_options)
        self.max_value_bytes = max_value_bytes
        self.timeout_s = timeout_s
        self._producer = KafkaProducer(
            acks="all", linger_ms=5, max_block_ms=int(timeout_s * 1000), **self.client_options
        )

    def send(self, letters: Sequence[DeadLetter]) -> Mapping[int, int]:
        """Deliver and flush; return the next offset of each partition written."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.timeout_s
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
            self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as error:
            raise BrokerUnavailable(f"dead letters not delivered to {self.topic!r}: {error!r}") from None
        ends: dict[int, int] = {}
        for future in futures:
            try:
                metadata = future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception as error:
                raise BrokerUnavailable(f"dead letter not delivered to {self.topic!r}: {error!r}") from None
            ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
        return ends

    def sent_since(self, positions: Mapping[int, int]) -> set[tuple[str, int, int]]:
        """Sources of the dead letters at or after ``positions`` (read back without a group)."""
        from kafka.errors import KafkaError

        try:
            # Letters of a send that timed out may still be buffered: settle them before reading back,
            # or one delivered after the read would go out twice.
            self._producer.flush(timeout=self.timeout_s)
            return self._sent_since(positions)
        except KafkaError as error:
            raise BrokerUnavailable(f"cannot read back {self.topic!r}: {error!r}") from None

    def _sent_since(self, positions: Mapping[int, int]) -> set[tuple[str, int, int]]:
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KafkaTP

        deadline = time.monotonic() + self.timeout_s
        consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, **self.client_options)
        try:
            found_partitions = consumer.partitions_for_topic(self.topic) or set()
            partitions = [KafkaTP(self.topic, p) for p in sorted(found_partitions)]
            if not partitions:
                return set()
            ends = consumer.end_offsets(partitions, timeout_ms=int(self.timeout_s * 1000))
            todo = [tp for tp in partitions if ends[tp] > positions.get(tp.partition, 0)]
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, positions.get(tp.partition, 0))
            found: set[tuple[str, int, int]] = set()
            while todo and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
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
        """Deliver what is buffered (``timeout_s`` at most) and close.

        A letter not acknowledged by then is not lost: its batch's offsets were not stored, so the
        next start reads the record again and sends the letter then.
        """
        if not close_producer(self._producer, self.timeout_s):
            log.warning(
                "dead letters for %r not acknowledged at shutdown: their records are read and "
                "dead-lettered again at the next start",
                self.topic,
            )


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
        self._outstanding = 0  # handed to the producer, neither delivered nor failed yet
        self._count = threading.Lock()
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
        with self._count:
            self._outstanding += 1
        future.add_callback(self._settled)
        future.add_errback(self._failed)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until what was handed over is delivered (or ``timeout_s`` passes)."""
        self._producer.flush(timeout=timeout_s)

    def _settled(self, _: Any) -> None:
        with self._count:
            self._outstanding -= 1

    def _failed(self, error: BaseException) -> None:
        self._settled(None)
        self._drop(error)

    def _drop(self, error: BaseException, count: int = 1) -> None:
        with self._count:
            before, self.dropped = self.dropped, self.dropped + count
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.warning("%d events for %r not delivered so far (last: %r)", self.dropped, self.topic, error)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is buffered (``timeout_s`` at most) and close; what is left is counted dropped."""
        if close_producer(self._producer, timeout_s):
            return
        with self._count:
            left, self._outstanding = self._outstanding, 0
        if left > 0:
            self._drop(TimeoutError(f"not delivered within {timeout_s:g}s of closing"), left)


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
