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
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from lifelong.config import KafkaSettings
from lifelong.connectors.base import Batch, Lag, TopicPartition
from lifelong.errors import LifelongError

log = logging.getLogger(__name__)

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_PIPE_BYTES = 1 << 20


class BrokerUnavailable(LifelongError, ConnectionError):
    """The Kafka cluster cannot be reached or refused an operation."""


class FetcherExited(LifelongError, RuntimeError):
    """A fetcher process died: not an outage to wait out, the daemon must restart."""


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments shared by consumers, producers and the admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "client_id": kafka.client_id,
        "request_timeout_ms": kafka.request_timeout_ms,
        "security_protocol": kafka.security_protocol,
    }
    optional = {
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_plain_username": kafka.sasl_plain_username,
        "sasl_plain_password": (
            kafka.sasl_plain_password.get_secret_value() if kafka.sasl_plain_password else None
        ),
        "ssl_cafile": str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
        "ssl_certfile": str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
        "ssl_keyfile": str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
    }
    options.update({key: value for key, value in optional.items() if value is not None})
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = kafka.ssl_check_hostname
    return options


def ensure_topics(
    *, client_options: Mapping[str, Any], topics: Sequence[str], partitions: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created.

    A topic that exists with another partition count than ``partitions`` is left as it is, with a
    warning: a producer that started before the daemon gets the broker's default count.
    """
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
        listed = set(admin.list_topics())
        missing = [t for t in topics if t not in listed]
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, partitions, 1)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        existing = [t for t in topics if t not in created]
        if existing:
            _warn_partitions(admin.describe_topics(existing), partitions)
        return created
    except KafkaError as error:
        raise BrokerUnavailable(
            f"cannot create topics on Kafka at {client_options.get('bootstrap_servers')}: {error!r}"
        ) from None
    finally:
        admin.close()


def _warn_partitions(described: Sequence[Mapping[str, Any]], partitions: int) -> None:
    for topic in described:
        found = len(topic.get("partitions") or ())
        if found and found != partitions:
            log.warning(
                "topic %r has %d partitions, [kafka] topic_partitions is %d: it was created before the "
                "daemon created it (a producer that starts first gets the broker's default count); "
                "it is used as it is. Start producers once /readyz answers 200, or create the topics "
                "beforehand",
                topic.get("name"),
                found,
                partitions,
            )


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
        probe_timeout_s: float = 5.0,
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
        self._probe = _Probe(
            self.client_options["bootstrap_servers"],
            timeout_s=probe_timeout_s,
            tls=probe_tls(self.client_options),
        )
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
        """Whether a bootstrap server answered the last probe and the fetchers' last polls did not fail."""
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

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the fetchers: all asked at once, each killed if it has not exited within ``timeout_s``."""
        self._probe.close()
        for child in self._children:
            child.ask_to_stop()
        deadline = time.monotonic() + timeout_s
        for child in self._children:
            child.close(max(0.0, deadline - time.monotonic()))


# An ApiVersions request (key 18, version 0, correlation id 1, client id "lifelong-probe"): the one
# request every Kafka broker answers before authentication, so a reply means the broker is serving.
_CLIENT_ID = b"lifelong-probe"
_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID
_API_VERSIONS_REQUEST = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS


class _Probe:
    """Whether a bootstrap server answers a request within ``timeout_s``, checked on a thread.

    A connection alone proves little: a frozen or overloaded broker's kernel still accepts
    connections. The probe sends an ApiVersions request (over TLS where the cluster uses it) and
    waits for the reply, so readiness falls within ``interval_s + timeout_s`` of a broker that stops
    answering, without ever blocking the consumer loop.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        interval_s: float = 2.0,
        timeout_s: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        listed = servers.split(",") if isinstance(servers, str) else list(servers)
        self.addresses = [(host, int(port)) for host, _, port in (s.strip().rpartition(":") for s in listed)]
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.tls = tls
        self.reachable = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lifelong-broker-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            reachable = any(self._answers(address) for address in self.addresses)
            if reachable != self.reachable:
                log.log(
                    logging.INFO if reachable else logging.WARNING,
                    "Kafka %s",
                    "answers again"
                    if reachable
                    else f"does not answer at {self.addresses} within {self.timeout_s:g}s",
                )
            self.reachable = reachable

    def _answers(self, address: tuple[str, int]) -> bool:
        deadline = time.monotonic() + self.timeout_s
        try:
            with socket.create_connection(address, timeout=self.timeout_s) as raw:
                conn = raw if self.tls is None else self.tls.wrap_socket(raw, server_hostname=address[0])
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                conn.sendall(_API_VERSIONS_REQUEST)
                reply = b""
                while len(reply) < 8:  # size and correlation id: the broker read and answered
                    conn.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = conn.recv(8 - len(reply))
                    if not chunk:
                        return False
                    reply += chunk
                return bool(struct.unpack(">i", reply[4:8])[0] == 1)
        except (OSError, ssl.SSLError):  # refused, reset, timed out
            return False

    def close(self) -> None:
        self._stop.set()


def probe_tls(client_options: Mapping[str, Any]) -> ssl.SSLContext | None:
    """A TLS context for the readiness probe when the cluster speaks TLS (it only asks; trusts nothing)."""
    if client_options.get("security_protocol") not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=client_options.get("ssl_cafile"))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the probe sends nothing secret and reads only a header
    certfile = client_options.get("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, client_options.get("ssl_keyfile"))
    return context


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
        self._asked = False
        self.send(config)

    def send(self, message: Any) -> None:
        try:
            self.outbox.send(message)
        except OSError:
            raise BrokerUnavailable("a Kafka fetcher process exited") from None

    def ask_to_stop(self) -> None:
        if self.process.poll() is None and not self._asked:
            self._asked = True
            with contextlib.suppress(BrokerUnavailable):
                self.send(("stop", None))

    def close(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.ask_to_stop()
            try:  # one blocked in a broker call (a commit to a frozen broker) is killed
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.inbox.close()
        self.outbox.close()
