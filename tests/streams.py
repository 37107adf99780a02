"""Test streams: valid samples, late and early feedback, and every kind of malformed message."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from lifelong.events import Sample, encode_feedback, encode_sample
from lifelong.memory.samples import StoredSample

FEATURES = 64
MAX_CLASSES = 10
MAX_MESSAGE_BYTES = 4096


def _malformed(rng: random.Random, i: int) -> tuple[str, bytes, str]:
    """(topic kind, value, expected reason) for the i-th malformed message."""
    x = [rng.random() for _ in range(FEATURES)]
    kinds = [
        ("samples", b"{not json", "not_json"),
        ("samples", b"[1, 2, 3]", "not_object"),
        ("samples", json.dumps({"x": x, "y": 1}).encode(), "missing_id"),
        ("samples", json.dumps({"id": "", "x": x}).encode(), "missing_id"),
        ("samples", json.dumps({"id": f"short{i}", "x": x[:10]}).encode(), "wrong_length"),
        ("samples", json.dumps({"id": f"str{i}", "x": ["a"] * FEATURES}).encode(), "bad_x"),
        ("samples", json.dumps({"id": f"inf{i}", "x": x}).replace("0.", "1e999", 1).encode(), "non_finite"),
        ("samples", json.dumps({"id": f"lbl{i}", "x": x, "y": MAX_CLASSES}).encode(), "bad_label"),
        (
            "samples",
            json.dumps({"id": f"big{i}", "x": x, "meta": {"p": "p" * MAX_MESSAGE_BYTES}}).encode(),
            "oversized",
        ),
        ("feedback", json.dumps({"id": f"s{i}", "y": -1}).encode(), "bad_label"),
    ]
    return kinds[i % len(kinds)]


def stream(seed: int = 0, samples: int = 1000, malformed: int = 200) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic kind, key, value) in production order.

    Even samples carry their label; odd ones get it from feedback: a third of those
    before the sample arrives, some twice (the daemon holds the second back: relabels = "hold").
    """
    rng = random.Random(seed)
    events: list[tuple[str, bytes, bytes]] = []
    late: list[tuple[str, bytes, bytes]] = []
    for i in range(samples):
        key = f"s{i}".encode()
        x = [rng.uniform(-1, 1) for _ in range(FEATURES)]
        if i % 2 == 0:
            events.append(("samples", key, encode_sample(f"s{i}", x, i % MAX_CLASSES)))
            continue
        feedback = ("feedback", key, encode_feedback(f"s{i}", i % MAX_CLASSES))
        if i % 6 == 1:
            events.append(feedback)  # the label before its sample
        if i % 10 == 3:
            late.append(("feedback", key, encode_feedback(f"s{i}", (i + 1) % MAX_CLASSES)))
        events.append(("samples", key, encode_sample(f"s{i}", x)))
        if i % 6 != 1:
            late.append(feedback)
    for i in range(malformed):
        kind, value, _ = _malformed(rng, i)
        events.insert(rng.randrange(len(events)), (kind, f"bad{i}".encode(), value))
    return iter(events + late)


def expected_reasons(seed: int = 0, malformed: int = 200) -> dict[str, int]:
    """How many dead letters of each reason :func:`stream` produces."""
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    for i in range(malformed):
        reason = _malformed(rng, i)[2]
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def stored(
    sample: Sample, topic: str = "s", partition: int = 0, offset: int = 0, timestamp_ms: int = 0
) -> StoredSample:
    """The row the sample store keeps for ``sample`` (as the decoder would make it), read at ``offset``."""
    meta = None if sample.meta is None else json.dumps(sample.meta)
    return (
        sample.id,
        sample.x.tobytes(),
        sample.x.dtype.str,
        sample.y,
        sample.ts,
        meta,
        topic,
        partition,
        offset,
        timestamp_ms,
    )
