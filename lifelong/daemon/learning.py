"""Builds the learning side from settings: registry, learner, trainer and its gate, updater."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.config import LearnerSettings, Settings
from lifelong.daemon.remember import MemoryFeed
from lifelong.daemon.trust import LabelTrust
from lifelong.daemon.update import Updater
from lifelong.errors import ConfigError
from lifelong.learners.gate import Gate
from lifelong.learners.heads import Heads
from lifelong.learners.trainer import Trainer
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore
from lifelong.registry import ModelRegistry

if TYPE_CHECKING:
    from lifelong.learners.avalanche import AvalancheLearner


def open_registry(settings: Settings) -> ModelRegistry:
    """The model registry in the state directory."""
    return ModelRegistry(root=Path(settings.state.dir) / "models", keep_last=settings.learner.keep_versions)


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
        "half_lives": learner.heads,
        "linear": learner.linear,
        "restarting": learner.restarting_head,
        "restarting_bandwidths": learner.restarting_bandwidths,
        "random_features": learner.head_features,
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


def build_trainer(settings: Settings) -> Trainer:
    """The trainer: candidates built from ``[learner]``, judged by its gate settings."""
    trainer = Trainer(
        build=lambda: build_learner(settings, exclude_from_replay=trainer.held_out),
        gate=build_gate(settings.learner),
        holdout=settings.learner.holdout,
    )
    trainer.build()  # a bad model, plugin or device fails at start, naming the key
    return trainer


def build_updater(
    settings: Settings,
    *,
    store: SampleStore,
    memory: RehearsalMemory,
    feed: MemoryFeed | None,
    lock: AbstractContextManager[Any] | None = None,
) -> Updater:
    """Update rounds over the store and memory, versions in the state directory's registry."""

    def before_round() -> None:
        if feed is not None:
            feed.catch_up()
            feed.maybe_snapshot(force=True)

    trust = None
    if settings.data.relabels == "hold":
        trust = LabelTrust(
            store=store, memory=memory, features=settings.data.features, hold_s=settings.data.relabel_hold_s
        )
    return Updater(
        trainer=build_trainer(settings),
        store=store,
        memory=memory,
        registry=open_registry(settings),
        features=settings.data.features,
        recent=settings.learner.recent,
        max_round_samples=settings.schedule.max_round_labels,
        config=settings.learner.model_dump(mode="json"),
        before_round=before_round,
        trust=trust,
        lock=lock,
    )
