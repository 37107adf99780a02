"""``lifelong produce``: a demo producer that streams a benchmark into the configured topics.

For trying a deployment end to end (the compose file runs it beside the daemon): samples
in task order at a steady rate, half labeled inline and half through feedback a few
seconds later, round after round with fresh ids when ``loop``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from lifelong.benchmarks import scenario
from lifelong.config import Settings
from lifelong.connectors.kafka import client_options
from lifelong.connectors.kafka_topics import KafkaPublisher
from lifelong.events import encode_feedback, encode_sample

log = logging.getLogger(__name__)


def produce(
    settings: Settings,
    *,
    dataset: str = "split-digits",
    rate: float = 100.0,
    feedback_delay_s: float = 5.0,
    loop: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """Stream ``dataset`` at ``rate`` samples/s; return how many samples were sent."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate!r}")
    sc = scenario(dataset)
    if sc.features != settings.data.features or sc.classes > settings.data.max_classes:
        raise ValueError(
            f"{dataset} has {sc.features} features and {sc.classes} classes; the config says "
            f"data.features = {settings.data.features}, data.max_classes = {settings.data.max_classes}"
        )
    stop = stop or threading.Event()
    options = client_options(settings.kafka)
    samples = KafkaPublisher(topic=settings.kafka.samples_topic, client_options=options, max_block_ms=60_000)
    feedback = KafkaPublisher(
        topic=settings.kafka.feedback_topic, client_options=options, max_block_ms=60_000
    )
    late: deque[tuple[float, str, int]] = deque()
    sent, lap = 0, 0
    try:
        while not stop.is_set():
            for task in sc.tasks:
                for i, (x, y) in enumerate(zip(task.x, task.y, strict=True)):
                    if stop.is_set():
                        return sent
                    id = f"{task.ids[i]}-{lap}"
                    inline = i % 2 == 0
                    samples.publish(id, encode_sample(id, x, int(y) if inline else None, binary=True))
                    if not inline:
                        late.append((time.monotonic() + feedback_delay_s, id, int(y)))
                    while late and late[0][0] <= time.monotonic():
                        _, late_id, label = late.popleft()
                        feedback.publish(late_id, encode_feedback(late_id, label))
                    sent += 1
                    stop.wait(1.0 / rate)
                log.info("produced %d samples (lap %d, %s)", sent, lap, dataset)
            lap += 1
            if not loop:
                break
        for _, late_id, label in late:
            feedback.publish(late_id, encode_feedback(late_id, label))
        return sent
    finally:
        samples.close()
        feedback.close()
