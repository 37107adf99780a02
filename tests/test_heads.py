"""Online heads learn each label in closed form and restore exactly; the ensemble trusts the better member."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lifelong.daemon.online import OnlineMembers
from lifelong.events import Sample
from lifelong.learners.ensemble import Hedge, Probes
from lifelong.learners.heads import Heads
from lifelong.learners.members import RestartingLDA, StreamingLDA
from lifelong.memory.samples import IngestBatch, SampleStore
from tests.streams import stored

FEATURES, CLASSES = 8, 5
CENTERS = np.random.default_rng(3).normal(0, 3, (CLASSES, FEATURES))


def blobs(
    n: int, seed: int, classes: list[int] | None = None
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    y = rng.choice(classes if classes is not None else CLASSES, n)
    # Raw units on two columns: the heads scale their inputs as the network does.
    x = (CENTERS[y] + rng.normal(size=(n, FEATURES))) * np.array([1e4, 1e-3, 1, 1, 1, 1, 1, 1])
    return x.astype(np.float32), y


def accuracy(predicted: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    return float((predicted == y).mean())


def test_a_new_class_is_predicted_within_fifty_of_its_labels() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, half_lives=[0])
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
    heads = Heads(features=FEATURES, classes=CLASSES, half_lives=[0, 100])
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
    heads = Heads(features=FEATURES, classes=CLASSES, half_lives=[0], restarting=True)
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


def test_the_daemons_heads_take_a_backlog_in_steps_each_scored_first(tmp_path: Path) -> None:
    x, y = blobs(1400, 13)
    with SampleStore.open(tmp_path / "store") as store:
        fill(store, x[:1000], y[:1000], 0)
        online = online_at(store, tmp_path / "heads")
        online.batch = 4096
        online.observed(store.last_label_event())
        online.catch_up()
        steps: list[int] = []
        online.on_learned = steps.append
        fill(store, x[1000:], y[1000:], 1000)
        online.observed(store.last_label_event())
        assert online.catch_up() == 400
        assert steps == [100, 100, 100, 100]  # the vote sees a member adapt within the backlog


def test_a_decaying_head_keeps_a_class_that_is_only_absent() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, half_lives=[100])
    x, y = blobs(300, 10, classes=[0, 1])
    heads.learn(x, y)
    for seed in range(11, 31):  # 2,000 labels of other classes: twenty half-lives
        later_x, later_y = blobs(100, seed, classes=[2, 3, 4])
        heads.learn(later_x, later_y)
    test_x, test_y = blobs(500, 31)
    assert accuracy(heads.predict(test_x)["lda_100"], test_y) >= 0.9


def test_the_prior_answers_before_any_label_and_linear_members_learn() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, half_lives=[0], linear=[0.05])
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
        "half_lives": [0, 100],
        "linear": [0.05],
        "restarting": True,
        "restarting_bandwidths": [1.0, 0.5],
        "random_features": 64,
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
    other = Heads(features=FEATURES, classes=CLASSES, half_lives=[0, 50], random_features=64)
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

    heads = Heads(features=2, classes=2, half_lives=[], restarting=True, restarting_bandwidths=[1.0, 0.25])
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
        Heads(features=2, classes=2, restarting=True, restarting_bandwidths=[0.5, 0.5])


def checkerboard(n: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    return x, ((np.floor(x[:, 0] * 3) + np.floor(x[:, 1] * 3)) % 2).astype(np.int64)


def test_the_head_that_never_forgets_reads_a_wider_map_of_its_own() -> None:
    settings: dict[str, Any] = {"features": 2, "classes": 2, "half_lives": [0, 100], "random_features": 16}
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


def test_a_wide_heads_covariance_is_solved_again_as_labels_grow_its_means_at_every_fit() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 2, (3, 6))

    def samples(n: int, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        y = rng.choice(classes, n)
        return torch.from_numpy(centers[y] + rng.normal(size=(n, 6))), torch.from_numpy(y)

    lazy, eager = StreamingLDA(width=6, classes=3, refactor=0.1), StreamingLDA(width=6, classes=3)
    first = samples(1000, [0, 1])
    for head in (lazy, eager):
        head.learn(*first)
    lazy.fit()
    factor = lazy._factor
    new_class = samples(60, [2])  # 6% more labels: the covariance waits, the new class's mean does not
    lazy.learn(*new_class)
    coef, bias = lazy.fit()
    assert lazy._factor is factor
    test_x, test_y = samples(300, [0, 1, 2])
    predicted = (test_x.float() @ coef.T + bias).argmax(1)
    assert float((predicted[test_y == 2] == 2).float().mean()) >= 0.9
    eager.learn(*new_class)
    more = samples(60, [0, 1, 2])  # 1,120 labels, 1.12 x 1,000: solved again, as an eager head solves
    for head in (lazy, eager):
        head.learn(*more)
    assert lazy._factor is factor  # not before the next fit
    coef, bias = lazy.fit()
    assert lazy._factor is not factor
    expected = eager.fit()
    torch.testing.assert_close(coef, expected[0])
    torch.testing.assert_close(bias, expected[1])
    # While it has learned fewer labels than it has features, a tenth of its width apart.
    young = StreamingLDA(width=200, classes=2, refactor=0.1)
    young.learn(torch.randn(50, 200, dtype=torch.float64), torch.arange(50) % 2)
    young.fit()
    factor = young._factor
    young.learn(torch.randn(19, 200, dtype=torch.float64), torch.arange(19) % 2)
    young.fit()
    assert young._factor is factor
    young.learn(torch.randn(1, 200, dtype=torch.float64), torch.tensor([0]))
    young.fit()
    assert young._factor is not factor


def test_labels_outside_the_classes_are_refused() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        heads.learn(np.zeros((2, FEATURES), np.float32), np.array([0, 7]))


def test_the_ensemble_trusts_the_member_that_is_right_lately() -> None:
    hedge = Hedge(half_life=50)
    a, b = np.array([0, 1, 2, 0]), np.array([1, 1, 0, 0])
    assert hedge.weights(["a", "b"]) == {"a": 0.5, "b": 0.5}  # nothing scored: even
    for k in range(100):
        hedge.score("a", k % 10 != 0)  # right 90% of the time
        hedge.score("b", k % 2 == 0)  # 50%
    np.testing.assert_array_equal(hedge.combine({"a": a, "b": b}, classes=3), a)
    # A member that has only just joined is not trusted over one with a record.
    hedge.score("new", True)
    assert hedge.weights(["a", "new"])["a"] > 0.9
    # Later b is right and a is wrong: the weights turn within a few half-lives.
    for _ in range(150):
        hedge.score("a", False)
        hedge.score("b", True)
    np.testing.assert_array_equal(hedge.combine({"a": a, "b": b}, classes=3), b)
    restored = hedge.fresh()
    restored.restore(hedge.state())
    assert restored.weights(["a", "b", "new"]) == hedge.weights(["a", "b", "new"])
    with pytest.raises(ValueError, match="format"):
        restored.restore(hedge.state() | {"format": 0})


def test_members_about_as_good_decide_by_how_sure_each_is() -> None:
    hedge = Hedge()  # nothing scored: three members weigh alike
    sure = np.array([[0.9, 0.1], [0.2, 0.8]])
    unsure = np.array([[0.45, 0.55], [0.55, 0.45]])
    # Two unsure members outvote the sure one by labels; by probabilities the sure one decides.
    assert hedge.combine({"a": sure, "b": unsure, "c": unsure}, classes=2).tolist() == [0, 1]
    labels = {"a": sure.argmax(1), "b": unsure.argmax(1), "c": unsure.argmax(1)}
    assert hedge.combine(labels, classes=2).tolist() == [1, 0]
    # A member giving labels only counts as certain of them beside those giving probabilities.
    assert hedge.combine({"a": unsure, "b": np.array([1, 1])}, classes=2).tolist() == [1, 1]


def test_each_members_probabilities_agree_with_its_labels() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, half_lives=[0, 100], linear=[0.05], restarting=True)
    x, y = blobs(400, 14, classes=[0, 1, 2])
    before = heads.probabilities(x[:3])
    np.testing.assert_allclose(before["prior"], np.full((3, CLASSES), 1 / CLASSES))  # nothing known yet
    heads.learn(x, y)
    probabilities, labels = heads.probabilities(x), heads.predict(x)
    assert set(probabilities) == set(labels) == set(heads.names)
    for name, p in probabilities.items():
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(p.argmax(1), labels[name])
    # The discriminants give the classes they never saw no chance; the prior answers the shares.
    assert probabilities["lda"][:, 3:].max() == 0.0
    np.testing.assert_allclose(probabilities["prior"][0, :3].sum(), 1.0, rtol=1e-4)
    assert 0.2 < probabilities["prior"][0, 0] < 0.5


def fill(store: SampleStore, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any], start: int) -> None:
    batch = IngestBatch()
    for i, (row, label) in enumerate(zip(x, y, strict=True)):
        batch.samples.append(stored(Sample(f"s{start + i}", row, int(label)), "s", 0, start + i, 1000))
    batch.positions[("s", 0)] = start + len(x)
    store.apply(batch)


def online_at(store: SampleStore, directory: Path) -> OnlineMembers:
    return OnlineMembers(
        heads=Heads(features=FEATURES, classes=CLASSES, half_lives=[0, 100], random_features=32),
        hedge=Hedge(),
        store=store,
        lock=threading.RLock(),
        held_out=lambda id: id.endswith("7"),
        directory=directory,
        batch=128,
    )


def test_the_daemons_heads_follow_the_store_and_restart_exactly(tmp_path: Path) -> None:
    x, y = blobs(900, 9)
    test_x, _ = blobs(200, 10)
    with SampleStore.open(tmp_path / "store") as store:
        fill(store, x[:500], y[:500], 0)
        online = online_at(store, tmp_path / "heads")
        assert online.catch_up() == 0  # no sample predicted yet: its label waits (test, then train)
        online.observed(store.last_label_event())
        assert online.catch_up() == 500
        assert online.heads.learned == 500  # the gate's held-out samples too: the gate judges the network
        online.save()
        fill(store, x[500:], y[500:], 500)
        online.observed(store.last_label_event())
        online.catch_up()
        expected = online.predict(test_x)
        weights = online.hedge.weights(["lda", "lda_100"])

        restarted = online_at(store, tmp_path / "heads")
        restarted.load()  # the state saved at event 500; the events after it are replayed
        assert restarted.cursor == 500
        restarted.observed(store.last_label_event())
        restarted.catch_up()
        for name, labels in expected.items():
            np.testing.assert_array_equal(restarted.predict(test_x)[name], labels)
        assert restarted.hedge.weights(["lda", "lda_100"]) == pytest.approx(weights)

        # A damaged file is set aside and the heads are rebuilt from the store's label events.
        (tmp_path / "heads" / "heads.safetensors").write_bytes(b"\x00" * 64)
        rebuilt = online_at(store, tmp_path / "heads")
        rebuilt.load()
        assert rebuilt.cursor == 0 and (tmp_path / "heads" / "heads.unusable").exists()
        rebuilt.observed(store.last_label_event())
        rebuilt.catch_up()
        # The same labels in the same order; batches cut elsewhere scale a few rows differently.
        for name, labels in expected.items():
            assert accuracy(rebuilt.predict(test_x)[name], labels) >= 0.98


def test_the_vote_distrusts_a_member_that_forgets_classes_absent_from_the_recent_labels() -> None:
    rng = np.random.default_rng(0)
    hedge, blind = Hedge(), Hedge()  # blind: scored on the recent labels alone
    probes = Probes(classes=CLASSES, features=1)
    for task in ([0, 1], [2, 3], [4]):  # class-incremental: only the newest task's classes arrive
        for _ in range(6):
            y = rng.choice(task, 100)

            def members(labels: np.ndarray[Any, Any], task: list[int] = task) -> dict[str, Any]:
                # "forgets" knows only the classes it learned last; "keeps" knows every class.
                return {"keeps": labels, "forgets": np.where(np.isin(labels, task), labels, task[0])}

            hedge.score_predictions(members(y), y)
            blind.score_predictions(members(y), y)
            probes.observe(np.zeros((100, 1)), y, held=np.arange(100) % 10 == 7)
            if (probe := probes.probes()) is not None:
                _, py, weights = probe
                hedge.score_predictions(members(py), py, weights=weights * len(y))
    assert probes.absent().tolist() == [0, 1, 2, 3]
    assert blind.weights(["keeps", "forgets"]) == {"keeps": 0.5, "forgets": 0.5}  # both right on all recent
    assert hedge.weights(["keeps", "forgets"])["forgets"] < 1e-6


def score_with_probes(hedge: Hedge, probes: Probes, members: Any, x: Any, y: Any) -> None:
    """As the daemon's heads do: score the members on the labels, then on the probes."""
    hedge.score_predictions(members(x), y)
    probes.observe(x, y, held=np.arange(len(y)) % 10 == 7)
    if (probe := probes.probes()) is not None:
        px, py, weights = probe
        hedge.score_predictions(members(px), py, weights=weights * len(y))


