"""``lifelong demo``: the whole loop on one machine, against the embedded broker, with a report.

Streams split Fashion-MNIST (five tasks of two classes, one after the other;
scikit-learn's digits when Debian's ``dataset-fashion-mnist`` is not installed)
as samples, half labeled inline and half labeled later through feedback, plus
a few malformed messages. The daemon runs as in production (scheduled and
drift-triggered rounds beside the consumer, replay from a 500-sample memory,
online EWC, the gate, live accuracy, drift signals, metrics and the admin API
over HTTP). The stream is paced to what the machine trains: the next chunk is
sent once the labels waiting fit in one round. At each task's end the demo
has the daemon train what remains and scores the serving model on every
task's test set (a row of the accuracy matrix). The same stream then goes
through naive fine-tuning for contrast. It ends by rolling back through the
admin API, and writes ``demo-report/`` (HTML, PNG plots, ``summary.json``).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.benchmarks import DatasetMissingError, Scenario, scenario
from lifelong.config import Settings, load_settings
from lifelong.connectors.broker import EmbeddedBroker
from lifelong.connectors.kafka import client_options
from lifelong.connectors.kafka_topics import KafkaPublisher
from lifelong.daemon.app import Daemon
from lifelong.daemon.wiring import build_daemon
from lifelong.demo.report import Timeline, write_report
from lifelong.events import encode_feedback, encode_sample
from lifelong.labeled import Labeled
from lifelong.learners.base import Learner
from lifelong.learners.configured import build_learner

log = logging.getLogger(__name__)

MEMORY = 500
ROUND = 1000
CHUNK = 500
MALFORMED = [b"{not json", b"[1, 2, 3]", b'{"x": [0.0], "y": 1}', b'{"id": "short", "x": [1.0, 2.0]}']


@dataclass
class Progress:
    """What the live view shows."""

    total: int
    streamed: int = 0
    task: int = 0
    tasks: int = 0
    phase: str = "starting"


def demo_scenario(dataset: str, per_task: int | None) -> Scenario:
    """``dataset``; ``auto``: split Fashion-MNIST, or split digits when Fashion-MNIST is not installed."""
    if dataset == "split-digits":
        return scenario("split-digits", per_task=per_task)
    try:
        return scenario("split-fashion-mnist", per_task=per_task or 6000)
    except DatasetMissingError as error:
        if dataset != "auto":
            raise
        print(f"   ({error}; using scikit-learn's digits instead)")
        return scenario("split-digits", per_task=per_task)


def demo_settings(sc: Scenario, *, bootstrap: str, state_dir: Path, token: str) -> Settings:
    """The daemon's settings for the demo: production defaults, a 500-sample memory, rounds of 1,000."""
    return load_settings(
        None,
        environ={
            "LIFELONG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LIFELONG_DATA__FEATURES": str(sc.features),
            "LIFELONG_DATA__MAX_CLASSES": str(sc.classes),
            "LIFELONG_STATE__DIR": str(state_dir),
            "LIFELONG_MEMORY__CAPACITY": str(MEMORY),
            "LIFELONG_MEMORY__DTYPE": "uint8" if sc.tasks[0].x.dtype == np.uint8 else "float32",
            "LIFELONG_MEMORY__FOLLOW_INTERVAL_S": "0.5",
            "LIFELONG_LEARNER__MODEL": sc.model,
            "LIFELONG_SCHEDULE__INTERVAL_S": "1",
            "LIFELONG_SCHEDULE__MIN_NEW_LABELS": str(ROUND),
            "LIFELONG_SCHEDULE__MAX_ROUND_LABELS": str(ROUND),
            "LIFELONG_SCHEDULE__DRIFT_COOLDOWN_S": "20",
            "LIFELONG_HTTP__PORT": "0",
            "LIFELONG_ADMIN_TOKEN": token,
        },
    )


