"""The Learner contract as checks anyone can run: the built-in learners, and a custom model plugin.

River's ``check_estimator`` is the model: one call runs every check of the contract
the daemon relies on, and fails naming the one that broke. Plugin authors run it on
their model before they configure it (``[learner] model = "package.module:factory"``)::

    from lifelong.config import Settings
    from lifelong.learners.configured import build_learner
    from lifelong.learners.conformance import check_learner

    settings = Settings.model_validate({
        "data": {"features": 20, "max_classes": 4},
        "learner": {"model": "mypackage.models:small_net", "device": "cpu"},
    })
    check_learner(lambda: build_learner(settings), features=20, classes=4)

The checks use separable synthetic data (one Gaussian blob per class), so any model
that learns at all passes the learning checks in a round or two of the defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lifelong.labeled import Labeled
from lifelong.learners.base import Checkpoint, Learner, RoundReport


class FixedReplay:
    """A replay source that hands out the same labeled rows each draw, counting the draws."""

    def __init__(self, data: Labeled) -> None:
        self.data = data
        self.draws = 0

    def sample(self, n: int, *, balanced: bool = False) -> Labeled:
        self.draws += 1
        return Labeled(ids=self.data.ids[:n], x=self.data.x[:n], y=self.data.y[:n])


def blobs(features: int, classes: list[int], n: int, *, seed: int, prefix: str) -> Labeled:
    """``n`` samples of the given classes, each class a unit Gaussian around a centre of its own."""
    centres = np.random.default_rng(12345).normal(0.0, 4.0 / np.sqrt(max(features, 1)) * 3, (64, features))
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, n)
    x = (centres[y] + rng.normal(0.0, 1.0 / np.sqrt(max(features, 1)) * 3, (n, features))).astype(np.float32)
    return Labeled(ids=[f"{prefix}{i}" for i in range(n)], x=x, y=y.astype(np.int64))


def check_learner(
    build: Callable[[], Learner], *, features: int, classes: int, seed: int = 0, rounds: int = 3
) -> None:
    """Run every check of the Learner contract on learners made by ``build``; AssertionError names the one
    that fails. ``build`` must give a fresh, untrained learner each call, for ``features`` inputs and
    ``classes`` classes (at least 3)."""
    if classes < 3:
        raise ValueError(f"the checks need at least 3 classes, got {classes}")
    first, later = [0, 1], [2]
    old = blobs(features, first, 600, seed=seed, prefix="a")
    new = blobs(features, later, 300, seed=seed + 1, prefix="b")
    test = blobs(features, [*first, *later], 600, seed=seed + 2, prefix="t")

    learner = build()
    _check_predictions(learner, test.x, classes, "an untrained learner")
    empty = learner.update(Labeled(ids=[], x=test.x[:0], y=test.y[:0]))
    assert isinstance(empty, RoundReport) and empty.samples == 0, "an empty round must do nothing"
    try:
        learner.update(Labeled(ids=["bad"], x=test.x[:1], y=np.array([classes], dtype=np.int64)))
    except ValueError:
        pass
    else:
        raise AssertionError(f"a label outside [0, {classes}) must raise ValueError")

    for _ in range(rounds):
        report = learner.update(old)
    assert isinstance(report, RoundReport), f"update() must return a RoundReport, got {type(report)}"
    assert report.samples == len(old) and report.steps > 0, f"the round trained on nothing: {report}"
    assert np.isfinite(report.loss), f"the round's loss is not finite: {report.loss}"
    assert set(report.classes) >= set(first), f"the report's classes {report.classes} miss {first}"
    seen = np.isin(test.y, first)
    predicted = _check_predictions(learner, test.x, classes, "a trained learner")
    assert set(np.unique(predicted)) <= set(first), "a learner must predict only classes it was taught"
    accuracy = float((predicted[seen] == test.y[seen]).mean())
    assert accuracy >= 0.9, f"after {rounds} rounds on two separable classes, accuracy {accuracy:.2f} < 0.9"

    checkpoint = learner.checkpoint()
    _check_checkpoint(checkpoint)
    restored = build()
    restored.restore(checkpoint)
    assert np.array_equal(restored.predict(test.x), learner.predict(test.x)), (
        "a learner restored from a checkpoint must predict as the one checkpointed"
    )

    # As the rehearsal memory holds them when a round runs: the old classes and the new one, mixed.
    order = np.random.default_rng(seed).permutation(len(old) + len(new))
    held = Labeled(
        ids=[[*old.ids, *new.ids][i] for i in order],
        x=np.concatenate([old.x, new.x])[order],
        y=np.concatenate([old.y, new.y])[order],
    )
    replay = FixedReplay(held)
    for _ in range(rounds):
        report = learner.update(new, replay)
        assert replay.draws > 0 and report.replayed > 0, "a round given a replay source must draw from it"
    after = learner.predict(test.x)
    gained = float((after[~seen] == test.y[~seen]).mean())
    kept = float((after[seen] == test.y[seen]).mean())
    assert gained >= 0.8, f"after {rounds} rounds of a new class with replay, it scores {gained:.2f} < 0.8"
    assert kept >= 0.6, f"replay did not keep the old classes: {kept:.2f} < 0.6"
    restored.update(new, FixedReplay(held))
    assert set(np.unique(restored.predict(test.x))) <= set(range(classes)), "the restored learner broke"


def _check_predictions(learner: Learner, x: np.ndarray[Any, Any], classes: int, who: str) -> Any:
    predicted = np.asarray(learner.predict(x))
    assert predicted.shape == (len(x),), f"{who}: predict() gave shape {predicted.shape}, not ({len(x)},)"
    assert np.issubdtype(predicted.dtype, np.integer), f"{who}: predict() gave {predicted.dtype} labels"
    assert ((predicted >= 0) & (predicted < classes)).all(), f"{who}: labels outside [0, {classes})"
    given = getattr(learner, "probabilities", None)
    if given is not None:
        p = np.asarray(given(x))
        assert p.shape == (len(x), classes), f"{who}: probabilities() gave shape {p.shape}"
        assert np.allclose(p.sum(1), 1.0, atol=1e-4), f"{who}: probabilities do not sum to 1"
        assert np.array_equal(p.argmax(1), predicted), f"{who}: probabilities disagree with predict()"
    return predicted


def _check_checkpoint(checkpoint: Checkpoint) -> None:
    for part in ("weights", "state"):
        tensors = getattr(checkpoint, part)
        assert all(isinstance(v, torch.Tensor) for v in tensors.values()), (
            f"checkpoint.{part} must hold only tensors (written as safetensors)"
        )
    assert checkpoint.weights, "checkpoint.weights is empty: nothing would be served"
    try:
        json.dumps(checkpoint.meta)
    except (TypeError, ValueError) as error:
        raise AssertionError(f"checkpoint.meta must be JSON (written as meta.json): {error}") from None
