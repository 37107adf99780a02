"""A model plugin as a user writes one: a factory taking (features, classes, **options)."""

from __future__ import annotations

from torch import nn


def tiny(features: int, classes: int, *, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, classes))
