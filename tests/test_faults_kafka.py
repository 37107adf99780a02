"""Faults of the broker under a running daemon: frozen (SIGSTOP), gone at shutdown, topics made by producers.

Each test runs its own embedded broker, since it freezes or stops it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from lifelong.benchmarks import digits
from lifelong.connectors.base import DeadLetter, Record
from lifelong.connectors.broker import EmbeddedBroker
from lifelong.connectors.headers import source_of
from lifelong.connectors.kafka import BrokerUnavailable, ensure_topics
from lifelong.connectors.kafka_topics import KafkaDeadLetterSink
from tests.kafka_setup import TOKEN, Running, Setup, events, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

X, Y, _, _ = digits()


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


def frozen(broker: EmbeddedBroker) -> Callable[[], None]:
    """SIGSTOP the broker: its kernel still accepts connections, the process answers nothing."""
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)
    return lambda: os.kill(broker.pid, signal.SIGCONT)  # type: ignore[arg-type]


def bad_and_good(prefix: str, count: int) -> list[tuple[str, bytes, bytes]]:
    """Labeled digits, every third one replaced by a message that breaks the wire contract."""
    stream = events(X[:count], Y[:count], prefix)
    return [
        (kind, key, b'{"id": "' + key + b'", "x": "not a list"}' if i % 3 == 0 else value)
        for i, (kind, key, value) in enumerate(stream)
    ]


def test_a_frozen_broker_drops_readiness_keeps_liveness_and_loses_nothing(
    own_broker: EmbeddedBroker, unique, make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run = _setup(own_broker, unique, make_config, tmp_path)
    stream = bad_and_good("f", 1500)
    bad = sum(1 for kind, _, value in stream if b"not a list" in value)
    daemon = Running(run, run.state.parent / "frozen.log")
    try:
        run.produce(stream[:300])
        wait_for(lambda: run_total(daemon, run) >= 300)
        assert daemon.call("/readyz")[0] == 200
        run.produce(stream[300:])  # a fetcher may hold some of these, dead letters due, at the freeze

        thaw = frozen(own_broker)
        try:
            started = time.monotonic()
            health: list[int] = []

            def not_ready() -> bool:
                health.append(daemon.call("/healthz")[0])
                return daemon.call("/readyz")[0] == 503

            wait_for(not_ready, what=lambda: daemon.log.read_text()[-3000:])
            fell_after = time.monotonic() - started
            # Frozen for a while longer: the loop goes on (liveness), never held by a broker call.
            until = time.monotonic() + 15
            while time.monotonic() < until:
                health.append(daemon.call("/healthz")[0])
                assert daemon.call("/readyz")[0] == 503
        finally:
            thaw()
        assert fell_after < 20, fell_after  # documented: within 10 s (2 s probe interval + 5 s timeout)
        assert set(health) == {200}, health

        wait_for(lambda: daemon.call("/readyz")[0] == 200, what=lambda: daemon.log.read_text()[-3000:])
        wait_for(lambda: run_total(daemon, run) >= len(stream), what=lambda: run_total(daemon, run))
        code, _ = daemon.stop(grace_s=20)
        assert code == 0, daemon.log.read_text()[-3000:]
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    status = run.status()
    assert status["samples"] == len(stream) - bad
    assert status["dead_letters"] == bad
    sources = [source_of(record.headers) for record in run.dead_letters()]
    assert len(sources) == bad and len(set(sources)) == bad  # each bad record dead-lettered once


def _setup(broker: EmbeddedBroker, unique, make_config, tmp_path: Path) -> Setup:  # type: ignore[no-untyped-def]
    return Setup(
        broker,
        unique,
        make_config,
        tmp_path,
        "frozen",
        learner={"enabled": False},
        http={"port": 0, "admin_token": TOKEN, "heartbeat_stale_s": 12, "heartbeat_s": 1},
    )


def run_total(daemon: Running, run: Setup) -> float:
    accepted = daemon.value("lifelong_events_total", topic=run.samples, outcome="accepted") or 0.0
    rejected = daemon.value("lifelong_events_total", topic=run.samples, outcome="rejected") or 0.0
    return accepted + rejected


def test_sigterm_exits_0_when_the_broker_stops_answering_with_a_model_event_unsent(
    own_broker: EmbeddedBroker, unique, make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run = Setup(
        own_broker,
        unique,
        make_config,
        tmp_path,
        "shutdown",
        learner={"epochs": 1, "gate_recent_tolerance": 1.0, "gate_memory_tolerance": 1.0},
        schedule={"interval_s": 3600, "grace_s": 10},
        memory={"capacity": 500},
    )
    for part, rows in (("a", slice(0, 400)), ("b", slice(400, 800))):  # two promoted versions
        run.produce(events(X[rows], Y[rows], part))
        burst = run.run("run", "--burst")
        assert burst.returncode == 0, burst.stderr[-3000:]
    assert [v["status"] for v in json.loads(run.run("versions", "--json").stdout)] == ["promoted", "champion"]

    daemon = Running(run, run.state.parent / "shutdown.log")
    try:
        thaw = frozen(own_broker)
        try:
            # The rollback's model event waits in the producer: the broker answers nothing.
            status, body = daemon.call("/rollback", body=b"{}", token=TOKEN)
            assert status == 200 and body["champion"] == 1, body
            code, seconds = daemon.stop(grace_s=10)
        finally:
            thaw()
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    assert code == 0, daemon.log.read_text()[-3000:]
    assert seconds < 60
    assert [v["status"] for v in json.loads(run.run("versions", "--json").stdout)] == [
        "champion",
        "rolled_back",
    ]


def test_dead_letters_never_hold_the_caller_longer_than_the_timeout(own_broker: EmbeddedBroker) -> None:
    topic = "dead.bounded"
    options = {"bootstrap_servers": own_broker.bootstrap_servers}
    ensure_topics(client_options=options, topics=[topic])
    sink = KafkaDeadLetterSink(topic=topic, client_options=options, timeout_s=2.0)
    letter = DeadLetter(Record("samples", 0, 7, b"{bad"), "not_json", "broken")
    assert sink.send([letter])  # the producer knows the topic
    thaw = frozen(own_broker)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            sink.send([letter])
        took = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            sink.sent_since({})
        took_back = time.monotonic() - started
        started = time.monotonic()
        sink.close()
        took_close = time.monotonic() - started
    finally:
        thaw()
    assert took < 2.0 + 3 and took_back < 2.0 * 2 + 3 and took_close < 2.0 * 2 + 3, (
        took,
        took_back,
        took_close,
    )


def test_a_topic_a_producer_created_with_other_partitions_is_named_in_a_warning(
    broker: EmbeddedBroker, unique, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    options = {"bootstrap_servers": broker.bootstrap_servers}
    early, fresh = unique("early"), unique("fresh")
    admin = KafkaAdminClient(**options)
    admin.create_topics([NewTopic(early, 4, 1)])  # as auto-creation by an early producer does
    admin.close()
    with caplog.at_level(logging.WARNING, logger="lifelong.connectors.kafka"):
        created = ensure_topics(client_options=options, topics=[early, fresh], partitions=2)
    assert created == [fresh]
    warned = [r for r in caplog.records if r.name == "lifelong.connectors.kafka"]
    assert len(warned) == 1 and warned[0].args == (early, 4, 2), [r.getMessage() for r in warned]
