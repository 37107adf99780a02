"""The learner contract: predict a batch, run one update round, and hand over the state to continue.

A learner never touches Kafka, Prometheus or the scheduler: it returns a
:class:`RoundReport` and the daemon records it. Its state is a
:class:`Checkpoint` of plain tensors and JSON, which the registry writes as
safetensors and ``meta.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from lifelong.labeled import Labeled, intensities


class ReplaySource(Protocol):
    """Where replay comes from: the rehearsal memory, or anything that draws labeled samples."""

    def sample(self, n: int, *, balanced: bool = False) -> Any:
        """``n`` samples with ``ids``, ``x`` and ``y`` attributes."""
        ...


@dataclass(frozen=True)
class RoundReport:
    """What one update round did."""

    samples: int
    replayed: int
    steps: int
    seconds: float
    loss: float
    classes: list[int] = field(default_factory=list)


@dataclass
class Checkpoint:
    """Everything needed to serve (``weights``) and to continue training (``state``, ``meta``)."""

    weights: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]


class Learner(Protocol):
    """A model that predicts, learns from update rounds and checkpoints itself."""

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The predicted label of each row of ``x``."""
        ...

    def update(
        self, new: Labeled, replay: ReplaySource | None = None, *, stop: Callable[[], bool] | None = None
    ) -> RoundReport:
        """Learn ``new`` (plus replay drawn from ``replay``) in one round; give up when ``stop()``."""
        ...

    def checkpoint(self) -> Checkpoint:
        """The state to save; :meth:`restore` of it continues exactly."""
        ...

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a :meth:`checkpoint`."""
        ...


def as_inputs(x: np.ndarray[Any, Any]) -> torch.Tensor:
    """A float32 tensor of ``x``: uint8 inputs are intensities, scaled to [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(intensities(x)))


def accuracy(learner: Learner, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """The fraction of ``x`` the learner labels ``y`` (NaN when empty)."""
    if not len(y):
        return float("nan")
    return float((learner.predict(x) == np.asarray(y)).mean())


def class_probabilities(learner: Learner, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Each row's class probabilities (rows x classes) from a learner that gives them, else its labels.

    What :meth:`~lifelong.learners.ensemble.Hedge.combine` takes for a member: a learner
    with only ``predict`` counts as certain of its label.
    """
    given = getattr(learner, "probabilities", None)
    if given is None:
        return learner.predict(x)
    probabilities: np.ndarray[Any, Any] = given(x)
    return probabilities


def most_likely(given: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The label of each row of :func:`class_probabilities`' answer."""
    labels: np.ndarray[Any, Any] = given.argmax(1) if given.ndim == 2 else given
    return labels
