"""Input scaling inside the learner: statistics learned from the stream, saved with each version.

Users send raw features (a price in cents next to a ratio): an MLP fed values
around 1e5 trains to noise, and nothing fails loudly. The learner therefore
scales every input the same way wherever it meets one (training, replay,
prediction, the gate, serving processes), with statistics that travel with
the version that was trained on them:

- ``standardize``: per-feature running mean and standard deviation of every
  sample the learner has trained on (exact, merged round by round);
- ``range``: fixed ``[low, high]`` mapped to ``[0, 1]`` (images in known units);
- ``none``: as sent (uint8 inputs are still read as intensities in ``[0, 1]``);
- ``auto`` (the default): ``range`` for uint8 inputs (already ``[0, 1]``),
  ``standardize`` for float inputs, decided by the first round's data.

It also keeps the range of each feature it was fitted on: :meth:`Scaling.outside`
tells which rows lie beyond it (by more than half that range), for the warning
and the ``lifelong_inputs_out_of_range_total`` metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MODES = ("auto", "standardize", "range", "none")
FORMAT = 1
# A row is "outside" when a feature leaves the fitted [min, max] by more than this share of its span.
MARGIN = 0.5


class Scaling:
    """``x -> (x - shift) / scale`` per feature, fitted from the samples trained on.

    Example::

        scaling = Scaling(mode="standardize")
        scaling.fit(torch.tensor([[1.0, 1e5, 0.0], [3.0, 3e5, 0.0]]))
        scaling(torch.tensor([[2.0, 2e5, 0.0]]))      # tensor([[0., 0., 0.]])
    """

    def __init__(self, *, mode: str = "auto", low: float = 0.0, high: float = 1.0) -> None:
        if mode not in MODES:
            raise ValueError(f"scaling must be one of {MODES}, got {mode!r}")
        if mode == "range" and not high > low:
            raise ValueError(f"scaling range needs low < high, got [{low}, {high}]")
        self.mode = mode
        self.low = low
        self.high = high
        self._count = 0
        # Sized by the first data (the learner does not know its input width before).
        self._mean = self._m2 = self._min = self._max = torch.zeros(0, dtype=torch.float64)
        self._shift = torch.full((1,), low if mode == "range" else 0.0)
        self._scale = torch.full((1,), high - low if mode == "range" else 1.0)

    @property
    def count(self) -> int:
        """Samples the statistics were fitted on."""
        return self._count

    def resolve(self, dtype: np.dtype[Any]) -> None:
        """Settle ``auto`` by the input type of the first data (uint8: already [0, 1]; float: standardize)."""
        if self.mode == "auto":
            self.mode = "none" if dtype == np.uint8 else "standardize"

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Merge a batch (n x features, as the model reads it) into the running statistics."""
        if not len(x):
            return
        batch = x.detach().to(torch.float64).cpu()
        n = len(batch)
        if not self._count:
            width = batch.shape[1]
            self._mean = torch.zeros(width, dtype=torch.float64)
            self._m2 = torch.zeros(width, dtype=torch.float64)
            self._min = torch.full((width,), float("inf"), dtype=torch.float64)
            self._max = torch.full((width,), float("-inf"), dtype=torch.float64)
        mean = batch.mean(0)
        m2 = ((batch - mean) ** 2).sum(0)
        total = self._count + n
        delta = mean - self._mean
        self._mean += delta * (n / total)
        self._m2 += m2 + delta**2 * (self._count * n / total)
        self._count = total
        self._min = torch.minimum(self._min, batch.min(0).values)
        self._max = torch.maximum(self._max, batch.max(0).values)
        if self.mode == "standardize":
            std = (self._m2 / max(1, self._count - 1)).sqrt()
            # A constant feature (std 0, or rounding noise far below its magnitude) is only centered.
            tiny = 1e-6 * torch.clamp(self._mean.abs(), min=1.0)
            self._shift = self._mean.float()
            self._scale = torch.where(std > tiny, std, torch.ones_like(std)).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("none", "auto"):
            return x
        return (x - self._shift.to(x.device)) / self._scale.to(x.device)

    @torch.no_grad()
    def outside(self, x: torch.Tensor) -> np.ndarray[Any, Any]:
        """Which rows leave the fitted range of some feature by more than half its span."""
        if not self._count or not len(x):
            return np.zeros(len(x), dtype=bool)
        span = (self._max - self._min).clamp(min=1e-12)
        low, high = self._min - MARGIN * span, self._max + MARGIN * span
        values = x.detach().to(torch.float64).cpu()
        return ((values < low) | (values > high)).any(1).numpy()

    def weights(self) -> dict[str, torch.Tensor]:
        """What serving needs (saved beside the model's weights)."""
        return {"scaling.shift": self._shift.clone(), "scaling.scale": self._scale.clone()}

    def state(self) -> dict[str, torch.Tensor]:
        """What fitting further needs: the running moments and the fitted range."""
        return {
            "scaling.mean": self._mean.clone(),
            "scaling.m2": self._m2.clone(),
            "scaling.min": self._min.clone(),
            "scaling.max": self._max.clone(),
        }

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "mode": self.mode, "count": self._count, "low": self.low, "high": self.high}

    def restore(self, meta: dict[str, Any] | None, tensors: dict[str, torch.Tensor]) -> None:
        """Put back what :meth:`meta`, :meth:`weights` and :meth:`state` saved.

        A version saved before input scaling existed (no ``meta``) keeps serving its inputs as
        sent: its weights were trained on them.
        """
        if meta is None:
            self.mode = "none"
            return
        if int(meta.get("format", 0)) != FORMAT:
            raise ValueError(f"input scaling format {meta.get('format')!r}, this version reads {FORMAT}")
        self.mode = str(meta["mode"])
        self.low, self.high = float(meta["low"]), float(meta["high"])
        self._count = int(meta["count"])
        for name in ("shift", "scale"):
            setattr(self, f"_{name}", tensors[f"scaling.{name}"].float().cpu().clone())
        for name in ("mean", "m2", "min", "max"):
            if (tensor := tensors.get(f"scaling.{name}")) is not None:
                setattr(self, f"_{name}", tensor.to(torch.float64).cpu().clone())
