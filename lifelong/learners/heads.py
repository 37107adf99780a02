"""Online heads: streaming LDA classifiers updated on every label, served beside the network.

The replay-trained network learns once per update round; between rounds it
cannot follow the stream, and before the first round nothing serves. A head
learns each labeled sample as it is stored, in closed form (no gradient
steps), so it predicts from a class's first labels on:

- the inputs are scaled as the network scales them (:class:`~lifelong.learners.scaling.Scaling`,
  fitted on the labeled samples as they come), then mapped to ``[x, random Fourier features of x]``
  (an RBF kernel's features, the bandwidth set from the first samples: a linear
  classifier on them draws curved boundaries);
- each head is a streaming linear discriminant: per-class means and one shared
  covariance (shrunk toward its average variance), the exact sums of every sample
  it learned. With a ``half_life`` (in labels) the sums decay, so an old concept
  fades and the head follows change; without one it never forgets, whatever the
  order the classes come in.

Heads are cheap to rebuild: their state is a function of the label events in the
sample store, in order. :meth:`Heads.checkpoint` saves it with the last event
learned, and a restart replays the events after that one.

Serving reads a :class:`Predictor`: what the heads had learned when it was made
(the scaling, the feature map and each head's discriminant, in float32), so
another thread predicts with it while the heads learn on.

Example::

    heads = Heads(features=10, classes=3, half_lives=[0, 100])
    heads.learn(x, y)                 # n x 10 inputs, n labels
    heads.predict(x_new)              # {"lda": array([...]), "lda_100": array([...])}
    serve = heads.predictor()         # fixed now; heads.learn(...) does not change it
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lifelong.learners.base import as_inputs
from lifelong.learners.scaling import Scaling

FORMAT = 1
SHRINK = 0.01  # the covariance is shrunk this far toward its average variance
WARMUP = 32  # labeled samples buffered before the feature map's bandwidth is set from them


def head_name(half_life: int) -> str:
    """The member name of a head: ``lda`` (never forgets) or ``lda_<half-life>``."""
    return "lda" if half_life == 0 else f"lda_{half_life}"


class StreamingLDA:
    """Class means and a shared covariance as decayed exact sums; predicts by the linear discriminant.

    ``half_life`` 0: every sample counts forever (streaming LDA); else a sample's weight
    halves after that many newer labels.
    """

    def __init__(self, *, width: int, classes: int, half_life: int = 0) -> None:
        self.width = width
        self.classes = classes
        self.half_life = half_life
        self.decay = 0.5 ** (1.0 / half_life) if half_life else 1.0
        self.weight = torch.zeros(classes, dtype=torch.float64)  # per class: sum of sample weights
        self.sums = torch.zeros(classes, width, dtype=torch.float64)  # per class: weighted sum of features
        self.outer = torch.zeros(width, width, dtype=torch.float64)  # weighted sum of x x^T
        self.learned = 0
        self._fitted: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fitted_at = -1

    def learn(self, f: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch of feature rows ``f`` (float64) with labels ``y``, oldest first."""
        n = len(y)
        if not n:
            return
        if self.decay < 1.0:
            age = torch.arange(n - 1, -1, -1, dtype=torch.float64)
            w = self.decay**age
            fade = self.decay**n
            self.weight *= fade
            self.sums *= fade
            self.outer *= fade
        else:
            w = torch.ones(n, dtype=torch.float64)
        self.weight.index_add_(0, y, w)
        self.sums.index_add_(0, y, f * w[:, None])
        self.outer += (f * w[:, None]).T @ f
        self.learned += n

    @property
    def seen(self) -> torch.Tensor:
        """Classes with any weight left."""
        return self.weight > 1e-12

    def fit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminant (coefficients, classes x width, and biases; float32) of what was learned.

        Solved again only after new samples (its cost is cubic in ``width``).
        """
        if self._fitted is None or self._fitted_at != self.learned:
            self._fitted, self._fitted_at = self._solve(), self.learned
        return self._fitted

    def _solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        seen = self.seen
        total = float(self.weight.sum())
        means = torch.zeros_like(self.sums)
        means[seen] = self.sums[seen] / self.weight[seen, None]
        within = (self.outer - means[seen].T @ self.sums[seen]) / max(total, 1e-12)
        within = (within + within.T) / 2
        average = float(torch.diagonal(within).mean().clamp(min=0.0))
        within = (1 - SHRINK) * within
        within.diagonal().add_(SHRINK * average + 1e-6)
        coef = torch.linalg.solve(within, means.T).T  # classes x width
        prior = torch.log((self.weight / max(total, 1e-12)).clamp(min=1e-12))
        bias = -0.5 * (coef * means).sum(1) + prior
        bias[~seen] = -math.inf
        return coef.float(), bias.float()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.weight": self.weight.clone(),
            f"{prefix}.sums": self.sums.clone(),
            f"{prefix}.outer": self.outer.clone(),
        }

    def restore(self, prefix: str, tensors: dict[str, torch.Tensor], learned: int) -> None:
        for name in ("weight", "sums", "outer"):
            value = tensors[f"{prefix}.{name}"].to(torch.float64)
            if value.shape != getattr(self, name).shape:
                raise ValueError(
                    f"{prefix}.{name} has shape {tuple(value.shape)}, the head needs "
                    f"{tuple(getattr(self, name).shape)}"
                )
            setattr(self, name, value.clone())
        self.learned = learned
        self._fitted, self._fitted_at = None, -1


def random_features(z: torch.Tensor, projection: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``[z, sqrt(2) cos(z W + b)]`` in float32 (``z`` alone without a projection)."""
    z = z.float()
    if projection is None:
        return z
    weight, phase = projection
    return torch.cat([z, math.sqrt(2.0) * torch.cos(torch.addmm(phase, z, weight))], dim=1)


