"""Online heads learn each label in closed form, restart and restore exactly."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from lifelong.learners.heads import Heads, wide_features
from lifelong.learners.members import SHRINK, RestartingLDA, StreamingLDA, shrinkage
from tests.blobs import CLASSES, FEATURES, accuracy, blobs


def test_a_new_class_is_predicted_within_fifty_of_its_labels() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, heads=[0])
    x, y = blobs(600, 0, classes=[0, 1, 2])
    heads.learn(x, y)
    assert heads.predict(x[:1])["lda"].shape == (1,)
    new_x, new_y = blobs(200, 1, classes=[3])
    heads.learn(new_x[:50], new_y[:50])
    test_x, test_y = blobs(400, 2, classes=[0, 1, 2, 3])
    predicted = heads.predict(test_x)["lda"]
    assert accuracy(predicted[test_y == 3], test_y[test_y == 3]) >= 0.9
    assert accuracy(predicted, test_y) >= 0.9  # and the old classes are not forgotten
    assert not heads.fresh().ready  # nothing is served before the first labels


def test_a_decaying_head_follows_a_concept_change_the_unforgetting_one_does_not() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, heads=[0, 100])
    x, y = blobs(3000, 4)
    heads.learn(x, y)
    later_x, later_y = blobs(600, 5)
    for start in range(0, 600, 50):
        # Every region now means the next class.
        heads.learn(later_x[start : start + 50], (later_y[start : start + 50] + 1) % CLASSES)
    test_x, test_y = blobs(500, 6)
    predicted = heads.predict(test_x)
    assert accuracy(predicted["lda_100"], (test_y + 1) % CLASSES) >= 0.9
    assert accuracy(predicted["lda"], (test_y + 1) % CLASSES) < 0.5


def test_the_restarting_head_drops_an_old_concept_once_its_errors_rise() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, heads=[0], restarting_head=True)
    x, y = blobs(3000, 40)
    for start in range(0, 3000, 100):
        heads.learn(x[start : start + 100], y[start : start + 100])
    later_x, later_y = blobs(300, 41, classes=[0, 1, 2, 3])
    for start in range(0, 300, 50):
        # Regions 0 and 1 swap their classes; 2 and 3 stay; class 4 is absent from now on.
        labels = later_y[start : start + 50]
        heads.learn(later_x[start : start + 50], np.where(labels < 2, 1 - labels, labels))
    restarting = heads.members["lda_restart"]
    assert isinstance(restarting, RestartingLDA) and restarting.restarts >= 1
    test_x, test_y = blobs(500, 42)
    expected = np.where(test_y < 2, 1 - test_y, test_y)
    predicted = heads.predict(test_x)
    assert accuracy(predicted["lda_restart"], expected) >= 0.9
    assert accuracy(predicted["lda_restart"][test_y == 4], expected[test_y == 4]) >= 0.9  # kept
    assert accuracy(predicted["lda"], expected) < 0.8  # 3,000 labels of the old concept outweigh 300


def spread(n: int, seed: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes apart along ``axis`` (by 4), spread widely (sd 6) along the other feature."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)) * np.where(np.arange(2) == axis, 1.0, 6.0)
    x[:, axis] += 4.0 * y
    return torch.from_numpy(x), torch.from_numpy(y)


@pytest.mark.parametrize("carried", [100.0, math.inf])
def test_the_restarting_heads_covariance_restarts_with_the_concept(carried: float) -> None:
    # The classes' spread turns with the concept: the old scatter would misplace the new boundary.
    head = RestartingLDA(width=2, classes=2, carried=carried)
    for seed in range(20):
        head.learn(*spread(100, seed, axis=0))
    for seed in range(20, 26):
        head.learn(*spread(50, seed, axis=1))
    x, y = spread(1000, 99, axis=1)
    coef, bias = head.fit()
    right = accuracy((x.float() @ coef.T + bias).argmax(1).numpy(), y.numpy())
    assert head.restarts >= 1
    if carried == math.inf:  # the control: keeping all the old scatter
        assert right < 0.8
    else:
        assert right >= 0.9


def test_the_restarting_head_does_not_restart_when_its_errors_fall() -> None:
    head = RestartingLDA(width=2, classes=2)
    for seed in range(20):
        head.learn(*spread(100, seed, axis=0))
    for seed in range(20, 60):  # the errors rise at the change, then fall once it has restarted
        x, y = spread(100, seed, axis=0)
        head.learn(x, 1 - y)
    assert head.restarts == 1


def test_the_restarting_head_restarts_from_where_its_errors_rose() -> None:
    # ADWIN, checked every few labels, cuts some labels after the change; the restart starts at it.
    head = RestartingLDA(width=2, classes=2)
    for seed in range(20):
        head.learn(*spread(100, seed, axis=0))
    before = head.learned
    for seed in range(20, 24):
        x, y = spread(32, seed, axis=0)
        head.learn(x, 1 - y)
    assert head.restarts == 1
    assert head.cut == pytest.approx(before, abs=3)


def test_a_decaying_head_keeps_a_class_that_is_only_absent() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, heads=[100])
    x, y = blobs(300, 10, classes=[0, 1])
    heads.learn(x, y)
    for seed in range(11, 31):  # 2,000 labels of other classes: twenty half-lives
        later_x, later_y = blobs(100, seed, classes=[2, 3, 4])
        heads.learn(later_x, later_y)
    test_x, test_y = blobs(500, 31)
    assert accuracy(heads.predict(test_x)["lda_100"], test_y) >= 0.9


def test_the_prior_answers_before_any_label_and_linear_members_learn() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, heads=[0], linear=[0.05])
    x, y = blobs(400, 12)
    assert heads.predict(x[:3]) == {"prior": pytest.approx(np.zeros(3))}  # class 0: nothing known yet
    heads.learn(x[:10], np.full(10, 4))
    assert heads.predict(x[:3])["prior"].tolist() == [4, 4, 4]  # still warming up: the prior answers
    heads.learn(x, y)
    assert set(heads.predict(x[:1])) == {"lda", "linear_0.05", "prior"}
    test_x, test_y = blobs(500, 13)
    assert accuracy(heads.predict(test_x)["linear_0.05"], test_y) >= 0.9


def test_a_checkpoint_continues_exactly_and_refuses_other_settings() -> None:
    settings: dict[str, Any] = {
        "features": FEATURES,
        "classes": CLASSES,
        "heads": [0, 100],
        "linear": [0.05],
        "restarting_head": True,
        "restarting_bandwidths": [1.0, 0.5],
        "head_features": 64,
        "lda_features": 96,
    }
    first = Heads(**settings)
    x, y = blobs(700, 7)
    first.learn(x[:20], y[:20])  # still warming up: the buffered samples are saved too
    tensors, meta = first.checkpoint()
    second = first.fresh()
    second.restore(tensors, meta)
    for start in range(20, 700, 97):
        first.learn(x[start : start + 97], y[start : start + 97])
        second.learn(x[start : start + 97], y[start : start + 97])
    test_x, _ = blobs(300, 8)
    for name, labels in first.predict(test_x).items():
        np.testing.assert_array_equal(labels, second.predict(test_x)[name])
    final, _ = first.checkpoint()
    for key, tensor in second.checkpoint()[0].items():
        assert torch.equal(tensor, final[key]), key
    other = Heads(features=FEATURES, classes=CLASSES, heads=[0, 50], head_features=64)
    with pytest.raises(ValueError, match="half_lives"):
        other.restore(*first.checkpoint())
    narrower = Heads(**settings | {"restarting_bandwidths": [1.0, 0.25]})
    with pytest.raises(ValueError, match="restarting_bandwidths"):
        narrower.restore(*first.checkpoint())
    with pytest.raises(ValueError, match="lda_features"):
        Heads(**settings | {"lda_features": 128}).restore(*first.checkpoint())
    with pytest.raises(ValueError, match="format"):
        second.restore(tensors, meta | {"format": 99})


def test_a_restarting_head_on_a_narrower_map_draws_a_finer_boundary() -> None:
    rng = np.random.default_rng(3)

    def wave(n: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        x = rng.uniform(0, 1, (n, 2)).astype(np.float32)
        return x, (x[:, 1] < 0.5 + 0.3 * np.sin(6 * np.pi * x[:, 0])).astype(np.int64)

    heads = Heads(features=2, classes=2, heads=[], restarting_head=True, restarting_bandwidths=[1.0, 0.25])
    heads.learn(*wave(3000))
    predictor = heads.predictor()
    assert set(predictor.projections) == {"map", "map_0.25"}
    wide, narrow = (predictor.projections[key] for key in ("map", "map_0.25"))
    assert wide is not None and narrow is not None
    # Its own draw, four times as tight: not the shared map rescaled.
    assert float(narrow[0].std() / wide[0].std()) == pytest.approx(4.0, rel=0.2)
    assert not torch.allclose(narrow[0] / 4, wide[0])
    test_x, test_y = wave(2000)
    predicted = heads.predict(test_x)
    assert (
        accuracy(predicted["lda_restart_0.25"], test_y) >= accuracy(predicted["lda_restart"], test_y) + 0.05
    )
    with pytest.raises(ValueError, match="restarting_bandwidths"):
        Heads(features=2, classes=2, restarting_head=True, restarting_bandwidths=[0.5, 0.5])


def checkerboard(n: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    return x, ((np.floor(x[:, 0] * 3) + np.floor(x[:, 1] * 3)) % 2).astype(np.int64)


def test_the_head_that_never_forgets_reads_a_wider_map_of_its_own() -> None:
    settings: dict[str, Any] = {"features": 2, "classes": 2, "heads": [0, 100], "head_features": 16}
    shared, wide = Heads(**settings), Heads(**settings, lda_features=512)
    x, y = checkerboard(4000, 1)
    shared.learn(x, y)
    wide.learn(x, y)
    projections = wide.predictor().projections
    assert set(projections) == {"map", "map_lda"}
    assert projections["map_lda"] is not None and projections["map_lda"][0].shape == (2, 512)
    test_x, test_y = checkerboard(2000, 2)
    on_shared, on_wide = shared.predict(test_x), wide.predict(test_x)
    # A closer kernel draws the nine squares: better by far than on the shared 16 features.
    assert accuracy(on_wide["lda"], test_y) >= accuracy(on_shared["lda"], test_y) + 0.1
    # The decaying head reads the shared map either way (drawn first: the same numbers).
    np.testing.assert_array_equal(on_wide["lda_100"], on_shared["lda_100"])


def test_the_automatic_wide_map_grows_with_the_inputs_and_is_skipped_where_the_shared_one_suffices() -> None:
    auto = partial(wide_features, "auto", head_features=256)
    assert [auto(features=n) for n in (784, 64, 40, 32, 2)] == [4096, 512, 512, 0, 0]
    assert wide_features(1000, features=2, head_features=256) == 1000  # a count is taken as given


def test_a_wide_heads_covariance_is_solved_again_as_labels_grow_its_means_at_every_fit() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (3, 6))

    def samples(n: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.choice(classes, n)
        return torch.from_numpy(centers[y] + rng.normal(size=(n, 6))), torch.from_numpy(y)

    lazy, eager = StreamingLDA(width=6, classes=3, refactor=0.1), StreamingLDA(width=6, classes=3)
    first = samples(1000, [0, 1, 2])
    for head in (lazy, eager):
        head.learn(*first)
    before, _ = lazy.fit()
    factor = lazy._inverse
    more = samples(60, [0, 1, 2])  # 6% more labels: the covariance waits, the means do not
    for head in (lazy, eager):
        head.learn(*more)
    coef, bias = lazy.fit()
    assert lazy._inverse is factor and not torch.equal(coef, before)
    more = samples(60, [0, 1, 2])  # 1,120 labels, 1.12 x 1,000: solved again, as an eager head solves
    for head in (lazy, eager):
        head.learn(*more)
    assert lazy._inverse is factor  # not before the next fit
    coef, bias = lazy.fit()
    assert lazy._inverse is not factor
    expected = eager.fit()
    torch.testing.assert_close(coef, expected[0])
    torch.testing.assert_close(bias, expected[1])
    # While it has learned fewer labels than it has features, a tenth of its width apart.
    young = StreamingLDA(width=200, classes=2, refactor=0.1)
    young.learn(torch.randn(50, 200, dtype=torch.float64), torch.arange(50) % 2)
    young.fit()
    factor = young._inverse
    young.learn(torch.randn(19, 200, dtype=torch.float64), torch.arange(19) % 2)
    young.fit()
    assert young._inverse is factor
    young.learn(torch.randn(1, 200, dtype=torch.float64), torch.tensor([0]))
    young.fit()
    assert young._inverse is not factor


def test_a_new_class_is_solved_against_a_covariance_that_has_seen_it() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (3, 6))
    centers[:, 5] = [0.0, 0.0, 0.5]

    def samples(n: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.choice(classes, n)
        x = centers[y] + rng.normal(size=(n, 6))
        x[y != 2, 5] = 0.0  # the old classes never vary along the last input, the new one does
        return torch.from_numpy(x), torch.from_numpy(y)

    lazy, eager = StreamingLDA(width=6, classes=3, refactor=0.1), StreamingLDA(width=6, classes=3)
    first = samples(1000, [0, 1])
    for head in (lazy, eager):
        head.learn(*first)
    lazy.fit()
    factor = lazy._inverse
    new_class = samples(60, [2])  # 6% more labels, but a class the kept inverse never saw spread
    for head in (lazy, eager):
        head.learn(*new_class)
    coef, bias = lazy.fit()
    assert lazy._inverse is not factor
    torch.testing.assert_close((coef, bias), eager.fit())
    # Against the old inverse, no spread along the last input: the new class's samples below its
    # mean there were called one of the old classes (recall 0.76 here), now 0.97.
    test_x, test_y = samples(600, [0, 1, 2])
    predicted = (test_x.float() @ coef.T + bias).argmax(1)
    assert float((predicted[test_y == 2] == 2).float().mean()) >= 0.9
    factor = lazy._inverse
    lazy.learn(*samples(40, [2]))  # 60 -> 100 labels of it: not doubled, the inverse is kept
    lazy.fit()
    assert lazy._inverse is factor


def test_the_covariance_is_shrunk_as_far_as_its_samples_call_for() -> None:
    from sklearn.covariance import OAS

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(30, 30))
    found = {}
    for n in (20, 200, 20_000):
        x = rng.normal(size=(n, 30)) @ mixing
        found[n] = shrinkage(torch.from_numpy(np.cov(x.T, bias=True)), n)
        assert found[n] == pytest.approx(max(SHRINK, OAS().fit(x).shrinkage_))
    assert found[20] > 0.3 and found[20] > found[200] > found[20_000] == SHRINK


def test_labels_outside_the_classes_are_refused() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        heads.learn(np.zeros((2, FEATURES), np.float32), np.array([0, 7]))


def test_without_a_discriminant_head_no_random_features_are_computed() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, heads=[], linear=[0.05], head_features=256)
    x, y = blobs(300, 50)
    heads.learn(x, y)
    predictor = heads.predictor()
    assert predictor.projections == {"map": None} and heads.width == FEATURES
    assert accuracy(heads.predict(x)["linear_0.05"], y) >= 0.9
