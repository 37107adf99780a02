"""The learners the settings describe: the network's learner, the online heads, the gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lifelong.config import LearnerSettings, Settings
from lifelong.errors import ConfigError
from lifelong.learners.gate import Gate
from lifelong.learners.heads import Heads, wide_features

if TYPE_CHECKING:
    from lifelong.learners.avalanche import AvalancheLearner


def build_learner(
    settings: Settings, *, exclude_from_replay: Callable[[str], bool] | None = None
) -> AvalancheLearner:
    """A fresh learner as ``[learner]`` and ``[data]`` describe it."""
    # Imported here: Avalanche takes seconds to import, and status, forget and versions never need it.
    import torch

    from lifelong.learners.avalanche import AvalancheLearner
    from lifelong.learners.models import build_model

    learner = settings.learner
    with torch.random.fork_rng(devices=[]):  # the same seed, the same initial weights, every run
        torch.manual_seed(learner.seed)
        model = build_model(
            learner.model,
            features=settings.data.features,
            classes=settings.data.max_classes,
            options=learner.model_options,
            init_weights=learner.init_weights,
            freeze=learner.freeze,
        )
    try:
        return AvalancheLearner(
            model=model,
            classes=settings.data.max_classes,
            exclude_from_replay=exclude_from_replay,
            **learner.learner_options(),
        )
    except ValueError as error:  # the device, most likely
        raise ConfigError(f"learner: {error}") from None


def build_heads(learner: LearnerSettings, *, features: int, classes: int, **overrides: Any) -> Heads:
    """The online heads ``[learner] heads`` and ``head_features`` describe (``overrides`` on top)."""
    options: dict[str, Any] = {
        "heads": learner.heads,
        "linear": learner.linear,
        "restarting_head": learner.restarting_head,
        "restarting_bandwidths": learner.restarting_bandwidths,
        "head_features": learner.head_features,
        "lda_features": wide_features(
            learner.lda_features, features=features, head_features=learner.head_features
        ),
        "scaling": learner.scaling,
        "scaling_range": learner.scaling_range,
        "seed": learner.seed,
    }
    return Heads(features=features, classes=classes, **(options | overrides))


def build_gate(learner: LearnerSettings) -> Gate:
    """The gate ``[learner] gate_*`` describe."""
    return Gate(
        recent_tolerance=learner.gate_recent_tolerance,
        memory_tolerance=learner.gate_memory_tolerance,
        min_samples=learner.gate_min_samples,
        z=learner.gate_z,
        max_margin=learner.gate_max_margin,
        change_delta=learner.gate_change_delta,
        change_rounds=learner.gate_change_rounds,
    )
