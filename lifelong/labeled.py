"""Labeled samples as every room passes them (the store's reads, the memory's draws, the learners'
rounds), and the one rule for reading inputs: uint8 inputs are intensities in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Labeled:
    """Labeled samples: ``x`` is n x features (float32, or uint8 intensities read as [0, 1])."""

    ids: list[str]
    x: np.ndarray[Any, Any]
    y: np.ndarray[Any, Any]

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.x) == len(self.y)):
            raise ValueError(f"ids, x and y differ in length: {len(self.ids)}, {len(self.x)}, {len(self.y)}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, keep: np.ndarray[Any, Any]) -> Labeled:
        """The rows where the boolean mask ``keep`` is set."""
        return Labeled(
            ids=[id for id, k in zip(self.ids, keep, strict=True) if k], x=self.x[keep], y=self.y[keep]
        )


def intensities(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``x`` as float32 the way every model reads it: uint8 inputs are intensities, scaled to [0, 1].

    >>> intensities(np.array([[0, 51, 255]], dtype=np.uint8)).tolist()
    [[0.0, 0.20000000298023224, 1.0]]
    """
    array = np.asarray(x)
    if array.dtype == np.uint8:
        scaled: np.ndarray[Any, Any] = array.astype(np.float32) / np.float32(255.0)
        return scaled
    return array.astype(np.float32, copy=False)
