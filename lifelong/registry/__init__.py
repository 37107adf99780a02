"""Model versions, promotion and rollback: every version kept, one champion serving, the way back."""

from __future__ import annotations

from lifelong.registry.base import LoadedVersion, ModelVersion, Status
from lifelong.registry.store import ModelRegistry, open_registry

__all__ = ["LoadedVersion", "ModelRegistry", "ModelVersion", "Status", "open_registry"]
