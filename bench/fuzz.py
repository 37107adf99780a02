"""The seeded message stream of bench/chaos.py: valid samples and feedback, and messages built to break them.

``stream(count, seed)`` returns the same messages for the same seed: valid samples (scikit-learn's
digits, some labeled inline, the rest through feedback, some of it before its sample), messages
that break the wire contract in every way listed in :func:`bad_messages`, and valid samples with
random bytes flipped after their id (``expect="either"``: a flip may leave them valid).
"""

from __future__ import annotations

import json
import random

from lifelong.benchmarks import digits
from lifelong.events import encode_feedback, encode_sample

MAX_MESSAGE_BYTES = 65536


class Message:
    """One record to produce, and what the daemon should make of it."""

    __slots__ = ("expect", "feedback", "headers", "id", "label", "value")

    def __init__(
        self,
        *,
        feedback: bool,
        value: bytes | None,
        expect: str,
        id: str | None = None,
        label: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.feedback = feedback
        self.value = value
        self.expect = expect  # "stored", "rejected", or "either" (a mutation may still be valid)
        self.id = id
        self.label = label
        self.headers = headers or []


def deep(depth: int, rng: random.Random) -> str:
    opening, closing = ("[", "]") if rng.random() < 0.5 else ('{"a":', "}")
    return opening * depth + "0" + closing * depth


def bad_messages(n: int, rng: random.Random, x: list[float]) -> list[Message]:
    """Messages that break the wire contract, each ``n``-numbered so ids never collide."""
    row = json.dumps(x)
    depth = rng.choice([100, 1000, 5000, 100_000])
    samples = [
        b"{not json",
        bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
        f'{{"id": "b{n}", "x": {row}, "meta": {deep(depth, rng)}}}'.encode(),
        f'{{"id": "b{n}", "x": {row}, "extra": {deep(depth, rng)}}}'.encode(),
        f'{{"id": "b{n}", "x": {deep(depth, rng)}}}'.encode(),
        f'{{"id": "b{n}", "x": [1, 2, 3]}}'.encode(),
        f'{{"id": "b{n}", "x": {row}, "y": 99}}'.encode(),
        f'{{"id": "b{n}", "x": {row}, "y": "seven"}}'.encode(),
        f'{{"id": "b{n}", "x": {row.replace("]", ", 1e400]", 1)}}}'.encode(),
        f'{{"id": "b{n}", "x": {row.replace("[", "[NaN, ", 1)}}}'.encode(),
        f'{{"id": "b{n}", "x": {{"dtype": "float32", "b64": "!!not base64!!"}}}}'.encode(),
        f'{{"id": "", "x": {row}}}'.encode(),
        f'{{"id": "{"i" * 600}", "x": {row}}}'.encode(),
        f'{{"x": {row}}}'.encode(),
        f'{{"id": "b{n}", "x": {row}, "v": 2}}'.encode(),
        f'{{"id": "b{n}", "x": {row}, "ts": -5}}'.encode(),
        f'[{{"id": "b{n}", "x": {row}}}]'.encode(),
        f'{{"id": "b{n}\\ud800", "x": {row}}}'.encode(),
        b'{"id": "b' + str(n).encode() + b'\xff\xfe", "x": ' + row.encode() + b"}",
        f'{{"id": "b{n}", "x": {row}, "meta": "{"m" * MAX_MESSAGE_BYTES}"}}'.encode(),
        None,
    ]
    feedback = [
        f'{{"id": "b{n}", "y": {deep(depth, rng)}}}'.encode(),
        f'{{"id": "b{n}", "y": 3, "extra": {deep(depth, rng)}}}'.encode(),
        f'{{"id": "b{n}", "y": -1}}'.encode(),
        f'{{"id": "b{n}"}}'.encode(),
        b"\x00\x01\x02",
        None,
    ]
    forged = [("lifelong.reason", b"forged"), ("lifelong.source.offset", b"0")]
    out = [Message(feedback=False, value=v, expect="rejected") for v in samples]
    out += [Message(feedback=True, value=v, expect="rejected") for v in feedback]
    picked = rng.choice(out)
    if rng.random() < 0.2:
        picked.headers = forged
    return [picked]


def stream(count: int, seed: int) -> list[Message]:
    """About ``count`` messages: 60% valid samples, their late labels, the rest bad or mutated."""
    rng = random.Random(seed)
    x, y, _, _ = digits()
    messages: list[Message] = []
    late: list[Message] = []
    n = 0
    while len(messages) + len(late) < count:
        n += 1
        i = rng.randrange(len(x))
        row = [float(v) for v in x[i]]
        label = int(y[i])
        roll = rng.random()
        if roll < 0.6:
            id = f"s{n}"
            inline = rng.random() < 0.5
            messages.append(
                Message(
                    feedback=False,
                    value=encode_sample(id, row, label if inline else None),
                    expect="stored",
                    id=id,
                    label=label,
                )
            )
            if not inline:
                given = Message(
                    feedback=True, value=encode_feedback(id, label), expect="stored", id=id, label=label
                )
                if rng.random() < 0.2:  # feedback before its sample
                    messages.insert(max(0, len(messages) - rng.randrange(1, 20)), given)
                else:
                    late.append(given)
        elif roll < 0.9:
            messages += bad_messages(n, rng, row)
        else:
            id = f"m{n}"
            value = bytearray(encode_sample(id, row, label))
            start = len(f'{{"id":"{id}",'.encode())
            for _ in range(rng.randrange(1, 4)):
                value[rng.randrange(start, len(value))] = rng.randrange(256)
            messages.append(Message(feedback=False, value=bytes(value), expect="either", id=id))
        # Late labels follow their samples a little later.
        while late and rng.random() < 0.3:
            messages.append(late.pop(0))
    return messages + late
