"""Every learner the daemon can build keeps the Learner contract (lifelong.learners.conformance)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from lifelong.config import Settings
from lifelong.labeled import Labeled
from lifelong.learners.base import Learner, RoundReport
from lifelong.learners.configured import build_learner
from lifelong.learners.conformance import check_learner

FEATURES, CLASSES = 64, 4


def configured(**learner: Any) -> Callable[[], Learner]:
    settings = Settings.model_validate(
        {
            "data": {"features": FEATURES, "max_classes": CLASSES},
            "learner": {"device": "cpu", "epochs": 2, **learner},
        }
    )
    return lambda: build_learner(settings)


@pytest.mark.parametrize(
    "build",
    [
        configured(),  # the defaults: MLP, online EWC
        configured(model="cnn", model_options={"width": 8, "hidden": 32}),
        configured(plugins={"lwf": {}}, optimizer="sgd", lr=0.05, momentum=0.9),
        configured(model="tests.custom_models:tiny", model_options={"hidden": 16}),  # a user's plugin
    ],
    ids=["default", "cnn", "lwf-sgd", "custom-plugin"],
)
def test_every_learner_keeps_the_contract(build: Callable[[], Learner]) -> None:
    check_learner(build, features=FEATURES, classes=CLASSES)


class Forgetful:
    """A learner that breaks the contract: its checkpoint restores nothing."""

    def __init__(self) -> None:
        self.inner = configured()()

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return self.inner.predict(x)

    def update(self, new: Labeled, replay: Any = None, *, stop: Any = None) -> RoundReport:
        return self.inner.update(new, replay, stop=stop)

    def checkpoint(self) -> Any:
        return self.inner.checkpoint()

    def restore(self, checkpoint: Any) -> None:
        pass


def test_the_suite_names_the_broken_part_of_the_contract() -> None:
    with pytest.raises(AssertionError, match="restored from a checkpoint"):
        check_learner(Forgetful, features=FEATURES, classes=CLASSES)