@dataclass(frozen=True)
class Predictor:
    """What the heads predict with, fixed when made (safe to use while they learn on)."""

    scale: tuple[str, torch.Tensor, torch.Tensor]  # scaling mode, shift, scale
    projection: tuple[torch.Tensor, torch.Tensor] | None  # float32
    heads: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (coefficients, biases)

    @torch.no_grad()
    def predict(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each head's predicted label of each row of ``x``."""
        z = as_inputs(x)
        mode, shift, scale = self.scale
        if mode in ("standardize", "range"):
            z = (z - shift) / scale
        f = random_features(z, self.projection)
        names = list(self.heads)
        coef = torch.cat([self.heads[name][0] for name in names])  # every head in one product
        bias = torch.cat([self.heads[name][1] for name in names])
        scores = torch.addmm(bias, f, coef.T).view(len(f), len(names), -1)
        labels = scores.argmax(2).numpy()
        return {name: labels[:, k] for k, name in enumerate(names)}


class Heads:
    """The online heads of one daemon: a shared input map and one :class:`StreamingLDA` per half-life."""

    def __init__(
        self,
        *,
        features: int,
        classes: int,
        half_lives: Sequence[int] = (0, 100, 1000),
        random_features: int = 256,
        scaling: str = "auto",
        scaling_range: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        if any(h < 0 for h in half_lives) or len(set(half_lives)) != len(half_lives):
            raise ValueError(f"half_lives must be distinct and >= 0, got {list(half_lives)}")
        self.features = features
        self.classes = classes
        self.random_features = random_features
        self.seed = seed
        self._settings: dict[str, Any] = {
            "features": features,
            "classes": classes,
            "half_lives": list(half_lives),
            "random_features": random_features,
            "scaling": scaling,
            "scaling_range": tuple(scaling_range),
            "seed": seed,
        }
        low, high = scaling_range
        self.scaling = Scaling(mode=scaling, low=low, high=high)
        self.width = features + random_features
        self.members = {
            head_name(h): StreamingLDA(width=self.width, classes=classes, half_life=h) for h in half_lives
        }
        self.bandwidth = 0.0  # set from the first WARMUP samples
        self._started = False
        self._projection: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warmup: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.learned = 0  # labeled samples taken in (buffered or learned)

    def fresh(self) -> Heads:
        """New heads with the same settings, having learned nothing."""
        return Heads(**self._settings)

    @property
    def ready(self) -> bool:
        """Whether the heads predict (they have learned their first samples)."""
        return self._started and self.learned > 0

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return random_features(self.scaling(x), self._projection)

    def _start(self, x: torch.Tensor) -> None:
        """Set the random features' bandwidth from the first samples (median distance) and draw them."""
        z = self.scaling(x[:256]).to(torch.float64)
        distances = torch.cdist(z, z)
        off = distances[~torch.eye(len(z), dtype=torch.bool)]
        positive = off[off > 0]
        self.bandwidth = float(positive.median()) if len(positive) else 1.0
        generator = torch.Generator().manual_seed(self.seed)
        weight = torch.randn(self.features, self.random_features, generator=generator)
        phase = torch.rand(self.random_features, generator=generator) * 2 * math.pi
        self._projection = (weight / self.bandwidth, phase) if self.random_features else None
        self._started = True

    def learn(self, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> None:
        """Learn labeled rows, oldest first (the first ``WARMUP`` wait to set the feature map)."""
        if not len(y):
            return
        inputs = as_inputs(x)
        labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.classes):
            raise ValueError(
                f"labels must lie in [0, {self.classes}), got {int(labels.min())}..{int(labels.max())}"
            )
        self.scaling.resolve(np.asarray(x).dtype)
        self.scaling.fit(inputs)
        self.learned += len(labels)
        if not self._started:
            self._warmup.append((inputs, labels))
            if self.learned < WARMUP:
                return
            inputs = torch.cat([i for i, _ in self._warmup])
            labels = torch.cat([label for _, label in self._warmup])
            self._warmup = []
            self._start(inputs)
        f = self._map(inputs).double()
        for head in self.members.values():
            head.learn(f, labels)

    def predictor(self) -> Predictor | None:
        """What the heads have learned so far, to predict with (None before they are ready)."""
        if not self.ready:
            return None
        fitted = self.scaling.weights()
        return Predictor(
            scale=(self.scaling.mode, fitted["scaling.shift"], fitted["scaling.scale"]),
            projection=self._projection,
            heads={name: head.fit() for name, head in self.members.items()},
        )

    def predict(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each head's predicted label of each row of ``x`` (empty before the heads are ready)."""
        predictor = self.predictor()
        return predictor.predict(x) if predictor is not None and len(x) else {}

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, meta) from which :meth:`restore` continues exactly."""
        tensors = self.scaling.weights() | self.scaling.state()
        if self._projection is not None:
            tensors["map.weight"], tensors["map.phase"] = (t.clone() for t in self._projection)
        for i, (inputs, labels) in enumerate(self._warmup):
            tensors[f"warmup.{i}.x"], tensors[f"warmup.{i}.y"] = inputs.clone(), labels.clone()
        for name, head in self.members.items():
            tensors.update(head.state(f"head.{name}"))
        meta = {
            "format": FORMAT,
            "features": self.features,
            "classes": self.classes,
            "random_features": self.random_features,
            "half_lives": [head.half_life for head in self.members.values()],
            "bandwidth": self.bandwidth,
            "started": self._started,
            "learned": self.learned,
            "warmup": len(self._warmup),
            "scaling": self.scaling.meta(),
        }
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint`; ``ValueError`` when it was made for other heads."""
        if int(meta.get("format", 0)) != FORMAT:
            raise ValueError(f"heads format {meta.get('format')!r}, this version reads {FORMAT}")
        own = {
            "features": self.features,
            "classes": self.classes,
            "random_features": self.random_features,
            "half_lives": [head.half_life for head in self.members.values()],
        }
        differs = {key: (meta.get(key), value) for key, value in own.items() if meta.get(key) != value}
        if differs:
            raise ValueError(f"the saved heads were built with other settings (saved, configured): {differs}")
        self.scaling.restore(meta["scaling"], tensors)
        self.bandwidth = float(meta["bandwidth"])
        self.learned = int(meta["learned"])
        self._started = bool(meta.get("started"))
        self._projection = (
            (tensors["map.weight"].clone(), tensors["map.phase"].clone()) if "map.weight" in tensors else None
        )
        self._warmup = [
            (tensors[f"warmup.{i}.x"].clone(), tensors[f"warmup.{i}.y"].clone())
            for i in range(int(meta["warmup"]))
        ]
        learned = self.learned - sum(len(label) for _, label in self._warmup)
        for name, head in self.members.items():
            head.restore(f"head.{name}", tensors, learned)
