"""Labeled blobs in raw units for the online members' tests (the heads scale inputs as the network does)."""

from __future__ import annotations

from typing import Any

import numpy as np

FEATURES, CLASSES = 8, 5
CENTERS = np.random.default_rng(3).normal(0, 3, (CLASSES, FEATURES))


def blobs(
    n: int, seed: int, classes: list[int] | None = None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    y = rng.choice(classes if classes is not None else CLASSES, n)
    # Raw units on two columns.
    x = (CENTERS[y] + rng.normal(size=(n, FEATURES))) * np.array([1e4, 1e-3, 1, 1, 1, 1, 1, 1])
    return x.astype(np.float32), y


def accuracy(predicted: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    return float((predicted == y).mean())
