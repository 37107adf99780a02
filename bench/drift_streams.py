"""The drifting streams bench/drift.py runs, and River's baselines on them with the same label delay.

Streams are River's generators (seeded), with a few features of the synthetic ones
multiplied by 1e3-1e5 to mimic raw units, and River's bundled Phishing and Bananas;
see bench/drift.py for what is measured.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import datasets, forest, linear_model, multiclass, preprocessing, tree
from river.datasets import synth

STREAMS = ("hyperplane", "sine", "stagger", "led", "phishing", "bananas")
BASELINES = {
    "arf": "forest.ARFClassifier(seed=seed)",
    "hat": "tree.HoeffdingAdaptiveTreeClassifier(seed=seed)",
    "scaled_logreg": "preprocessing.StandardScaler() | linear_model.LogisticRegression() (one-vs-rest)",
}


# -- streams ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """A known change in the stream: ``abrupt`` at sample ``at``, or ``gradual`` from ``at`` on."""

    at: int
    kind: str
    detail: str


@dataclass(frozen=True)
class Stream:
    """One seeded stream: inputs as they go on the wire (raw units), integer labels, its drifts."""

    name: str
    x: np.ndarray[Any, Any]
    y: np.ndarray[Any, Any]
    classes: int
    drifts: list[Drift]
    scaled: dict[int, float]

    @property
    def abrupt(self) -> list[int]:
        return [d.at for d in self.drifts if d.kind == "abrupt"]


def _take(
    rows: Iterable[tuple[dict[Any, Any], Any]], n: int | None
) -> tuple[list[dict[Any, Any]], list[int]]:
    xs, ys = [], []
    for x, y in itertools.islice(rows, n):
        xs.append(x)
        ys.append(int(y))
    return xs, ys


def _segments(
    name: str, make: Callable[[int], Iterable[tuple[dict[Any, Any], Any]]], concepts: Sequence[str], n: int
) -> tuple[list[dict[Any, Any]], list[int], list[Drift]]:
    """Concatenate ``n`` samples of each concept: an abrupt change at each boundary."""
    xs: list[dict[Any, Any]] = []
    ys: list[int] = []
    drifts = []
    for k, concept in enumerate(concepts):
        if k:
            drifts.append(Drift(len(ys), "abrupt", f"{name}: {concepts[k - 1]} -> {concept}"))
        x, y = _take(make(k), n)
        xs += x
        ys += y
    return xs, ys, drifts


def make_stream(name: str, seed: int, *, quick: bool) -> Stream:
    """The stream ``name`` generated with ``seed`` (``quick``: a few hundred samples per concept)."""
    drifts: list[Drift] = []
    scale: dict[int, float] = {}
    if name == "hyperplane":
        n = 1200 if quick else 10_000
        gen = synth.Hyperplane(seed=seed, n_features=10, n_drift_features=2, mag_change=0.001)
        xs, ys = _take(gen, n)
        drifts = [Drift(0, "gradual", "hyperplane: 2 of 10 weights change by 0.001 at every sample")]
        classes, scale = 2, {0: 1e3, 1: 1e5, 5: 1e4}
    elif name == "sine":
        functions = ["SINE1", "reversed SINE1", "SINE2", "reversed SINE2"]
        order = [0, 2, 1, 3]
        xs, ys, drifts = _segments(
            name,
            lambda k: synth.Sine(classification_function=order[k], seed=seed * 10 + k, has_noise=True),
            [functions[f] for f in order],
            400 if quick else 2500,
        )
        classes, scale = 2, {0: 1e3, 1: 1e5, 3: 1e4}
    elif name == "stagger":
        concepts = ["small and red", "green or circle", "medium or large"]
        xs, ys, drifts = _segments(
            name,
            lambda k: synth.STAGGER(classification_function=k, seed=seed * 10 + k),
            concepts,
            400 if quick else 3000,
        )
        classes, scale = 2, {0: 1e3, 1: 1e4}
    elif name == "led":
        swapped = [0, 3, 6]
        xs, ys, drifts = _segments(
            name,
            lambda k: synth.LEDDrift(
                seed=seed * 10 + k,
                noise_percentage=0.1,
                irrelevant_features=True,
                n_drift_features=swapped[k],
            ),
            [f"{s} segments swapped" for s in swapped],
            400 if quick else 3000,
        )
        classes, scale = 10, {0: 1e3, 3: 1e5, 10: 1e4}
    elif name == "phishing":
        xs, ys = _take(datasets.Phishing(), 1000 if quick else None)
        classes = 2
    elif name == "bananas":
        xs, ys = _take(datasets.Bananas(), 1000 if quick else None)
        classes = 2
    else:
        raise ValueError(f"no stream {name!r}; choose from {', '.join(STREAMS)}")
    keys = sorted({key for row in xs for key in row}, key=str)
    x = np.array([[float(row.get(key, 0.0)) for key in keys] for row in xs], dtype=np.float64)
    for column, factor in scale.items():
        x[:, column] *= factor
    return Stream(
        name=name,
        x=x.astype(np.float32),  # what the wire carries; River reads the same values
        y=np.asarray(ys, dtype=np.int64),
        classes=classes,
        drifts=drifts,
        scaled=scale,
    )


# -- River ------------------------------------------------------------------------------------------


def river_model(name: str, classes: int, seed: int) -> Any:
    """A fresh baseline model."""
    if name == "arf":
        return forest.ARFClassifier(seed=seed)
    if name == "hat":
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    if name == "scaled_logreg":
        head = (
            linear_model.LogisticRegression()
            if classes == 2
            else multiclass.OneVsRestClassifier(linear_model.LogisticRegression())
        )
        return preprocessing.StandardScaler() | head
    raise ValueError(f"no baseline {name!r}")


def run_river(
    name: str, stream: Stream, *, delay: int, seed: int, chunk: int = 1
) -> tuple[np.ndarray[Any, Any], float]:
    """Predict samples on arrival, learn each label ``delay`` samples later; the predictions (-1: none).

    With ``chunk`` > 1 the model knows what the daemon knows when it predicts: the samples of
    each chunk are predicted before the labels that arrive with them are learned.
    """
    started = time.monotonic()
    model = river_model(name, stream.classes, seed)
    binary = stream.classes == 2
    rows = [dict(enumerate(map(float, row))) for row in stream.x]
    labels: list[Any] = [bool(y) for y in stream.y] if binary else [int(y) for y in stream.y]
    predicted = np.full(len(rows), -1, dtype=np.int64)
    for start in range(0, len(rows), chunk):
        end = min(start + chunk, len(rows))
        for i in range(start, end):
            guess = model.predict_one(rows[i])
            if guess is not None:
                predicted[i] = int(guess)
        for j in range(max(0, start - delay), max(0, end - delay)):
            model.learn_one(rows[j], labels[j])
    return predicted, time.monotonic() - started