def test_the_vote_distrusts_a_member_that_forgets_an_earlier_domain_of_the_classes_present() -> None:
    rng = np.random.default_rng(0)
    hedge, blind = Hedge(), Hedge()
    probes = Probes(classes=2, features=2)

    def concept(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return (x[:, 1] > 0).astype(np.int64)  # the same in every domain

    for domain in (0.0, 10.0):  # the second: both classes again, on inputs far from the first's
        for _ in range(6):
            x = rng.normal(size=(100, 2)) + np.array([domain, 0.0])

            def members(x: np.ndarray[Any, Any], domain: float = domain) -> dict[str, Any]:
                # "forgets" knows only the newest domain (wrong elsewhere); "keeps" knows both.
                here = np.abs(x[:, 0] - domain) < 5
                return {"keeps": concept(x), "forgets": np.where(here, concept(x), 1 - concept(x))}

            score_with_probes(hedge, probes, members, x, concept(x))
            blind.score_predictions(members(x), concept(x))
    assert blind.weights(["keeps", "forgets"]) == {"keeps": 0.5, "forgets": 0.5}  # both right on all recent
    assert hedge.weights(["keeps", "forgets"])["forgets"] < 1e-6


def test_after_a_concept_change_the_vote_follows_the_member_that_adapted_not_the_past_samples() -> None:
    rng = np.random.default_rng(1)
    hedge = Hedge()
    probes = Probes(classes=2, features=2)
    for flip, batches in ((0, 20), (1, 2)):  # the same inputs; after the change every label is the other
        for _ in range(batches):
            x = rng.normal(size=(100, 2))
            old = (x[:, 1] > 0).astype(np.int64)

            def members(x: np.ndarray[Any, Any], flip: int = flip) -> dict[str, Any]:
                old = (x[:, 1] > 0).astype(np.int64)
                return {"adapts": old ^ flip, "stale": old}

            score_with_probes(hedge, probes, members, x, old ^ flip)
    # 200 labels after the change the held-out samples of the old concept (most of them) are
    # contradicted by the newer labels: they no longer count (if they did, "stale" would still lead).
    assert hedge.weights(["adapts", "stale"])["stale"] < 1e-6


def test_the_daemons_heads_keep_held_out_samples_of_absent_classes_across_a_restart(tmp_path: Path) -> None:
    tasks = [blobs(700, 20 + k, classes=classes) for k, classes in enumerate([[0, 1], [2, 3], [4]])]
    with SampleStore.open(tmp_path / "store") as store:
        online = online_at(store, tmp_path / "heads")
        start = 0
        for x, y in tasks:
            fill(store, x, y, start)
            start += len(y)
            online.observed(store.last_label_event())
            online.catch_up()
        assert online.probes.absent().tolist() == [0, 1, 2, 3]
        test_x, test_y = blobs(500, 30)
        assert accuracy(online.serve(online.predict(test_x)), test_y) >= 0.9
        weights = online.weights(["lda", "lda_100", "prior"])
        assert weights["prior"] < 1e-6  # right on the last task, wrong on every absent class
        online.save()
        again = online_at(store, tmp_path / "heads")
        again.load()
        assert again.probes.absent().tolist() == [0, 1, 2, 3]
        assert again.weights(["lda", "lda_100", "prior"]) == pytest.approx(weights)


def test_without_a_discriminant_head_no_random_features_are_computed() -> None:
    heads = Heads(features=FEATURES, classes=CLASSES, half_lives=[], linear=[0.05], random_features=256)
    x, y = blobs(300, 50)
    heads.learn(x, y)
    predictor = heads.predictor()
    assert predictor.projections == {"map": None} and heads.width == FEATURES
    assert accuracy(heads.predict(x)["linear_0.05"], y) >= 0.9
