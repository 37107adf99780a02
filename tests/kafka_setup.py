"""Topics on the session's embedded broker, a config pointing at them, and the CLI run against it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from lifelong.connectors.broker import EmbeddedBroker
from lifelong.connectors.kafka import ensure_topics
from lifelong.memory.samples import SampleStore
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
