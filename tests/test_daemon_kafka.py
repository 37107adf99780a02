"""The long-running daemon on the embedded broker: drift, a triggered round, /metrics, admin API, SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lifelong.benchmarks import digits
from lifelong.connectors.broker import EmbeddedBroker, free_port
from tests.kafka_setup import TOKEN, Running, Setup, events, wait_for
from tests.proxy import PausableProxy

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

X, Y, X_TEST, Y_TEST = digits()

NAMED_METRICS = [
    "lifelong_events_total",
    "lifelong_dead_letters_total",
    "lifelong_consumer_lag",
    "lifelong_memory_samples",
    "lifelong_memory_capacity",
    "lifelong_pending_labels",
    "lifelong_updates_total",
    "lifelong_update_duration_seconds",
    "lifelong_model_version",
    "lifelong_prequential_accuracy",
    "lifelong_drift_novelty_ratio",
    "lifelong_drift_label_shift_distance",
    "lifelong_drift_accuracy_drop",
    "lifelong_drift_alarms_total",
    "lifelong_rollbacks_total",
    "lifelong_training_loss",
    "lifelong_forgetting",
]


def test_a_concept_change_raises_drift_triggers_a_round_and_is_rolled_back_on_request(setup) -> None:  # type: ignore[no-untyped-def]
    run = setup(
        "drift",
        schedule={"interval_s": 0, "drift_min_labels": 100, "grace_s": 20},
        monitor={"window": 100, "alarm_hold_s": 5},
        memory={"capacity": 1000},
    )
    old = Y < 5
    # Before: a version trained on digits 0-4, by a burst.
    run.produce(events(X[old][:400], Y[old][:400], "a"))
    first = run.run("run", "--burst")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(run.run("versions", "--json").stdout)[0]["status"] == "champion"

    daemon = Running(run, run.state.parent / "drift.log")
    try:
        drift_and_rollback(run, daemon)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def drift_and_rollback(run: Setup, daemon: Running) -> None:
    old, new = Y < 5, Y >= 5
    # More of the same, some labels late: predicted on arrival, scored when the label comes.
    same = (
        np.concatenate([X[old][400:], X_TEST[Y_TEST < 5]]),
        np.concatenate([Y[old][400:], Y_TEST[Y_TEST < 5]]),
    )
    run.produce([*events(*same, "b", feedback_every=3), ("samples", b"bad", b"{not json")])
    wait_for(lambda: (daemon.value("lifelong_predictions_total") or 0) >= len(same[1]))
    wait_for(lambda: daemon.value("lifelong_prequential_accuracy") is not None)
    scores = {
        "label_shift": "lifelong_drift_label_shift_distance",
        "accuracy": "lifelong_drift_accuracy_drop",
    }
    before = {s: daemon.value(name) for s, name in scores.items()}
    assert daemon.value("lifelong_prequential_accuracy") > 0.8  # type: ignore[operator]
    assert before["label_shift"] < 0.3
    assert daemon.value("lifelong_model_version") == 1
    assert daemon.value("lifelong_dead_letters_total", reason="not_json") == 1

    # The concept changes: digits 5-9 only. Live accuracy and the class mix move; a round follows.
    # Produced over a few seconds, as a live stream is, so the scores can be watched rising.
    producer = threading.Thread(target=run.produce, args=(events(X[new], Y[new], "c"), 25, 0.25))
    producer.start()
    peak = dict(before)

    def promoted() -> bool:
        for name, score in peak.items():
            peak[name] = max(score or 0.0, daemon.value(scores[name]) or 0.0)
        return daemon.value("lifelong_model_version") == 2

    wait_for(promoted, what=lambda: daemon.log.read_text()[-3000:])
    producer.join()
    alarms = {s: daemon.value("lifelong_drift_alarms_total", signal=s) for s in ("label_shift", "accuracy")}
    assert any(count and count >= 1 for count in alarms.values()), alarms
    assert peak["label_shift"] > max(0.5, before["label_shift"] or 0.0), peak  # disjoint classes: near 1
    assert "update round (drift): version 2 promoted" in daemon.log.read_text()
    assert daemon.value("lifelong_updates_total", result="promoted") == 1

    wait_for(lambda: daemon.value("lifelong_consumer_lag", topic=run.samples, partition="0") is not None)
    exported = {name for name, _ in daemon.metrics()}
    for name in NAMED_METRICS:
        assert any(e == name or e.startswith(f"{name}_") for e in exported), name

    # The admin API: no token, no rollback.
    assert daemon.call("/rollback", body=b"{}")[0] == 401
    assert daemon.call("/rollback", body=b"{}", token="not-it")[0] == 401
    assert daemon.call("/versions")[1]["champion"] == 2
    assert daemon.value("lifelong_rollbacks_total", trigger="manual") == 0
    status, answer = daemon.call("/rollback", body=b'{"reason": "test"}', token=TOKEN)
    assert status == 200 and answer == {"previous": 2, "champion": 1, "serving": 1}
    assert daemon.value("lifelong_model_version") == 1
    assert daemon.value("lifelong_rollbacks_total", trigger="manual") == 1
    assert daemon.call("/healthz")[0] == 200 and daemon.call("/readyz")[0] == 200
    running = run.run("check")
    assert running.returncode == 0 and json.loads(running.stdout)["ok"] is True

    code, seconds = daemon.stop(grace_s=20)
    assert code == 0 and seconds < 20, daemon.log.read_text()[-3000:]
    assert "stopped after" in daemon.log.read_text()
    check = run.run("check")
    assert check.returncode == 1 and "stopped" in check.stdout


def test_sigterm_during_a_round_exits_in_the_grace_period_and_the_restart_loses_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    run = setup(
        "sigterm",
        learner={"epochs": 200},  # a round far longer than the grace period
        schedule={"interval_s": 1, "min_new_labels": 500, "first_round_labels": 500, "grace_s": 6},
        memory={"capacity": 1000},
    )
    stream = events(X, Y, "s", feedback_every=4)
    daemon = Running(run, run.state.parent / "sigterm.log")
    try:
        run.produce(stream[: len(stream) // 2])
        wait_for(lambda: daemon.value("lifelong_update_running") == 1, what=lambda: daemon.log.read_text())
        run.produce(stream[len(stream) // 2 :])
        code, seconds = daemon.stop(grace_s=6)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    log = daemon.log.read_text()
    assert code == 0 and seconds < 6 + 5, log[-3000:]  # the grace period, plus exiting the process
    assert "abandon" in log and "stopped after" in log
    assert json.loads(run.run("versions", "--json").stdout or "[]") == []  # nothing half-recorded

    again = run.run("run", "--burst", env={**os.environ, "LIFELONG_LEARNER__EPOCHS": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    status = run.status()
    assert status["samples"] == len(Y) and status["labeled"] == len(Y) and status["waiting"] == 0
    assert sum(status["offsets"].values()) == len(stream)  # every record read once, none skipped
    versions = json.loads(run.run("versions", "--json").stdout)
    assert len(versions) == 1 and versions[0]["lineage"]["samples"] > 0
    assert versions[0]["lineage"]["label_events"][0] == 1  # the abandoned round's labels were trained


def test_a_30_second_broker_outage_loses_nothing_and_readiness_shows_it(
    unique, make_config, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as broker:
        proxy = PausableProxy(port=proxy_port, upstream=(broker.host, broker.port))
        proxy.start()
        try:
            through = Setup(
                _Via(f"127.0.0.1:{proxy_port}"),  # type: ignore[arg-type]
                unique,
                make_config,
                tmp_path,
                "outage",
                learner={"enabled": False},
            )
            outage(through, proxy)
        finally:
            proxy.close()


class _Via:
    """Stands for the broker where a Setup only needs its address (here: the proxy's)."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers


SEND = """
import base64, json, sys
from kafka import KafkaProducer
bootstrap, samples, feedback, path = sys.argv[1:]
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, delivery_timeout_ms=300000)
topics = {"samples": samples, "feedback": feedback}
for topic in topics.values():
    producer.partitions_for(topic)
print("ready", flush=True)
sys.stdin.readline()
for line in open(path):
    kind, key, value = json.loads(line)
    producer.send(topics[kind], base64.b64decode(value), key=key.encode())
producer.flush()
producer.close()
"""


class Sender:
    """A producer process connected before an outage, sending on :meth:`go`."""

    def __init__(self, run: Setup, stream: list[tuple[str, bytes, bytes]], path: Path) -> None:
        path.write_text(
            "".join(
                json.dumps([k, key.decode(), base64.b64encode(v).decode()]) + "\n" for k, key, v in stream
            )
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SEND,
                run.options["bootstrap_servers"],
                run.samples,
                run.feedback,
                str(path),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.close()

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def outage(run: Setup, proxy: PausableProxy) -> None:
    stream = events(X, Y, "o", feedback_every=5)
    before, after = stream[: len(stream) // 2], stream[len(stream) // 2 :]
    daemon = Running(run, run.state.parent / "outage.log")
    try:
        run.produce(before)

        def accepted() -> float:
            return daemon.value("lifelong_events_total", topic=run.samples, outcome="accepted") or 0.0

        wait_for(lambda: accepted() >= sum(1 for kind, _, _ in before if kind == "samples"))
        assert daemon.call("/readyz")[0] == 200

        # A producer that knows the topics: what it sends during the outage waits in its buffer.
        # (In its own process: kafka-python leaks the sockets of refused connection attempts.)
        sender = Sender(run, after, run.state.parent / "after.jsonl")
        proxy.pause()
        sender.go()
        wait_for(lambda: daemon.call("/readyz")[0] == 503, timeout_s=20)
        paused_at = time.monotonic()
        while time.monotonic() - paused_at < 30:
            assert daemon.process.poll() is None, daemon.log.read_text()[-3000:]
            assert daemon.call("/healthz")[0] == 200
            status, body = daemon.call("/readyz")
            assert status == 503 and body["checks"]["broker_reachable"] is False
            time.sleep(2)
        proxy.resume()
        assert sender.wait(timeout_s=180) == 0
        wait_for(lambda: accepted() >= len(Y), what=lambda: daemon.log.read_text()[-3000:])
        wait_for(lambda: daemon.call("/readyz")[0] == 200, timeout_s=60)
        code, _ = daemon.stop(grace_s=20)
        assert code == 0, daemon.log.read_text()[-3000:]
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    status = run.status()
    assert status["samples"] == len(Y) and status["labeled"] == len(Y) and status["waiting"] == 0
    assert set(run.labels()) == {f"o{i}" for i in range(len(Y))}
