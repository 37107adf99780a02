"""Kafka through kafka-python: the source of samples and feedback (see :mod:`.kafka_topics` for the rest).

Parsing records is most of a kafka-python consumer's work and holds the GIL, so
:class:`KafkaSource` runs the consumer in a child process (:mod:`.fetcher`) and
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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from lifelong.connectors.base import Batch, Lag, TopicPartition
from lifelong.errors import LifelongError

log = logging.getLogger(__name__)

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
            [sys.executable, "-m", "lifelong.connectors.fetcher", str(inbox_write), str(outbox_read)],
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
