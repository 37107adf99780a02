"""The fetcher process: a kafka-python consumer for a share of the partitions, beside the daemon.

:class:`~lifelong.connectors.kafka.KafkaSource` starts one per share as
``python -m lifelong.connectors.fetcher INBOX OUTBOX`` (two pipe descriptors). It
polls, decodes each batch with the daemon's decoder, and sends the columns back
pickled; the daemon sends ``("commit", positions)`` and ``("stop", None)``. No
record stops it: should decoding a batch raise, the records are decoded one by
one and those that still raise are rejected (``undecodable``).
Parsing records holds the GIL, so this runs in its own process, not a thread.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTP
from kafka.errors import KafkaError, UnknownTopicOrPartitionError
from kafka.structs import OffsetAndMetadata

from lifelong.connectors.base import TopicPartition
from lifelong.events import Decoded, Reason

_IDLE_POLL_MS = 200
# Decoded batches a fetcher may hold for the daemon beyond the pipe's buffer (each up to a few MB).
_BATCHES_AHEAD = 8


def run(outbox: Connection, inbox: Connection) -> None:
    """The fetcher process: poll Kafka, ship columns to the daemon, commit on request."""
    config: dict[str, Any] = inbox.recv()
    # Signals go to the daemon, which stops us through the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    index = config["share"][0]
    decode = config["decode"]

    sender = _Sender(outbox)

    def send(kind: str, payload: Any, highwater: dict[TopicPartition, int]) -> None:
        sender.send(pickle.dumps((kind, payload, highwater, index), protocol=5))

    consumer: Any = None
    backoff = 0.5
    try:
        while os.getppid() == config["parent"]:
            try:
                if consumer is None:
                    consumer = _connect(config)
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
        sender.close()
        if consumer is not None:
            consumer.close(autocommit=False)


class _Sender:
    """Writes a fetcher's messages to the daemon from a thread, a few batches ahead.

    While the daemon is busy with something else (a commit that checkpoints, the memory
    catching up) the fetcher keeps polling and decoding instead of waiting on a full pipe.
    """

    def __init__(self, outbox: Connection, *, ahead: int = _BATCHES_AHEAD) -> None:
        self._outbox = outbox
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=ahead)
        self._broken = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lifelong-fetcher-sender", daemon=True)
        self._thread.start()

    def send(self, message: bytes) -> None:
        """Queue ``message``, waiting while ``ahead`` are queued; BrokenPipeError once the daemon is gone."""
        while not self._broken.is_set():
            try:
                self._queue.put(message, timeout=0.5)
                return
            except queue.Full:
                continue
        raise BrokenPipeError("the daemon closed the pipe")

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self._outbox.send_bytes(message)
            except OSError:  # BrokenPipeError: the daemon exited
                self._broken.set()
                return

    def close(self) -> None:
        """Stop without waiting: what is still queued was not stored, so it is read again next time."""
        self._broken.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)


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
    decoded = _decode(decode, topic, values)
    keep: list[Any] = [None] * len(records)
    keys = [None] * len(records)
    headers: list[Any] = [()] * len(records)
    for position, _, _ in decoded.rejections:
        record = records[position]
        keep[position], keys[position] = record.value, record.key
        headers[position] = tuple(record.headers) if record.headers else ()
    return (topic, partition, offsets, keep, timestamps, keys, headers, decoded)


def _decode(decode: Any, topic: str, values: list[bytes | None]) -> Decoded:
    """``decode`` the batch; should that raise, each record alone, rejecting those that still raise.

    The decoder turns a message's exception into its rejection already; this keeps one
    that escapes anyway from stopping the fetcher, and with it the daemon, on every restart.
    """
    try:
        decoded: Decoded = decode(topic, values)
        return decoded
    except Exception:
        pass
    feedback = False
    rows: list[Any] = []
    positions: list[int] = []
    rejections: list[tuple[int, str, str]] = []
    for position, value in enumerate(values):
        try:
            one: Decoded = decode(topic, [value])
        except Exception as error:
            detail = f"decoding raised {type(error).__name__}: {error}"
            rejections.append((position, Reason.UNDECODABLE.value, detail))
            continue
        feedback = one.feedback
        rows += one.rows
        positions += [position] * len(one.rows)
        rejections += [(position, reason, detail) for _, reason, detail in one.rejections]
    return Decoded(feedback, rows, positions, rejections)


def _connect(config: dict[str, Any]) -> Any:
    consumer = KafkaConsumer(
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
            raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
        partitions += [KafkaTP(topic, p) for p in sorted(found)]
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


if __name__ == "__main__":
    run(Connection(int(sys.argv[1]), readable=False), Connection(int(sys.argv[2]), writable=False))
