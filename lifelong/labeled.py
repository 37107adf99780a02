"""Labeled samples, as every room passes them: the store's reads, the memory's draws, the learners' rounds."""

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
