"""The learner contract on real PyTorch training: models, the Avalanche learner, plugins, the gate, rounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lifelong.benchmarks import digits
from lifelong.errors import ConfigError, StateError
from lifelong.labeled import Labeled
from lifelong.learners import models
from lifelong.learners.avalanche import AvalancheLearner
from lifelong.learners.base import accuracy
from lifelong.learners.conformance import FixedReplay
from lifelong.learners.gate import Gate, is_holdout
from lifelong.learners.models import build_model, cnn, mlp
from lifelong.learners.plugins import PLUGINS
from lifelong.learners.trainer import Trainer

X_TRAIN, Y_TRAIN, X_TEST, Y_TEST = digits()


def labeled(classes: tuple[int, ...], *, limit: int | None = None, poison: bool = False) -> Labeled:
    rows = np.flatnonzero(np.isin(Y_TRAIN, classes))[:limit]
    y = Y_TRAIN[rows].copy()
    if poison:
        y = np.random.default_rng(1).permutation(y)
        y = (y + 1 + np.random.default_rng(2).integers(0, 9, len(y))) % 10  # never the true label
    return Labeled(ids=[f"d{r}" for r in rows], x=X_TRAIN[rows], y=y)


def make(**overrides: Any) -> AvalancheLearner:
    options: dict[str, Any] = {
        "optimizer": "sgd",
        "lr": 0.05,
        "epochs": 3,
        "plugins": {"ewc": {}},
        "device": "cpu",
    }
    options.update(overrides)
    torch.manual_seed(0)
    return AvalancheLearner(model=mlp(64, 10, hidden=(64,)), classes=10, **options)


def test_built_in_models_map_flat_inputs_to_logits() -> None:
    assert mlp(64, 10)(torch.zeros(3, 64)).shape == (3, 10)
    assert cnn(784, 7)(torch.zeros(2, 784)).shape == (2, 7)
    assert cnn(3072, 5)(torch.zeros(2, 3072)).shape == (2, 5)
    with pytest.raises(ValueError, match="channels"):
        cnn(100 * 3 + 1, 5)


def test_model_factory_by_import_path_and_clear_errors() -> None:
    model = build_model("lifelong.learners.models:mlp", features=8, classes=3, options={"hidden": [5]})
    assert model(torch.zeros(1, 8)).shape == (1, 3)
    with pytest.raises(ConfigError, match=r"learner\.model"):
        build_model("nope", features=8, classes=3)
    with pytest.raises(ConfigError, match="no callable 'missing'"):
        build_model("lifelong.learners.models:missing", features=8, classes=3)
    with pytest.raises(ConfigError, match="could not be built"):
        build_model("mlp", features=8, classes=3, options={"depth": 3})


def test_warm_start_loads_a_backbone_and_freezes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    donor = mlp(64, 4, hidden=(32,))  # a different head: only the body matches
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = build_model(
        "mlp", features=64, classes=10, options={"hidden": [32]}, init_weights=path, freeze=["body."]
    )
    assert torch.equal(model.state_dict()["body.0.weight"], donor.state_dict()["body.0.weight"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    with pytest.raises(ConfigError, match=r"learner\.freeze"):
        build_model("mlp", features=64, classes=10, freeze=["trunk."])
    # Read once while unchanged: every round builds a learner, none re-reads the file.
    reads = []
    original = models.load_file
    monkeypatch.setattr(models, "load_file", lambda p: reads.append(p) or original(p))
    for _ in range(3):
        build_model("mlp", features=64, classes=10, options={"hidden": [32]}, init_weights=path)
    assert len(reads) <= 1
    other = mlp(64, 4, hidden=(32,))
    save_file({k: v.contiguous() + 1 for k, v in other.state_dict().items()}, str(path))  # changed
    model = build_model("mlp", features=64, classes=10, options={"hidden": [32]}, init_weights=path)
    assert torch.equal(model.state_dict()["body.0.weight"], other.state_dict()["body.0.weight"] + 1)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(StateError, match=r"bad\.safetensors"):
        build_model("mlp", features=64, classes=10, init_weights=tmp_path / "bad.safetensors")


def test_a_round_learns_and_predicts_only_classes_seen() -> None:
    learner = make()
    before = accuracy(learner, X_TEST, Y_TEST)
    report = learner.update(labeled((0, 1, 2)))
    assert report.samples == len(labeled((0, 1, 2))) and report.steps > 0 and np.isfinite(report.loss)
    assert set(np.unique(learner.predict(X_TEST))) <= {0, 1, 2}
    seen = np.isin(Y_TEST, (0, 1, 2))
    assert accuracy(learner, X_TEST[seen], Y_TEST[seen]) > max(0.8, before)
    # What it gives the served vote: probabilities that agree with its labels, none on unseen classes.
    probabilities = learner.probabilities(X_TEST)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(1), learner.predict(X_TEST))
    assert probabilities[:, 3:].max() == 0.0


def test_replay_keeps_old_classes_that_naive_fine_tuning_forgets() -> None:
    old, new = labeled((0, 1, 2, 3, 4)), labeled((5, 6, 7, 8, 9))
    memory = FixedReplay(labeled((0, 1, 2, 3, 4), limit=300).take(np.random.default_rng(0).random(300) < 1))
    replayed, naive = make(), make(plugins={}, loss="cross_entropy")
    for learner, source in ((replayed, memory), (naive, None)):
        learner.update(old)
        learner.update(new, source)
    mask = np.isin(Y_TEST, (0, 1, 2, 3, 4))
    assert memory.draws > 0
    assert accuracy(replayed, X_TEST[mask], Y_TEST[mask]) > accuracy(naive, X_TEST[mask], Y_TEST[mask]) + 0.3


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_checkpoint_restores_and_continues_exactly(optimizer: str) -> None:
    first = make(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.001)
    first.update(labeled((0, 1, 2)))
    checkpoint = first.checkpoint()
    assert any(k.startswith("plugin.ewc.importance.") for k in checkpoint.state)
    assert any(k.startswith("optimizer.") for k in checkpoint.state)
    second = make(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.001)
    second.restore(checkpoint)
    assert np.array_equal(first.predict(X_TEST), second.predict(X_TEST))
    replay = FixedReplay(labeled((0, 1, 2), limit=64))
    for learner in (first, second):
        learner.update(labeled((3, 4)), replay)
    for (name, a), b in zip(
        first.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name  # optimizer momentum, EWC anchor and importances all came back


def test_replay_of_classes_not_trained_on_yet_teaches_them() -> None:
    learner = make()
    report = learner.update(labeled((0, 1)), FixedReplay(labeled((5,), limit=64)))
    assert np.isfinite(report.loss) and learner.seen == [0, 1, 5]
    assert learner.update(Labeled(ids=[], x=X_TRAIN[:0], y=Y_TRAIN[:0])).steps == 0


def test_every_named_plugin_builds_and_bad_options_name_the_key() -> None:
    for name in PLUGINS:
        make(plugins={name: {}})
    make(plugins={"ewc": {"mode": "separate"}})
    with pytest.raises(ConfigError, match=r"learner\.plugins\.ewc"):
        make(plugins={"ewc": {"strength": 3}})
    with pytest.raises(ConfigError, match=r"learner\.plugins\.nope"):
        make(plugins={"nope": {}})


def test_lwf_state_carries_across_a_restore() -> None:
    first = make(plugins={"lwf": {}})
    first.update(labeled((0, 1)))
    second = make(plugins={"lwf": {}})
    second.restore(first.checkpoint())
    second.update(labeled((2, 3)))  # a distillation step against the restored teacher
    assert second.rounds == 2 and second.seen == [0, 1, 2, 3]


def test_holdout_is_stable_and_near_its_fraction() -> None:
    ids = [f"sample-{i}" for i in range(20_000)]
    share = np.mean([is_holdout(id, 0.1) for id in ids])
    assert 0.09 < share < 0.11
    assert [is_holdout(id, 0.1) for id in ids[:100]] == [is_holdout(id, 0.1) for id in ids[:100]]
    assert not any(is_holdout(id, 0.0) for id in ids)


def _trained_champion(trainer: Trainer) -> None:
    for classes in ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)):
        trainer.promote(trainer.candidate())
        assert trainer.champion is not None
        trainer.champion.update(labeled(classes))


def test_the_gate_rejects_a_poisoned_update_and_the_champion_is_unchanged() -> None:
    trainer = Trainer(build=lambda: make(epochs=5), gate=Gate(), holdout=0.2)
    _trained_champion(trainer)
    champion = trainer.champion
    assert champion is not None
    weights = {k: v.clone() for k, v in champion.checkpoint().weights.items()}
    everything = Labeled(ids=[f"t{i}" for i in range(len(Y_TEST))], x=X_TEST, y=Y_TEST)
    recent, remembered = (
        everything.take(np.arange(len(Y_TEST)) % 2 == 0),
        everything.take(np.arange(len(Y_TEST)) % 2 == 1),
    )
    poisoned = trainer.round(
        labeled(tuple(range(10)), poison=True), replay=None, recent=recent, remembered=remembered
    )
    assert not poisoned.verdict.promote
    assert poisoned.verdict.scores["candidate_memory"] < poisoned.verdict.scores["champion_memory"] - 0.02
    assert "accuracy" in poisoned.verdict.reason and poisoned.verdict.judged
    assert trainer.champion is champion
    assert all(torch.equal(weights[k], v) for k, v in champion.checkpoint().weights.items())
    clean = trainer.round(labeled(tuple(range(10))), replay=None, recent=recent, remembered=remembered)
    assert clean.verdict.promote, clean.verdict.reason


class Constant:
    """Predicts one label for everything, or the true labels with some rows wrong."""

    def __init__(self, label: int | None = None, *, truth: np.ndarray | None = None, wrong: int = 0) -> None:  # type: ignore[type-arg]
        self.label, self.truth, self.wrong = label, truth, wrong

    def predict(self, x: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        if self.truth is None:
            return np.full(len(x), self.label)
        guess = self.truth.copy()
        guess[: self.wrong] = (guess[: self.wrong] + 1) % 10
        return guess


def test_gate_weighs_classes_equally_and_allows_for_noise() -> None:
    y = np.array([0] * 90 + [1] * 10)
    data = Labeled(ids=[str(i) for i in range(100)], x=np.zeros((100, 2)), y=y)
    # Plain accuracy says 0.9 vs 0.1; per class both get one class right: neither is worse.
    # (Two models that disagree on every sample are too noisy to judge by default: max_margin lifted.)
    verdict = Gate(max_margin=1).judge(Constant(0), Constant(1), recent=data, remembered=data)  # type: ignore[arg-type]
    assert verdict.promote and verdict.scores["candidate_recent"] == verdict.scores["champion_recent"] == 0.5
    y = np.arange(200) % 10
    data = Labeled(ids=[str(i) for i in range(200)], x=np.zeros((200, 2)), y=y)
    perfect, slightly = Constant(truth=y), Constant(truth=y, wrong=8)  # 4% behind
    assert Gate(z=2).judge(slightly, perfect, recent=data, remembered=data).promote  # type: ignore[arg-type]
    strict = Gate(z=0).judge(slightly, perfect, recent=data, remembered=data)  # type: ignore[arg-type]
    assert not strict.promote and "recent accuracy" in strict.reason
    broken = Constant(truth=y, wrong=120)
    assert not Gate(z=2).judge(broken, perfect, recent=data, remembered=data).promote  # type: ignore[arg-type]


def test_gate_needs_enough_held_out_samples() -> None:
    learner = make()
    learner.update(labeled((0, 1)))
    tiny = Labeled(ids=["a", "b"], x=X_TEST[:2], y=Y_TEST[:2])
    verdict = Gate(min_samples=20).judge(learner, learner, recent=tiny, remembered=tiny)
    assert not verdict.promote and not verdict.judged and "too few" in verdict.reason
    assert Gate().judge(learner, None, recent=tiny, remembered=tiny).promote
