"""Online members: classifiers updated on every label, served beside the network.

The replay-trained network learns once per update round; between rounds it
cannot follow the stream, and before the first round nothing serves. The online
members learn each labeled sample as it is stored, without gradient rounds, so
they predict from a class's first labels on:

- the inputs are scaled as the network scales them (:class:`~lifelong.learners.scaling.Scaling`,
  fitted on the labeled samples as they come), then mapped to ``[x, random Fourier features of x]``
  (an RBF kernel's features, the bandwidth set from the first samples: a linear
  classifier on them draws curved boundaries);
- each head (:class:`StreamingLDA`) is a streaming linear discriminant on those:
  per-class means and one shared covariance (shrunk toward its average variance as far
  as its samples call for: :func:`~lifelong.learners.members.shrinkage`),
  the exact sums of every sample it learned. With a ``half_life`` (in labels) the
  sums decay, so an old concept fades and the head follows change (a class only
  absent keeps its mean); without one it never forgets, whatever the order the
  classes come in. That head (``lda``) reads a wider map of its own (``lda_features``):
  its covariance is estimated from every label ever given, so it affords many more
  features than the heads that estimate theirs from recent labels alone, and more
  random features draw a closer approximation of the kernel's boundary (RanPAC's
  observation); its cost is memory and CPU quadratic in that width (see
  :class:`~lifelong.learners.members.StreamingLDA` for how its solves are spaced).
  :class:`RestartingLDA` never forgets until its own errors rise (ADWIN), then
  restarts its classes from the labels since the change. It can run on
  several maps (``restarting_bandwidths``, multiples of that bandwidth): a narrower map
  draws finer boundaries, which a curved concept needs and a near-linear one does not,
  so the vote below, not a setting, decides per stream which to trust;
- :class:`OnlineLogistic` members are logistic regressions on the scaled inputs,
  one SGD step per label;
- :class:`PriorCounts` answers the recent labels' most frequent class: what is
  served before any other member can answer.

Members are cheap to rebuild: their state is a function of the label events in the
sample store, in order. :meth:`Heads.checkpoint` saves it with the last event
learned, and a restart replays the events after that one.

Serving reads a :class:`Predictor`: what the members had learned when it was made
(the scaling, the feature map and each member's linear scores, in float32), so
another thread predicts with it while the members learn on.

Example::

    heads = Heads(features=10, classes=3, heads=[0, 100], linear=[0.05], lda_features=512)
    heads.predict(x_new)              # {"prior": array([0, ...])}: nothing learned yet
    heads.learn(x, y)                 # n x 10 inputs, n labels
    heads.predict(x_new)              # {"lda": ..., "lda_100": ..., "linear_0.05": ..., "prior": ...}
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
from lifelong.learners.members import OnlineLogistic, PriorCounts, RestartingLDA, StreamingLDA
from lifelong.learners.scaling import Scaling

FORMAT = 4
WARMUP = 32  # labeled samples buffered before the feature map's bandwidth is set from them
PRIOR = "prior"
RESTARTING = "lda_restart"
SHARED = "map"  # the map the heads read unless named in ``maps``
WIDE = "map_lda"  # the never-forgetting head's own map
# Labels learned since its last covariance solve, as a share of those it was solved on, that make the
# never-forgetting head solve again (its means are solved at every batch).
REFACTOR = 0.1
# ``lda_features = "auto"``: this many random features per input, at most WIDEST (random Fourier features
# approximate a kernel about as well with features in proportion to the inputs; the cost is quadratic).
WIDE_PER_INPUT = 8
WIDEST = 4096


def wide_features(setting: int | str, *, features: int, head_features: int) -> int:
    """The never-forgetting head's own random features for ``lda_features`` (``"auto"`` or a count).

    Auto: ``WIDE_PER_INPUT`` per input, rounded up to a multiple of 256, at most ``WIDEST``; 0 (the
    shared map) where that is no wider than the shared map's ``head_features``.
    """
    if setting != "auto":
        return int(setting)
    wide = min(WIDEST, -(-WIDE_PER_INPUT * features // 256) * 256)
    return wide if wide > head_features else 0


def head_name(half_life: int) -> str:
    """The member name of a head: ``lda`` (never forgets) or ``lda_<half-life>``."""
    return "lda" if half_life == 0 else f"lda_{half_life}"


def map_key(bandwidth: float) -> str:
    """The key of the map at ``bandwidth`` (x the shared one's): ``map`` or ``map_<bandwidth>``."""
    return SHARED if bandwidth == 1.0 else f"{SHARED}_{bandwidth:g}"


def restarting_name(bandwidth: float) -> str:
    """A restarting head's member name: ``lda_restart`` (shared map), else ``lda_restart_<bandwidth>``."""
    return RESTARTING if bandwidth == 1.0 else f"{RESTARTING}_{bandwidth:g}"


def linear_name(rate: float) -> str:
    """The member name of an online logistic regression: ``linear_<learning rate>``."""
    return f"linear_{rate:g}"


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
    projections: dict[str, tuple[torch.Tensor, torch.Tensor] | None]  # map key -> map, float32
    heads: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (coefficients, biases)
    maps: dict[str, str]  # name -> the key of the map it reads (``SHARED`` when not named)

    @torch.no_grad()
    def scores(self, x: np.ndarray[Any, Any]) -> dict[str, torch.Tensor]:
        """Each head's linear scores of each row of ``x`` (rows x classes; -inf: a class it never saw)."""
        z = as_inputs(x)
        mode, shift, scale = self.scale
        if mode in ("standardize", "range"):
            z = (z - shift) / scale
        out: dict[str, torch.Tensor] = {}
        for key, projection in self.projections.items():
            names = [name for name in self.heads if self.maps.get(name, SHARED) == key]
            if not names:
                continue
            coef = torch.cat([self.heads[name][0] for name in names])  # the map's heads in one product
            bias = torch.cat([self.heads[name][1] for name in names])
            # [z, sqrt(2) cos(z W + b)] @ coef.T without building the features' matrix.
            scores = torch.addmm(bias, z.float(), coef[:, : z.shape[1]].T)
            if projection is not None:
                waves = torch.addmm(projection[1], z.float(), projection[0]).cos_()
                scores.addmm_(waves, coef[:, z.shape[1] :].T, alpha=math.sqrt(2.0))
            scores = scores.view(len(z), len(names), -1)
            out |= {name: scores[:, k] for k, name in enumerate(names)}
        return {name: out[name] for name in self.heads}

    def predict(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each head's predicted label of each row of ``x``."""
        return {name: s.argmax(1).numpy() for name, s in self.scores(x).items()}

    def probabilities(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each head's class probabilities of each row of ``x`` (the softmax of its scores; float32).

        A discriminant's scores are its log posteriors up to a constant per row, a logistic
        regression's are its logits, the prior's the log of its class shares.
        """
        return {name: softmax(s) for name, s in self.scores(x).items()}


def softmax(scores: torch.Tensor) -> np.ndarray[Any, Any]:
    """Rows of scores to probabilities; a row with no finite score (nothing learned) is uniform."""
    finite = scores.nan_to_num(nan=-1e30, neginf=-1e30, posinf=1e30)
    probabilities: np.ndarray[Any, Any] = torch.softmax(finite.float(), dim=1).numpy()
    return probabilities


class Heads:
    """The online members of one daemon: a shared input map, one :class:`StreamingLDA` per half-life
    (the one that never forgets on a wider map of its own), the :class:`RestartingLDA` heads, one
    :class:`OnlineLogistic` per learning rate, and the :class:`PriorCounts`."""

    def __init__(
        self,
        *,
        features: int,
        classes: int,
        heads: Sequence[int] = (0, 100, 1000),
        linear: Sequence[float] = (),
        restarting_head: bool = False,
        restarting_bandwidths: Sequence[float] = (1.0,),
        head_features: int = 256,
        lda_features: int = 0,
        scaling: str = "auto",
        scaling_range: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        if any(h < 0 for h in heads) or len(set(heads)) != len(heads):
            raise ValueError(f"heads must be distinct and >= 0, got {list(heads)}")
        if any(not r > 0 for r in linear) or len({linear_name(r) for r in linear}) != len(linear):
            raise ValueError(f"linear learning rates must be distinct and > 0, got {list(linear)}")
        bandwidths = list(restarting_bandwidths)
        if restarting_head and (
            not bandwidths or any(not b > 0 for b in bandwidths) or len(set(bandwidths)) != len(bandwidths)
        ):
            raise ValueError(f"restarting_bandwidths must be distinct and > 0, got {bandwidths}")
        if head_features < 0 or lda_features < 0:
            raise ValueError(f"random features must be >= 0, got {random_features} and {lda_features}")
        self.features = features
        self.classes = classes
        # Only the discriminant heads read the random features: without one on the shared map it is not
        # drawn, and serving (on the ingestion path) does not compute it.
        self.lda_features = lda_features if 0 in heads else 0
        shared = restarting_head or any(h or not self.lda_features for h in heads)
        self.random_features = head_features if shared else 0
        self.seed = seed
        self._settings: dict[str, Any] = {
            "features": features,
            "classes": classes,
            "heads": list(heads),
            "linear": list(linear),
            "restarting_head": restarting_head,
            "restarting_bandwidths": bandwidths,
            "head_features": head_features,
            "lda_features": lda_features,
            "scaling": scaling,
            "scaling_range": tuple(scaling_range),
            "seed": seed,
        }
        low, high = scaling_range
        self.scaling = Scaling(mode=scaling, low=low, high=high)
        self.width = features + self.random_features
        # Each map the heads read, by key: (its bandwidth as a multiple of the median distance, its number
        # of random features). The shared one for the decaying heads, one more per other restarting
        # bandwidth, and the never-forgetting head's own; drawn in this order.
        self._specs: dict[str, tuple[float, int]] = {SHARED: (1.0, self.random_features)}
        if restarting_head:
            self._specs |= {map_key(b): (b, self.random_features) for b in sorted(bandwidths) if b != 1.0}
        if self.lda_features:
            self._specs[WIDE] = (1.0, self.lda_features)
        self.maps: dict[str, str] = {}
        self.members: dict[str, StreamingLDA | RestartingLDA | OnlineLogistic] = {}
        for h in heads:
            if h == 0 and self.lda_features:
                self.maps[head_name(h)] = WIDE
                width = features + self.lda_features
                self.members[head_name(h)] = StreamingLDA(width=width, classes=classes, refactor=REFACTOR)
            else:
                self.members[head_name(h)] = StreamingLDA(width=self.width, classes=classes, half_life=h)
        if restarting_head:
            for bandwidth in bandwidths:
                name = restarting_name(bandwidth)
                self.members[name] = RestartingLDA(width=self.width, classes=classes)
                self.maps[name] = map_key(bandwidth)
        self.members |= {
            linear_name(r): OnlineLogistic(features=features, width=self.width, classes=classes, rate=r)
            for r in linear
        }
        self.prior = PriorCounts(classes=classes)
        self.bandwidth = 0.0  # set from the first WARMUP samples
        self._started = False
        self._projections: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {SHARED: None}
        self._warmup: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.learned = 0  # labeled samples taken in (buffered or learned)

    def fresh(self) -> Heads:
        """New heads with the same settings, having learned nothing."""
        return Heads(**self._settings)

    @property
    def ready(self) -> bool:
        """Whether the learned members predict (they have learned their first samples)."""
        return self._started and self.learned > 0

    @property
    def names(self) -> list[str]:
        """Every member's name (the prior's last)."""
        return [*self.members, PRIOR]

    def _map(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each map's features of ``x``, float64."""
        z = self.scaling(x)
        return {key: random_features(z, projection).double() for key, projection in self._projections.items()}

    def _learn_mapped(self, x: torch.Tensor, y: torch.Tensor, *, skip_linear: bool = False) -> None:
        f = self._map(x)
        for name, member in self.members.items():
            if not (skip_linear and isinstance(member, OnlineLogistic)):
                member.learn(f[self.maps.get(name, SHARED)], y)

    def _start(self, x: torch.Tensor) -> None:
        """Set the random features' bandwidth from the first samples (median distance) and draw the maps."""
        z = self.scaling(x[:256]).to(torch.float64)
        distances = torch.cdist(z, z)
        off = distances[~torch.eye(len(z), dtype=torch.bool)]
        positive = off[off > 0]
        self.bandwidth = float(positive.median()) if len(positive) else 1.0
        generator = torch.Generator().manual_seed(self.seed)
        for key, (bandwidth, count) in self._specs.items():
            weight = torch.randn(self.features, count, generator=generator)
            phase = torch.rand(count, generator=generator) * 2 * math.pi
            self._projections[key] = (weight / (self.bandwidth * bandwidth), phase) if count else None
        self._started = True

    def learn(self, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> None:
        """Learn labeled rows, oldest first.

        The heads wait for the first ``WARMUP`` to set the feature map; the linear members and
        the prior, which read the scaled inputs alone, learn from the first label on.
        """
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
        self.prior.learn(labels)
        self.learned += len(labels)
        if self._started:
            self._learn_mapped(inputs, labels)
            return
        scaled = self.scaling(inputs).double()
        for member in self._linear().values():
            member.learn(scaled, labels)
        self._warmup.append((inputs, labels))
        if self.learned < WARMUP:
            return
        inputs = torch.cat([i for i, _ in self._warmup])
        labels = torch.cat([label for _, label in self._warmup])
        self._warmup = []
        self._start(inputs)
        self._learn_mapped(inputs, labels, skip_linear=True)  # the linear members learned these already

    def _linear(self) -> dict[str, OnlineLogistic]:
        return {name: m for name, m in self.members.items() if isinstance(m, OnlineLogistic)}

    def predictor(self) -> Predictor:
        """What the members have learned so far, to predict with (before any label, the prior alone)."""
        fitted = self.scaling.weights()
        scale = (self.scaling.mode, fitted["scaling.shift"], fitted["scaling.scale"])
        if not self.ready:  # the feature map is not drawn yet: the members reading the scaled inputs alone
            fits = {name: m.fit() for name, m in self._linear().items()} if self.learned else {}
            heads = {name: (coef[:, : self.features], bias) for name, (coef, bias) in fits.items()}
            return Predictor(
                scale=scale,
                projections={SHARED: None},
                heads=heads | {PRIOR: self.prior.fit(self.features)},
                maps={},
            )
        heads = {name: member.fit() for name, member in self.members.items()}
        return Predictor(
            scale=scale,
            projections=dict(self._projections),
            heads=heads | {PRIOR: self.prior.fit(self.width)},
            maps=dict(self.maps),
        )

    def predict(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each member's predicted label of each row of ``x``."""
        return self.predictor().predict(x) if len(x) else {}

    def probabilities(self, x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        """Each member's class probabilities of each row of ``x`` (see :meth:`Predictor.probabilities`)."""
        return self.predictor().probabilities(x) if len(x) else {}

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, meta) from which :meth:`restore` continues exactly."""
        tensors = self.scaling.weights() | self.scaling.state()
        for key, projection in self._projections.items():
            if projection is not None:
                tensors[f"{key}.weight"], tensors[f"{key}.phase"] = (t.clone() for t in projection)
        for i, (inputs, labels) in enumerate(self._warmup):
            tensors[f"warmup.{i}.x"], tensors[f"warmup.{i}.y"] = inputs.clone(), labels.clone()
        for name, head in self.members.items():
            tensors.update(head.state(f"head.{name}"))
        tensors["prior.weight"] = self.prior.weight.clone()
        meta = {
            "format": FORMAT,
            "features": self.features,
            "classes": self.classes,
            "random_features": self.random_features,
            "lda_features": self.lda_features,
            "half_lives": self._settings["heads"],
            "linear": self._settings["linear"],
            "restarting": self._settings["restarting_head"],
            "restarting_bandwidths": self._settings["restarting_bandwidths"],
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
            "lda_features": self.lda_features,
            "half_lives": self._settings["heads"],
            "linear": self._settings["linear"],
            "restarting": self._settings["restarting_head"],
            "restarting_bandwidths": self._settings["restarting_bandwidths"],
        }
        differs = {key: (meta.get(key), value) for key, value in own.items() if meta.get(key) != value}
        if differs:
            raise ValueError(f"the saved heads were built with other settings (saved, configured): {differs}")
        self.scaling.restore(meta["scaling"], tensors)
        self.bandwidth = float(meta["bandwidth"])
        self.learned = int(meta["learned"])
        self._started = bool(meta.get("started"))
        for key in self._specs:
            self._projections[key] = (
                (tensors[f"{key}.weight"].clone(), tensors[f"{key}.phase"].clone())
                if f"{key}.weight" in tensors
                else None
            )
        self._warmup = [
            (tensors[f"warmup.{i}.x"].clone(), tensors[f"warmup.{i}.y"].clone())
            for i in range(int(meta["warmup"]))
        ]
        learned = self.learned - sum(len(label) for _, label in self._warmup)
        for name, head in self.members.items():
            head.restore(f"head.{name}", tensors, learned)
        self.prior.weight = tensors["prior.weight"].to(torch.float64).clone()
