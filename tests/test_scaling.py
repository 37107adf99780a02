"""Input scaling inside the learner: raw units learn as well as scaled ones, and travel with the version."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lifelong.config import load_settings
from lifelong.errors import ConfigError
from lifelong.labeled import Labeled
from lifelong.learners.avalanche import AvalancheLearner
from lifelong.learners.base import Checkpoint
from lifelong.learners.models import mlp
from lifelong.learners.scaling import Scaling


def hyperplane(n: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """River's rotating-hyperplane concept (no drift here), features in [0, 1]."""
    from river.datasets import synth

    rows = list(synth.Hyperplane(seed=seed, n_features=10, noise_percentage=0.05).take(n))
    x = np.array([[row[k] for k in sorted(row)] for row, _ in rows], dtype=np.float32)
    return x, np.array([int(y) for _, y in rows])


def raw_units(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The same features as a user's raw columns: one in the 1e5s, one in the 1e3s, one offset by 2e4."""
    raw = x.copy()
    raw[:, 0] *= 1e5
    raw[:, 3] *= 1e3
    raw[:, 7] += 2e4
    return raw


def trained(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], **options: Any) -> AvalancheLearner:
    torch.manual_seed(0)
    learner = AvalancheLearner(model=mlp(x.shape[1], 2), classes=2, plugins={}, device="cpu", **options)
    for start in range(0, len(y), 1000):
        rows = slice(start, start + 1000)
        learner.update(Labeled([f"s{i}" for i in range(start, start + len(y[rows]))], x[rows], y[rows]))
    return learner


def test_raw_unit_features_reach_the_accuracy_of_scaled_ones() -> None:
    x, y = hyperplane(6000, seed=1)
    train, test = slice(0, 5000), slice(5000, None)
    scaled = trained(x[train], y[train])
    raw = trained(raw_units(x)[train], y[train])
    unscaled = trained(raw_units(x)[train], y[train], scaling="none")
    accuracy = {
        "scaled": float((scaled.predict(x[test]) == y[test]).mean()),
        "raw": float((raw.predict(raw_units(x)[test]) == y[test]).mean()),
        "raw, scaling off": float((unscaled.predict(raw_units(x)[test]) == y[test]).mean()),
    }
    assert accuracy["scaled"] > 0.85, accuracy
    assert abs(accuracy["raw"] - accuracy["scaled"]) <= 0.01, accuracy
    # The test can fail: without scaling the same raw columns train to (near) chance.
    assert accuracy["raw, scaling off"] < accuracy["raw"] - 0.2, accuracy


def test_scaling_travels_with_the_checkpoint_and_predicts_identically() -> None:
    x, y = hyperplane(2000, seed=2)
    learner = trained(raw_units(x), y)
    checkpoint = learner.checkpoint()
    assert {"scaling.shift", "scaling.scale"} <= set(checkpoint.weights)
    assert checkpoint.meta["scaling"]["mode"] == "standardize"
    restored = AvalancheLearner(model=mlp(10, 2), classes=2, plugins={}, device="cpu", scaling="none")
    restored.restore(checkpoint)  # the version's own scaling wins over a fresh learner's setting
    assert restored.scaling.mode == "standardize"
    np.testing.assert_array_equal(restored.predict(raw_units(x)), learner.predict(raw_units(x)))
    # It continues fitting from the saved moments: one more round moves both the same way.
    more = Labeled([f"m{i}" for i in range(500)], raw_units(x[:500]) * 1.1, y[:500])
    learner.scaling.fit(torch.from_numpy(more.x))
    restored.scaling.fit(torch.from_numpy(more.x))
    torch.testing.assert_close(restored.scaling.weights(), learner.scaling.weights())


def test_a_version_saved_before_scaling_keeps_its_inputs_as_sent() -> None:
    x, y = hyperplane(1000, seed=3)
    learner = trained(x, y, scaling="none")
    checkpoint = learner.checkpoint()
    old = Checkpoint(
        weights={k: v for k, v in checkpoint.weights.items() if not k.startswith("scaling.")},
        state={k: v for k, v in checkpoint.state.items() if not k.startswith("scaling.")},
        meta={k: v for k, v in checkpoint.meta.items() if k != "scaling"},
    )
    restored = AvalancheLearner(model=mlp(10, 2), classes=2, plugins={}, device="cpu")
    restored.restore(old)
    assert restored.scaling.mode == "none"
    np.testing.assert_array_equal(restored.predict(x), learner.predict(x))


def test_uint8_inputs_stay_intensities_and_fixed_ranges_map_to_unit_interval() -> None:
    auto = Scaling()
    auto.resolve(np.dtype(np.uint8))
    assert auto.mode == "none"
    fixed = Scaling(mode="range", low=-10.0, high=30.0)
    out = fixed(torch.tensor([[-10.0, 10.0, 30.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="low < high"):
        Scaling(mode="range", low=1.0, high=1.0)


def test_constant_features_are_centered_not_blown_up() -> None:
    scaling = Scaling(mode="standardize")
    batch = torch.tensor([[5.0, 1.0], [5.0, 3.0], [5.0, 5.0]])
    scaling.fit(batch)
    out = scaling(batch)
    assert torch.all(out[:, 0] == 0)
    assert torch.isfinite(out).all()


def test_rows_beyond_the_fitted_range_are_flagged() -> None:
    x, y = hyperplane(1000, seed=4)
    learner = trained(x, y)
    assert not learner.outside(x).any()
    shifted = x.copy()
    shifted[:10, 2] *= 1e3  # a feed that switched a column to other units
    assert learner.outside(shifted).tolist() == [True] * 10 + [False] * 990


def test_a_bad_scaling_range_fails_at_start_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"learner\.scaling_range"):
        load_settings(None, environ={"LIFELONG_LEARNER__SCALING_RANGE": "[5, 1]"})
    with pytest.raises(ConfigError, match=r"learner\.scaling"):
        load_settings(None, environ={"LIFELONG_LEARNER__SCALING": "minmax"})
