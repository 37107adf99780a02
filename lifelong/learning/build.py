"""Builds the daemon's learning side from settings: the trainer and its updater."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from lifelong.config import Settings
from lifelong.learners.configured import build_gate, build_learner
from lifelong.learners.trainer import Trainer
from lifelong.learning.remember import MemoryFeed
from lifelong.learning.trust import LabelTrust
from lifelong.learning.update import Updater
from lifelong.memory.rehearsal import RehearsalMemory
from lifelong.memory.samples import SampleStore
from lifelong.registry import open_registry


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
        max_round_labels=settings.schedule.max_round_labels,
        config=settings.learner.model_dump(mode="json"),
        before_round=before_round,
        trust=trust,
        lock=lock,
    )
