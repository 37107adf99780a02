"""The long-running daemon on the embedded broker: drift, a triggered round, /metrics, admin API, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lifelong.benchmarks import digits
from lifelong.events import encode_feedback, encode_sample
from tests.kafka_setup import CLI, TOKEN, Setup

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
    "lifelong_drift_score",
    "lifelong_drift_alarms_total",
    "lifelong_rollbacks_total",
    "lifelong_training_loss",
    "lifelong_forgetting",
]


def events(
    x: np.ndarray, y: np.ndarray, prefix: str, *, feedback_every: int = 0
) -> list[tuple[str, bytes, bytes]]:
    """Samples labeled inline, or (every ``feedback_every``-th) through feedback after all the samples."""
    out, late = [], []
    for i, (row, label) in enumerate(zip(x, y, strict=True)):
        id = f"{prefix}{i}"
        by_feedback = feedback_every and i % feedback_every == 0
        out.append(
            ("samples", id.encode(), encode_sample(id, row.tolist(), None if by_feedback else int(label)))
        )
        if by_feedback:
            late.append(("feedback", id.encode(), encode_feedback(id, int(label))))
    return out + late


class Running:
    """A `lifelong run` in the background, with its HTTP port found from the heartbeat."""

    def __init__(self, setup: Setup, log: Path) -> None:
        self.setup = setup
        self.log = log
        with open(log, "w") as stderr:
            self.process = subprocess.Popen([*CLI, "run", "--config", str(setup.config)], stderr=stderr)
        self.base = ""
        wait_for(self._started, timeout_s=180, what=lambda: log.read_text()[-3000:])

    def _started(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            beat = json.loads((self.setup.state / "HEARTBEAT").read_text())
        except (OSError, ValueError):
            return False
        if beat.get("state") != "running" or not beat.get("http_port"):
            return False
        self.base = f"http://127.0.0.1:{beat['http_port']}"
        return True

    def call(self, path: str, *, body: bytes | None = None, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path, data=body, method="POST" if body is not None else "GET"
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        return status, raw.decode() if path == "/metrics" else json.loads(raw)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = self.call("/metrics")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def stop(self, grace_s: float) -> tuple[int, float]:
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=grace_s + 30)
        return code, time.monotonic() - started


def wait_for(
    condition: Callable[[], bool], timeout_s: float = 180.0, what: Callable[[], str] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what()}")
        time.sleep(0.25)


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
    before = {s: daemon.value("lifelong_drift_score", signal=s) for s in ("label_shift", "accuracy")}
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
            peak[name] = max(score or 0.0, daemon.value("lifelong_drift_score", signal=name) or 0.0)
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

    code, seconds = daemon.stop(grace_s=20)
    assert code == 0 and seconds < 20, daemon.log.read_text()[-3000:]
    assert "stopped after" in daemon.log.read_text()
    check = run.run("check")
    assert check.returncode == 1 and "stopped" in check.stdout


def test_sigterm_during_a_round_exits_in_the_grace_period_and_the_restart_loses_nothing(setup) -> None:  # type: ignore[no-untyped-def]
    run = setup(
        "sigterm",
        learner={"epochs": 200},  # a round far longer than the grace period
        schedule={"interval_s": 1, "min_new_labels": 500, "grace_s": 6},
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
