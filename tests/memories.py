"""Rehearsal-memory fixtures the memory's tests share: a seeded labeled stream, a snapshot's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FEATURES = 8


def batches(
    rng: np.random.Generator,
    count: int,
    size: int,
    *,
    classes: int = 5,
    weights: list[float] | None = None,
    start: int = 0,
):  # type: ignore[no-untyped-def]
    for b in range(count):
        y = rng.choice(classes, size=size, p=weights)
        x = rng.normal(size=(size, FEATURES)).astype(np.float32) + y[:, None]
        yield [f"s{start + b * size + i}" for i in range(size)], x, y


def corrupt_manifest(root: Path, change) -> Path:  # type: ignore[no-untyped-def]
    snapshots = root / "snapshots"
    current = snapshots / (snapshots / "CURRENT").read_text().strip()
    manifest = json.loads((current / "manifest.json").read_text())
    change(manifest, current)
    (current / "manifest.json").write_text(json.dumps(manifest))
    return current
