"""Ingestion speed: decode rate on one core, and end-to-end ingest against a bare kafka-python consumer.

    python bench/ingest.py --json

Both consumers read the same topic on the embedded broker in the same run, after
their start-up (group join for the bare consumer, partition assignment and
dead-letter recovery for the daemon): each rate runs from the first record
received to the last. Rounds alternate, and the median round of each counts
(this 2-core machine is noisy: the JSON lists every round).

The daemon runs as in production (`lifelong run --burst`): the durable store,
the watchers of each stored batch (live accuracy, drift), and the rehearsal
memory following the store at most every `follow_interval_s` while ingestion
is busy; what the memory has not followed when the topic is drained it catches
up afterwards, outside the timing, as does the burst's final update round.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from lifelong.config import load_settings
from lifelong.connectors.broker import EmbeddedBroker
from lifelong.connectors.kafka import ensure_topics
from lifelong.daemon.wiring import build_daemon
from lifelong.events import Decoder, encode_sample

FEATURES = 64


def events(count: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [
        encode_sample(f"s{i}", [rng.uniform(-1, 1) for _ in range(FEATURES)], rng.randrange(10))
        for i in range(count)
    ]


def decode_rate(values: list[bytes], rounds: int = 3) -> float:
    decoder = Decoder(features=FEATURES, max_classes=10)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for value in values:
            decoder.decode_sample(value)
        best = max(best, len(values) / (time.perf_counter() - start))
    return best


def bare_rate(bootstrap: str, topic: str, count: int) -> float:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen = 0
    first = 0.0
    while seen < count:
        for records in consumer.poll(timeout_ms=1000).values():
            if not seen:
                first = time.perf_counter()
            seen += len(records)
    rate = seen / (time.perf_counter() - first)
    consumer.close()
    return rate


def ingest_rate(bootstrap: str, topic: str, count: int, state: Path) -> float:
    settings = load_settings(
        None,
        environ={
            "LIFELONG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LIFELONG_KAFKA__SAMPLES_TOPIC": topic,
            "LIFELONG_KAFKA__FEEDBACK_TOPIC": f"{topic}.feedback",
            "LIFELONG_KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dead",
            "LIFELONG_KAFKA__GROUP_ID": f"ingest-{time.time_ns()}",
            "LIFELONG_DATA__FEATURES": str(FEATURES),
            "LIFELONG_STATE__DIR": str(state),
            "LIFELONG_HTTP__PORT": "0",
            "LIFELONG_HTTP__ADMIN_ENABLED": "false",
        },
    )
    with ExitStack() as stack:
        daemon = build_daemon(settings, stack)
        ingestor = daemon.ingestor
        timing = {"first": 0.0, "last": 0.0}
        ingest = ingestor.ingest

        def timed(batches):  # type: ignore[no-untyped-def]
            if not timing["first"]:
                timing["first"] = time.perf_counter()
            handled = ingest(batches)
            timing["last"] = time.perf_counter()
            return handled

        ingestor.ingest = timed  # type: ignore[method-assign]
        daemon.run(burst=True)
        stored = ingestor.totals["stored"]
    if stored != count:
        raise SystemExit(f"ingest stored {stored} of {count} events")
    return count / (timing["last"] - timing["first"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()

    values = events(args.events)
    result: dict[str, object] = {"decode_events_per_s": round(decode_rate(values[:50_000]))}
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        options = {"bootstrap_servers": broker.bootstrap_servers}
        topic = "bench.samples"
        ensure_topics(client_options=options, topics=[topic], partitions=args.partitions)
        producer = KafkaProducer(**options, linger_ms=20, batch_size=512 * 1024)
        for i, value in enumerate(values):
            producer.send(topic, value, key=f"s{i}".encode())
        producer.flush()
        producer.close()
        bare, ingest = [], []
        for n in range(args.rounds):
            bare.append(bare_rate(broker.bootstrap_servers, topic, args.events))
            ingest.append(ingest_rate(broker.bootstrap_servers, topic, args.events, Path(tmp) / f"s{n}"))
            if not args.json:
                print(f"round {n}: bare {bare[-1]:.0f}/s, ingest {ingest[-1]:.0f}/s", file=sys.stderr)
    result.update(
        {
            "ingest_events_per_s": round(statistics.median(ingest)),
            "bare_consumer_events_per_s": round(statistics.median(bare)),
            "ingest_ratio": round(statistics.median(ingest) / statistics.median(bare), 3),
            "events": args.events,
            "partitions": args.partitions,
            "event_bytes": round(sum(map(len, values)) / len(values)),
            "rounds": {"bare": [round(r) for r in bare], "ingest": [round(r) for r in ingest]},
        }
    )
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