class Demo:
    """Runs the stream through a daemon and records what happens, for the live view and the report."""

    def __init__(self, sc: Scenario, daemon: Daemon, settings: Settings, token: str) -> None:
        self.sc = sc
        self.daemon = daemon
        self.settings = settings
        self.token = token
        self.timeline = Timeline(tasks=len(sc.tasks))
        self.progress = Progress(total=sum(len(t.ids) for t in sc.tasks), tasks=len(sc.tasks))
        self.matrix: list[list[float]] = []
        self._evaluated: int | None = None
        self._last_point = 0.0
        rng = np.random.default_rng(0)
        # A fixed 500 test images per task for the curves (the matrix rows use every test image).
        self._probe = [rng.permutation(len(t.test_y))[:500] for t in sc.tasks]
        options = client_options(settings.kafka)
        self._topics = {
            topic: KafkaPublisher(topic=topic, client_options=options, max_block_ms=60_000)
            for topic in (settings.kafka.samples_topic, settings.kafka.feedback_topic)
        }

    @property
    def control(self) -> Any:
        assert self.daemon.control is not None
        return self.daemon.control

    def stream(self) -> None:
        """Every task, chunk by chunk, paced to the rounds; a matrix row after each task."""
        binary = self.sc.features > 64
        late: list[tuple[str, int]] = []
        for number, task in enumerate(self.sc.tasks):
            self.progress.task, self.progress.phase = number + 1, "streaming"
            for start in range(0, len(task.ids), CHUNK):
                self._wait_for_room()
                for i in range(start, min(start + CHUNK, len(task.ids))):
                    id, label = task.ids[i], int(task.y[i])
                    inline = i % 2 == 0
                    value = encode_sample(id, task.x[i], label if inline else None, binary=binary)
                    self._send(self.settings.kafka.samples_topic, id, value)
                    if not inline:
                        late.append((id, label))
                if start == 0 and number == 0:
                    for n, bad in enumerate(MALFORMED):
                        self._send(self.settings.kafka.samples_topic, f"bad-{n}", bad)
                # Labels arrive one chunk late: predicted on arrival, scored when the label comes.
                for id, label in late[: -CHUNK // 2] if len(late) > CHUNK // 2 else []:
                    self._send(self.settings.kafka.feedback_topic, id, encode_feedback(id, label))
                late = late[-CHUNK // 2 :] if len(late) > CHUNK // 2 else late
                self._flush()
                self.progress.streamed += min(CHUNK, len(task.ids) - start)
                self._observe()
            for id, label in late:
                self._send(self.settings.kafka.feedback_topic, id, encode_feedback(id, label))
            late = []
            self._flush()
            self.progress.phase = "training the rest of the task"
            self._finish_task()
            self.matrix.append(evaluate(self.control.updater.champion(), self.sc))
            self.timeline.task_ends.append(self.progress.streamed)
            self._observe()
        for publisher in self._topics.values():
            publisher.close()

    def _send(self, topic: str, key: str, value: bytes) -> None:
        self._topics[topic].publish(key, value)

    def _flush(self) -> None:
        for publisher in self._topics.values():
            publisher.flush()
        dropped = sum(p.dropped for p in self._topics.values())
        if dropped:
            raise RuntimeError(f"{dropped} demo events were not delivered to the embedded broker")

    def _wait_for_room(self) -> None:
        """Hold the stream while a round is due: the demo goes as fast as it trains.

        A round the gate defers leaves its labels waiting; the stream goes on (the next round
        waits for new labels).
        """
        while self._stored() < self.progress.streamed or self.control.due("interval"):
            self._observe()
            time.sleep(0.2)

    def _lagging(self) -> bool:
        return not self.daemon.ingestor.source.lag().drained

    def _finish_task(self) -> None:
        """Wait until every label sent is stored, then train what is left, however few."""
        sent = self.progress.streamed
        while self._lagging() or self._stored() < sent:
            self._observe()
            time.sleep(0.2)
        failed, deferred = self.control.counts["failed"], self.control.counts["deferred"]
        while self.control.updater.pending() > 0:
            if self.control.counts["failed"] > failed:
                raise RuntimeError("an update round failed during the demo; see the log above")
            if self.control.counts["deferred"] > deferred:
                break  # too few held-out labels to judge what is left: they wait for the next task
            if not self.control.running:
                self.control.run_round("task-end", force=True)
            self._observe()
            time.sleep(0.2)
        while self.control.running:
            time.sleep(0.1)
        self._observe()

    def _stored(self) -> int:
        totals = self.daemon.ingestor.totals
        return int(totals["stored"])

    def _observe(self) -> None:
        """One point of the timeline; an evaluation of the serving model when it changed."""
        control = self.control
        metrics = self.daemon.metrics
        assert metrics is not None
        registry = metrics.registry
        serving = control.updater.serving
        if serving is not None and serving != self._evaluated:
            self._evaluated = serving
            champion = control.updater.champion()
            if champion is not None:
                accuracies = [
                    float((champion.predict(t.test_x[p]) == t.test_y[p]).mean())
                    for t, p in zip(self.sc.tasks, self._probe, strict=True)
                ]
                self.timeline.evaluations.append((self.progress.streamed, serving, accuracies))
        now = time.monotonic()
        if now - self._last_point < 0.5 and self.timeline.points:
            return
        self._last_point = now
        classes: dict[int, int] = {}
        if self.daemon.feed is not None:
            with self.daemon.lock:
                classes = dict(self.daemon.feed.memory.classes())
        self.timeline.points.append(
            {
                "streamed": self.progress.streamed,
                "version": serving or 0,
                "live_accuracy": registry.get_sample_value("lifelong_prequential_accuracy"),
                "promoted": control.counts["promoted"],
                "rejected": control.counts["rejected"],
                "alarms": {
                    s: registry.get_sample_value("lifelong_drift_alarms_total", {"signal": s}) or 0
                    for s in ("novelty", "label_shift", "accuracy")
                },
                "memory": classes,
            }
        )

    def rollback(self) -> dict[str, Any]:
        """Roll back through the admin API, as a user would, and read what serves afterwards."""
        assert self.daemon.http is not None
        base = f"http://127.0.0.1:{self.daemon.http.port}"
        before = _get(f"{base}/versions")
        request = urllib.request.Request(
            f"{base}/rollback",
            data=json.dumps({"reason": "demo: rollback through the admin API"}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        after = _get(f"{base}/versions")
        return {"before": before["serving"], "after": after["serving"], "answer": answer}


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def evaluate(model: Learner | None, sc: Scenario) -> list[float]:
    """Accuracy on each task's whole test set."""
    if model is None:
        return [0.0] * len(sc.tasks)
    return [float((model.predict(t.test_x) == t.test_y).mean()) for t in sc.tasks]


def naive_matrix(sc: Scenario, settings: Settings) -> list[list[float]]:
    """The same stream, rounds and model through plain fine-tuning: no replay, no EWC, no gate."""
    plain = settings.model_copy(
        update={
            "learner": settings.learner.model_copy(
                update={"plugins": {}, "replay_batch_size": 0, "loss": "cross_entropy"}
            )
        }
    )
    model = build_learner(plain)
    matrix = []
    for task in sc.tasks:
        for start in range(0, len(task.ids), ROUND):
            rows = slice(start, start + ROUND)
            model.update(Labeled(ids=task.ids[rows], x=task.x[rows], y=task.y[rows]))
        matrix.append(evaluate(model, sc))
    return matrix


def view(demo: Demo, done: threading.Event) -> None:
    """A status line a second (redrawn in place on a terminal)."""
    tty = sys.stdout.isatty()
    last = 0.0
    while not done.wait(1.0):
        if not tty and time.monotonic() - last < 10:
            continue
        last = time.monotonic()
        p = demo.progress
        point = demo.timeline.points[-1] if demo.timeline.points else {}
        live = point.get("live_accuracy")
        alarms = sum(point.get("alarms", {}).values())
        line = (
            f"   task {p.task}/{p.tasks}  {p.streamed:>6}/{p.total} streamed  "
            f"serving v{point.get('version', 0)}  live accuracy "
            f"{'-' if live is None else f'{live:.3f}'}  drift alarms {alarms:.0f}  "
            f"promoted {point.get('promoted', 0)} rejected {point.get('rejected', 0)}  ({p.phase})"
        )
        print(f"\r{line:<140}" if tty else line, end="" if tty else "\n", flush=True)
    if tty:
        print()


def run_demo(
    *,
    state_dir: Path = Path("demo-state"),
    report_dir: Path = Path("demo-report"),
    dataset: str = "auto",
    per_task: int | None = None,
) -> dict[str, Any]:
    """Run the demo; return the summary written to ``report_dir/summary.json``."""
    started = time.monotonic()
    # The live view says what the INFO log would; warnings (drift alarms, rollbacks) still show.
    if logging.getLogger().level < logging.WARNING:
        logging.getLogger().setLevel(logging.WARNING)
    shutil.rmtree(state_dir, ignore_errors=True)
    sc = demo_scenario(dataset, per_task)
    total = sum(len(t.ids) for t in sc.tasks)
    print(f"1. {sc.name}: {len(sc.tasks)} tasks, {total} training samples, streamed task after task")
    token = secrets.token_urlsafe(24)
    with EmbeddedBroker() as broker, ExitStack() as stack:
        settings = demo_settings(sc, bootstrap=broker.bootstrap_servers, state_dir=state_dir, token=token)
        print(f"2. embedded broker on {broker.bootstrap_servers}; starting the daemon")
        daemon = build_daemon(settings, stack)
        daemon.gauges_interval_s = 1.0
        runner = threading.Thread(target=daemon.run, name="lifelong-daemon", daemon=True)
        runner.start()
        while daemon.http is None or daemon.state.value != "running":
            time.sleep(0.1)
        print(f"   metrics on http://127.0.0.1:{daemon.http.port}/metrics (memory {MEMORY}, replay + EWC)")
        demo = Demo(sc, daemon, settings, token)
        done = threading.Event()
        viewer = threading.Thread(target=view, args=(demo, done), daemon=True)
        viewer.start()
        try:
            demo.stream()
        finally:
            done.set()
            viewer.join()
        print("3. every task streamed and trained; rolling back through the admin API")
        rolled = demo.rollback()
        print(f"   POST /rollback -> {rolled['answer']}; serving v{rolled['before']} -> v{rolled['after']}")
        versions = daemon.versions()["versions"]
        dead_letters = int(daemon.ingestor.totals["dead_letters"])
        daemon.stop()
        runner.join(timeout=60)
        print(f"   {daemon.summary()}")
    print("4. the same stream through naive fine-tuning, for contrast")
    naive = naive_matrix(sc, settings)
    summary = write_report(
        report_dir,
        dataset=sc.name,
        matrix=demo.matrix,
        naive=naive,
        timeline=demo.timeline,
        versions=versions,
        rollback=rolled,
        dead_letters=dead_letters,
        memory=MEMORY,
        seconds=time.monotonic() - started,
    )
    print(f"5. report: {report_dir / 'index.html'}")
    print(json.dumps(summary, indent=2))
    return summary
