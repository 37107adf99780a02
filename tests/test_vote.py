"""The served vote trusts the member that is right lately, on recent labels and on what they do not show."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lifelong.learners.ensemble import Hedge, Probes
from lifelong.learners.heads import Heads
from tests.blobs import CLASSES, FEATURES, blobs


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
    heads = Heads(features=FEATURES, classes=CLASSES, heads=[0, 100], linear=[0.05], restarting_head=True)
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


def test_a_few_held_out_samples_do_not_decide_the_vote_against_the_recent_labels() -> None:
    # Two classes, 600 labels: the probes hold the 60 held out so far. "memorizes" is right on every
    # one of them (a member that learned them by heart) and wrong on 15% of the labels arriving;
    # "generalizes" is wrong on 10% of both. Weighed as much as all the labels scored, the 60 samples
    # would hand the vote to "memorizes"; weighed as the 60 samples they are, the labels decide.
    rng = np.random.default_rng(2)
    hedge = Hedge()
    probes = Probes(classes=2, features=2, window=hedge.window)
    held_rows: set[float] = set()

    def members(x: np.ndarray[Any, Any]) -> dict[str, Any]:
        y = (x[:, 1] > 0).astype(np.int64)
        known = np.isin(x[:, 0].astype(np.float32), list(held_rows))  # the probes keep float32
        position = np.arange(len(y)) % 20
        return {
            "memorizes": np.where(known | ~np.isin(position, [0, 5, 9]), y, 1 - y),
            "generalizes": np.where(position % 10 != 3, y, 1 - y),
        }

    for _ in range(6):
        x = rng.normal(size=(100, 2))
        held_rows.update(x[np.arange(100) % 10 == 7, 0].astype(np.float32).tolist())
        score_with_probes(hedge, probes, members, x, (x[:, 1] > 0).astype(np.int64))
    assert hedge.weights(["memorizes", "generalizes"])["generalizes"] > 0.99
