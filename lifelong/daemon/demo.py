"""``lifelong demo``: the whole loop on one machine, against the embedded broker.

Streams scikit-learn's bundled digits as samples (half labeled inline, half
labeled later through feedback, some of it before the sample), adds malformed
messages, runs the daemon in burst mode, then runs it again to show nothing
is stored twice, and prints what the state holds.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lifelong.config import Settings, load_settings
from lifelong.connectors.broker import EmbeddedBroker
from lifelong.daemon.wiring import build_daemon, client_options, memory_status, open_memory, open_store
from lifelong.events import encode_feedback, encode_sample

log = logging.getLogger(__name__)

MALFORMED = [
    b"{not json",
    b"[1, 2, 3]",
    b'{"x": [0.0], "y": 1}',
    b'{"id": "short", "x": [1.0, 2.0]}',
    b'{"id": "bad-label", "x": [' + b", ".join([b"0.5"] * 64) + b'], "y": 42}',
]


def _stream(seed: int = 0) -> list[tuple[str, bytes, bytes]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(seed)
    events: list[tuple[str, bytes, bytes]] = []
    late: list[tuple[str, bytes, bytes]] = []
    for i, (x, y) in enumerate(zip(digits.data / 16.0, digits.target, strict=True)):
        id = f"digit-{i}"
        if i % 2 == 0:
            events.append(("samples", id.encode(), encode_sample(id, x, int(y))))
            continue
        feedback = ("feedback", id.encode(), encode_feedback(id, int(y)))
        (events if i % 7 == 1 else late).append(feedback)
        events.append(("samples", id.encode(), encode_sample(id, x)))
    for n, value in enumerate(MALFORMED * 4):
        events.insert(rng.randrange(len(events)), ("samples", f"bad-{n}".encode(), value))
    return events + late


def _produce(settings: Settings, events: list[tuple[str, bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**client_options(settings.kafka), linger_ms=5)
    topics = {"samples": settings.kafka.samples_topic, "feedback": settings.kafka.feedback_topic}
    for kind, key, value in events:
        producer.send(topics[kind], value, key=key)
    producer.flush()
    producer.close()


def _burst(settings: Settings) -> dict[str, Any]:
    with ExitStack() as stack:
        daemon = build_daemon(settings, stack)
        daemon.run(burst=True)
        print(f"  {daemon.summary()}")
    with open_store(settings, readonly=True) as store:
        status = store.status().as_dict()
    status["memory"] = memory_status(settings)
    return status


def _show_memory(settings: Settings) -> None:
    import numpy as np
    from sklearn.datasets import load_digits

    memory = open_memory(settings)
    try:
        replay = memory.sample(200, balanced=True)
        digits = load_digits().data[:200] / 16.0
        noise = np.random.default_rng(0).random((200, digits.shape[1]))
        print(f"   a balanced replay batch of {len(replay.ids)}: {np.bincount(replay.y).tolist()} per class")
        known, unknown = memory.novelty(digits), memory.novelty(noise)
        print(f"   novelty of known digits {known:.2f}, of random noise {unknown:.2f}")
        print("   (1.0: as familiar as the memory is to itself)")
    finally:
        memory.close()


def run_demo(state_dir: Path = Path("demo-state")) -> dict[str, Any]:
    """Run the demo; return the final status."""
    shutil.rmtree(state_dir, ignore_errors=True)
    with EmbeddedBroker() as broker:
        settings = load_settings(
            None,
            environ={
                "LIFELONG_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "LIFELONG_KAFKA__TOPIC_PARTITIONS": "2",
                "LIFELONG_STATE__DIR": str(state_dir),
                "LIFELONG_HTTP__PORT": "0",
                "LIFELONG_HTTP__ADMIN_ENABLED": "false",
            },
        )
        print(f"1. embedded broker on {broker.bootstrap_servers} (memory only)")
        from lifelong.connectors.kafka import ensure_topics

        kafka = settings.kafka
        ensure_topics(
            client_options=client_options(kafka),
            partitions=kafka.topic_partitions,
            topics=[kafka.samples_topic, kafka.feedback_topic, kafka.dead_letter_topic],
        )
        events = _stream()
        _produce(settings, events)
        print(f"2. produced {len(events)} events: 1797 digits, late labels, 20 malformed messages")
        print("3. lifelong run --burst")
        first = _burst(settings)
        print("4. lifelong run --burst again: nothing new is stored")
        second = _burst(settings)
    if first != second:
        raise RuntimeError("the second burst changed the state")
    print("5. lifelong status --json")
    print(json.dumps(second, indent=2))
    print("6. the rehearsal memory")
    _show_memory(settings)
    return second
