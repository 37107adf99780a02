"""lifelong: a continual-learning feedback-loop daemon."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from lifelong.config import Settings, load_settings
from lifelong.errors import (
    ConfigError,
    DiskFull,
    LifelongError,
    MissingExtraError,
    StateDamaged,
    StateError,
)
from lifelong.events import Decoder, Feedback, Reason, Rejection, Sample

try:
    __version__ = version("lifelong")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ConfigError",
    "Decoder",
    "DiskFull",
    "Feedback",
    "LifelongError",
    "MissingExtraError",
    "Reason",
    "Rejection",
    "Sample",
    "Settings",
    "StateDamaged",
    "StateError",
    "__version__",
    "load_settings",
]
