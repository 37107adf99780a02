"""Topics on the session's embedded broker, a config pointing at them, and the CLI run against it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from lifelong.connectors.broker import EmbeddedBroker
from lifelong.connectors.kafka import ensure_topics
from lifelong.events import encode_feedback, encode_sample
from lifelong.memory.samples import SampleStore
from tests import waiting
from tests.streams import FEATURES, MAX_CLASSES, MAX_MESSAGE_BYTES

CLI = [sys.executable, "-m", "lifelong.daemon.cli"]
TOKEN = "test-token"


class Setup:
    """Topics on the shared broker and a config file pointing at them."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        unique: Callable[[str], str],
        make_config: Callable[..., Path],
        tmp_path: Path,
        name: str,
        **sections: dict[str, object],
    ) -> None:
        self.broker = broker
        self.samples, self.feedback, self.dead, self.models = (
            unique(t) for t in ("samples", "feedback", "dead", "models")
        )
        self.options = {"bootstrap_servers": broker.bootstrap_servers}
        ensure_topics(
            client_options=self.options, topics=[self.samples, self.feedback, self.dead], partitions=2
        )
        self.state = tmp_path / f"state-{name}"
        self.group = unique("group")
        self.config = make_config(
            f"{name}.toml",
            kafka={
                "bootstrap_servers": broker.bootstrap_servers,
                "samples_topic": self.samples,
                "feedback_topic": self.feedback,
                "dead_letter_topic": self.dead,
                "group_id": self.group,
                "models_topic": self.models,
                "topic_partitions": 2,
            },
            data={"features": FEATURES, "max_classes": MAX_CLASSES, "max_message_bytes": MAX_MESSAGE_BYTES},
            **{
                "state": {"dir": str(self.state)},
                "http": {"port": 0, "admin_token": TOKEN},
                **sections,
            },
        )

    def produce(self, events, pause_every: int = 0, pause_s: float = 0.0) -> None:  # type: ignore[no-untyped-def]
        producer = KafkaProducer(**self.options, linger_ms=2)
        for n, (kind, key, value) in enumerate(events, 1):
            producer.send(self.samples if kind == "samples" else self.feedback, value, key=key)
            if pause_every and n % pause_every == 0:
                producer.flush()
                time.sleep(pause_s)
        producer.flush()
        producer.close()

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        return subprocess.run(
            [*CLI, *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            **kwargs,
        )

    def status(self) -> dict:  # type: ignore[type-arg]
        done = self.run("status", "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def dead_letters(self) -> list:  # type: ignore[type-arg]
        consumer = KafkaConsumer(
            self.dead, group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=2000, **self.options
        )
        records = list(consumer)
        consumer.close()
        return records

    def committed(self) -> dict:  # type: ignore[type-arg]
        """The consumer group's committed offsets, as lag tooling sees them."""
        consumer = KafkaConsumer(group_id=self.group, enable_auto_commit=False, **self.options)
        partitions = [TopicPartition(t, p) for t in (self.samples, self.feedback) for p in range(2)]
        committed = {tp: consumer.committed(tp) for tp in partitions}
        consumer.close()
        return committed

    def labels(self) -> dict[str, int]:
        with SampleStore.open(self.state, readonly=True) as store:
            return {id: y for id, _, y in store.labeled()}


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


wait_for = partial(waiting.wait_for, timeout_s=180.0, interval_s=0.25)
