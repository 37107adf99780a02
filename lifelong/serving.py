"""For serving processes: the champion model, hot-reloaded when the daemon publishes a model event.

A serving process reads the daemon's model registry (the state directory's
``models/``, e.g. on a shared volume or a read-only mount) and follows the
``lifelong.models`` topic: a promotion or a rollback reloads the champion at
once, and a check every ``check_s`` catches an event it missed. Predictions
keep coming from the old version until the new one has loaded.

Example::

    from lifelong.serving import ServingModel

    model = ServingModel.from_config("lifelong.toml")   # loads the champion, follows lifelong.models
    labels = model.predict(x)                          # x: (n, features) float32 or uint8
    model.version                                      # the version that answered
    model.close()
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.connectors.base import Tail
from lifelong.errors import LifelongError
from lifelong.learners.base import Checkpoint, Learner
from lifelong.registry import ModelRegistry

log = logging.getLogger(__name__)

RELOAD_EVENTS = {"promoted", "rolled_back"}


def load_version(registry: ModelRegistry, version: int, build: Callable[[], Learner]) -> Learner:
    """A learner restored from a registry version (weights, optimizer and plugin state)."""
    loaded = registry.load(version)
    learner = build()
    learner.restore(Checkpoint(weights=loaded.weights, state=loaded.state, meta=dict(loaded.info.learner)))
    return learner


class ServingModel:
    """The registry's champion, ready to predict, following model events.

    Example::

        model = ServingModel(registry=registry, build=lambda: build_learner(settings), events=tail)
        model.follow()
        model.predict(x)
    """

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        build: Callable[[], Learner],
        events: Tail | None = None,
        check_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.build = build
        self.events = events
        self.check_s = check_s
        self.clock = clock
        self._served: tuple[int, Learner] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reload()

    @classmethod
    def from_config(cls, path: str | Path | None, *, follow: bool = True) -> ServingModel:
        """From a daemon's config file: its registry, its model, and (``follow``) its models topic."""
        from lifelong.config import load_settings
        from lifelong.connectors.kafka import client_options
        from lifelong.connectors.kafka_topics import KafkaTail
        from lifelong.learners.configured import build_learner
        from lifelong.registry import open_registry

        settings = load_settings(path)
        events = (
            KafkaTail(topic=settings.kafka.models_topic, client_options=client_options(settings.kafka))
            if follow
            else None
        )
        model = cls(registry=open_registry(settings), build=lambda: build_learner(settings), events=events)
        if follow:
            model.follow()
        return model

    @property
    def version(self) -> int | None:
        """The version serving (None before the daemon's first promotion)."""
        served = self._served
        return None if served is None else served[0]

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The predicted label of each row of ``x``."""
        served = self._served
        if served is None:
            raise LifelongError(f"no model version has been promoted in {self.registry.root} yet")
        return served[1].predict(np.asarray(x))

    def reload(self) -> bool:
        """Load the registry's champion if it is not the one serving; True when it changed."""
        with self._lock:
            champion = self.registry.champion()
            if champion is None or champion.version == self.version:
                return False
            try:
                learner = load_version(self.registry, champion.version, self.build)
            except (LifelongError, RuntimeError, KeyError, ValueError) as error:
                log.error(
                    "cannot load model version %d (%s); %s keeps serving",
                    champion.version,
                    error,
                    self.version,
                )
                return False
            previous, self._served = self.version, (champion.version, learner)
        log.info("serving model version %d (was %s)", champion.version, previous)
        return True

    def follow(self) -> None:
        """Reload on model events (and every ``check_s``) on a background thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._follow, name="lifelong-serving", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        last_check = self.clock()
        while not self._stop.is_set():
            try:
                values = self.events.poll(1.0) if self.events is not None else []
                if self.events is None:
                    self._stop.wait(1.0)
                if any(_reloads(value) for value in values) or self.clock() - last_check >= self.check_s:
                    last_check = self.clock()
                    self.reload()
            except Exception:  # a broker or volume hiccup: the current model keeps serving
                log.exception("following model events failed; retrying in 5 s")
                self._stop.wait(5.0)

    def close(self) -> None:
        """Stop following and release the events connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.events is not None:
            self.events.close()


def _reloads(value: bytes) -> bool:
    try:
        event = json.loads(value)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("event") in RELOAD_EVENTS
