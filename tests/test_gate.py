"""The gate tells a changed world from forgetting, and judges nothing on too few samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lifelong.labeled import Labeled
from lifelong.learners.gate import Gate, contradicted

Array = np.ndarray[Any, Any]
RNG = np.random.default_rng(0)


class Rule:
    """A model that labels by a fixed rule of the inputs."""

    def __init__(self, rule: Callable[[Array], Array]) -> None:
        self.rule = rule

    def predict(self, x: Array) -> Array:
        return self.rule(np.asarray(x))


def old_concept(x: Array) -> Array:
    return (x[:, 0] > 0).astype(np.int64)


def new_concept(x: Array) -> Array:
    return (x[:, 0] <= 0).astype(np.int64)  # the same inputs, every label flipped (an abrupt change)


def data(n: int, concept: Callable[[Array], Array], *, shift: float = 0.0, prefix: str = "s") -> Labeled:
    x = RNG.normal(size=(n, 4)).astype(np.float32) + shift
    return Labeled(ids=[f"{prefix}{i}" for i in range(n)], x=x, y=concept(x))


def concat(*parts: Labeled) -> Labeled:
    return Labeled(
        ids=[i for p in parts for i in p.ids],
        x=np.concatenate([p.x for p in parts]),
        y=np.concatenate([p.y for p in parts]),
    )


def test_a_candidate_that_follows_a_real_change_is_promoted() -> None:
    recent = concat(data(600, old_concept, prefix="o"), data(200, new_concept, prefix="n"))
    remembered = data(300, old_concept, prefix="m")
    newer = data(1000, new_concept, prefix="t")
    champion, follower = Rule(old_concept), Rule(new_concept)
    gate = Gate()  # a change is adopted once it holds for two rounds
    assert gate.adopting(champion, recent) is None  # not before it held for two rounds
    first = gate.judge(follower, champion, recent=recent, remembered=remembered, newer=newer)
    assert not first.promote and not first.judged and "holds for 2 rounds" in first.reason
    # Judged again on the same held-out samples, nothing new confirms it.
    again = gate.judge(follower, champion, recent=recent, remembered=remembered, newer=newer)
    assert not again.promote and "(seen in 1)" in again.reason
    recent = concat(recent, data(50, new_concept, prefix="later"))  # newer labels, the change holds
    adopted = gate.adopting(champion, recent)
    assert adopted is not None and set(adopted.ids) >= {f"later{i}" for i in range(50)}
    verdict = gate.judge(follower, champion, recent=recent, remembered=remembered, newer=newer)
    assert verdict.promote, verdict.reason
    assert verdict.scores["change"] == 1 and 200 <= verdict.scores["current_samples"] <= 310
    # (Nearly) every remembered sample is contradicted by the newer labels around it.
    assert verdict.scores["memory_contradicted"] >= 270
    # Without this round's samples the current window alone tells the same.
    alone = Gate(change_rounds=1).judge(follower, champion, recent=recent, remembered=remembered, newer=None)
    assert alone.promote and alone.scores["change"] == 1
    # Without the change found (a gate that judges all recent samples), it looks like forgetting.
    whole = Gate(change_delta=1e-300).judge(follower, champion, recent=recent, remembered=remembered)
    assert not whole.promote and "recent accuracy" in whole.reason


def test_a_stable_world_still_rejects_a_candidate_that_got_worse() -> None:
    recent = data(800, old_concept)
    remembered = data(300, old_concept, prefix="m")
    noisy = Rule(lambda x: np.where(x[:, 1] > 0.5, 1 - old_concept(x), old_concept(x)))
    verdict = Gate().judge(noisy, Rule(old_concept), recent=recent, remembered=remembered, newer=recent)
    assert not verdict.promote and verdict.scores["change"] == 0
    assert "recent accuracy" in verdict.reason


def test_forgetting_another_region_is_weighed_against_the_gain_where_the_world_is_now() -> None:
    # The new concept lives elsewhere (a domain shift): old samples are not contradicted there.
    recent = concat(data(600, old_concept, prefix="o"), data(300, new_concept, shift=6.0, prefix="n"))
    remembered = data(300, old_concept, prefix="m")
    newer = data(1000, new_concept, shift=6.0, prefix="t")
    champion = Rule(old_concept)

    def both(x: Array) -> Array:  # learned the new region, forgot a quarter of the old one
        far = x[:, 0] > 3
        return np.where(far, new_concept(x), np.where(x[:, 1] > 0.7, 1 - old_concept(x), old_concept(x)))

    verdict = Gate(change_rounds=1).judge(
        Rule(both), champion, recent=recent, remembered=remembered, newer=newer
    )
    assert verdict.scores["memory_contradicted"] == 0
    assert verdict.promote and "more than it loses" in verdict.reason, verdict.reason

    def partly(x: Array) -> Array:  # half of the new region learned, all of the old one forgotten
        new = np.where(x[:, 1] > 6, new_concept(x), 1 - new_concept(x))
        return np.where(x[:, 0] > 3, new, 1 - old_concept(x))

    # Gains in the new region cannot buy forgetting everything else.
    verdict = Gate(change_rounds=1).judge(
        Rule(partly), champion, recent=recent, remembered=remembered, newer=newer
    )
    assert not verdict.promote and "forgets what still holds" in verdict.reason, verdict.reason


def test_a_set_too_noisy_to_mean_anything_is_not_judged() -> None:
    few = data(30, old_concept)
    # A tenth wrong: a drop of about 0.1 that 30 samples can neither show nor rule out.
    tenth_wrong = Rule(lambda x: np.where(np.arange(len(x)) % 10 == 0, 1 - old_concept(x), old_concept(x)))
    verdict = Gate(max_margin=0.1).judge(tenth_wrong, Rule(old_concept), recent=few, remembered=few)
    assert not verdict.promote and not verdict.judged
    assert "noise" in verdict.reason and "not judged" in verdict.reason
    # The same drop on enough samples is judged, and rejected.
    many = data(2000, old_concept)
    verdict = Gate(max_margin=0.1).judge(tenth_wrong, Rule(old_concept), recent=many, remembered=many)
    assert verdict.judged and not verdict.promote
    # A drop far beyond the noise needs no more samples to be a drop; nor a clear gain to be a gain.
    half_wrong = Rule(lambda x: np.where(np.arange(len(x)) % 2 == 0, 1 - old_concept(x), old_concept(x)))
    verdict = Gate(max_margin=0.1).judge(half_wrong, Rule(old_concept), recent=few, remembered=few)
    assert verdict.judged and not verdict.promote
    verdict = Gate(max_margin=0.1).judge(Rule(old_concept), half_wrong, recent=few, remembered=few)
    assert verdict.judged and verdict.promote


def test_after_a_change_the_memory_alone_does_not_judge_a_candidate() -> None:
    # A new region appears whose labels follow x1; the old champion is right on half of it by
    # chance, the candidate on another half, and it forgot a quarter of the old region. 40 samples
    # of the new region cannot tell the two apart, and the memory must not decide alone.
    def region(x: Array) -> Array:
        return np.where(x[:, 0] > 3, (x[:, 1] > 6).astype(np.int64), old_concept(x))

    recent = concat(data(600, old_concept, prefix="o"), data(40, region, shift=6.0, prefix="n"))
    remembered = data(300, old_concept, prefix="m")
    newer = data(1000, region, shift=6.0, prefix="t")

    def learning(x: Array) -> Array:
        old = np.where(x[:, 1] > 0.7, 1 - old_concept(x), old_concept(x))
        return np.where(x[:, 0] > 3, np.where(x[:, 2] > 6, region(x), 1 - region(x)), old)

    gate = Gate(change_rounds=1)
    verdict = gate.judge(Rule(learning), Rule(old_concept), recent=recent, remembered=remembered, newer=newer)
    assert verdict.scores["change"] == 1 and verdict.scores["candidate_memory"] < 0.9
    assert not verdict.promote and not verdict.judged, verdict.reason
    assert "too few samples show the current concept" in verdict.reason


def test_new_classes_being_learned_are_not_a_change() -> None:
    # Classes 2 and 3 arrive after 0 and 1; the champion has had one round of them and still gets
    # 40% of them wrong. Their errors fall as they are learned: nothing was relabeled.
    x = RNG.normal(size=(800, 4)).astype(np.float32)
    later = np.arange(800) >= 600
    wrong = later & (np.arange(800) % 5 < 2)
    new_classes = np.where(later, 2 + np.arange(800) % 2, np.arange(800) % 2)
    same_classes = np.arange(800) % 2

    class Learning(Rule):
        seen = (0, 1, 2, 3)

    def answers(y: Array) -> Learning:  # right on every sample but the wrong ones
        return Learning(lambda rows: np.where(wrong, (y + 1) % 2 + 2 * (y >= 2), y))

    learning = Labeled(ids=[f"r{i}" for i in range(800)], x=x, y=new_classes)
    assert Gate().since_change(answers(new_classes), learning) is None
    # The same rise of errors on classes the older half already held is a change.
    relabeled = Labeled(ids=learning.ids, x=x, y=same_classes)
    assert Gate().since_change(answers(same_classes), relabeled) is not None


def test_repeated_inputs_are_judged_by_their_newest_labels() -> None:
    # Categorical inputs repeat exactly: one cell's label changed ~30 of its labels ago, after ~100 old ones.
    cells = np.eye(3, dtype=np.float32)
    rng = np.random.default_rng(0)
    before = rng.integers(0, 3, 300)
    after = rng.integers(0, 3, 90)
    old_labels, new_labels = np.array([0, 1, 1]), np.array([1, 1, 1])  # cell 0 flipped, the others held
    newer = Labeled(
        ids=[""] * 390,
        x=cells[np.concatenate([before, after])],
        y=np.concatenate([old_labels[before], new_labels[after]]),
    )
    older = Labeled(ids=["a", "b", "c"], x=cells, y=old_labels)
    assert contradicted(older, [newer]).tolist() == [True, False, False]


def test_a_candidate_is_also_judged_as_served_among_the_online_members() -> None:
    recent, remembered = data(400, old_concept, prefix="r"), data(300, old_concept, prefix="m")
    champion, candidate = Rule(old_concept), Rule(old_concept)

    def members_vote(network: Any, x: Array) -> Array:
        """With the candidate the vote goes wrong on a quarter of the inputs, though alone it is as
        right as the champion (whose vote is its own answer)."""
        labels = network.predict(x)
        return np.where((x[:, 1] > 0) & (x[:, 2] > 0) & (network is candidate), 1 - labels, labels)

    verdict = Gate().judge(candidate, champion, recent=recent, remembered=remembered, served=members_vote)
    assert not verdict.promote and verdict.judged
    assert verdict.reason.startswith("as served (the members' vote with it): recent accuracy")
    assert verdict.scores["candidate_recent"] == verdict.scores["champion_recent"] == 1.0
    assert (
        verdict.scores["served_candidate_recent"] < 0.85 and verdict.scores["served_champion_recent"] == 1.0
    )
    # As served it changes nothing where the vote does not depend on the network: judged alone it must pass.
    worse = Rule(lambda x: np.where(x[:, 1] > 0, 1 - old_concept(x), old_concept(x)))
    verdict = Gate().judge(
        worse, champion, recent=recent, remembered=remembered, served=lambda _, x: old_concept(x)
    )
    assert not verdict.promote and verdict.reason.startswith("recent accuracy")
