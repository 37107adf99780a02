"""The model registry: promote, rollback, statuses, corrupt state refused, retention, no stale cache.

Also the other pointer-swapped state on a full disk: snapshot directories and atomic writes.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

import lifelong.files
import lifelong.memory.snapshot
import lifelong.registry.base
import lifelong.registry.store
from lifelong.errors import DiskFull, NothingToRollBack, StateError, StateInUse, VersionNotFoundError
from lifelong.files import write_atomically
from lifelong.memory.snapshot import SnapshotDir
from lifelong.registry import LoadedVersion, ModelRegistry, ModelVersion, Status
from lifelong.registry.store import HEAD


def make_weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(4, 3, generator=generator),
        "layer.bias": torch.randn(4, generator=generator, dtype=torch.float64),
        "embed.half": torch.randn(2, 5, generator=generator).half(),
        "steps": torch.tensor(seed, dtype=torch.int64),
        "mask": torch.rand(3, generator=generator) > 0.5,
    }


def make_state(seed: int) -> dict[str, torch.Tensor]:
    return {"optimizer.momentum": torch.full((4, 3), float(seed)), "ewc.importance": torch.arange(3.0) * seed}


def assert_same(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        assert found[name].dtype == tensor.dtype, name
        assert torch.equal(found[name], tensor), name


class Fixture:
    """A registry under a temp dir, plus the weights each version was added with."""

    def __init__(self, root: Path, keep_versions: int = 20) -> None:
        ticks = itertools.count(1_700_000_000)
        self.clock: Callable[[], float] = lambda: float(next(ticks))
        self.root = root
        self.registry = ModelRegistry(root=root, keep_versions=keep_versions, clock=self.clock)
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def add(self, promote: bool, **extra: object) -> ModelVersion:
        seed = len(self.weights) + 1
        champion = self.registry.champion()
        added = self.registry.add(
            weights=make_weights(seed),
            state=make_state(seed),
            promote=promote,
            scores={"accuracy": seed / 10},
            parent=None if champion is None else champion.version,
            **extra,  # type: ignore[arg-type]
        )
        self.weights[added.version] = make_weights(seed)
        return added

    def statuses(self) -> dict[int, Status]:
        return {v.version: v.status for v in self.registry.versions()}


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path / "models")


def test_add_with_promote_makes_champion(fx: Fixture) -> None:
    added = fx.add(True, lineage={"offsets": {"samples:0": [0, 99]}}, config={"lr": 0.01}, reason="first")
    assert added.version == 1 and added.status is Status.CHAMPION
    champion = fx.registry.champion()
    assert champion is not None and champion.version == 1
    assert champion.lineage == {"offsets": {"samples:0": [0, 99]}} and champion.config == {"lr": 0.01}
    head = json.loads((fx.root / HEAD).read_text())
    assert head == {"format": 1, "champion": 1, "promotions": [1], "rolled_back": {}, "next": 2}
    assert sorted(p.name for p in champion.path.iterdir()) == [
        "meta.json",
        "model.safetensors",
        "state.safetensors",
    ]
    loaded = fx.registry.load()
    assert isinstance(loaded, LoadedVersion) and loaded.info.version == 1
    assert_same(loaded.weights, make_weights(1))
    assert_same(loaded.state, make_state(1))


def test_meta_json_records_decision_scores_and_checksums(fx: Fixture) -> None:
    fx.add(True)
    added = fx.add(False, reason="accuracy fell", learner={"steps": 7})
    meta = json.loads((added.path / "meta.json").read_text())
    assert meta["format"] == 1 and meta["version"] == 2 and meta["parent"] == 1
    assert meta["decision"] == "rejected" and meta["reason"] == "accuracy fell"
    assert meta["scores"] == {"accuracy": 0.2} and meta["learner"] == {"steps": 7}
    assert isinstance(meta["created_at"], float)
    for name in ("model.safetensors", "state.safetensors"):
        assert meta["files"][name]["digest"].startswith("crc32:")
        assert meta["files"][name]["size"] == (added.path / name).stat().st_size


def test_rejected_version_does_not_change_the_champion(fx: Fixture) -> None:
    fx.add(True)
    rejected = fx.add(False)
    assert rejected.status is Status.REJECTED and rejected.decision == "rejected"
    champion = fx.registry.champion()
    assert champion is not None and champion.version == 1


def test_a_rollback_during_training_wins_over_the_candidates_promotion(fx: Fixture) -> None:
    fx.add(True)
    fx.add(True)
    fx.registry.rollback()  # while a candidate trained from version 2
    late = fx.add(True, expect_champion=2, reason="gate passed")
    assert late.status is Status.REJECTED and "champion changed from 2 to 1" in (late.reason or "")
    assert fx.registry.champion().version == 1  # type: ignore[union-attr]
    assert fx.add(True, expect_champion=1).status is Status.CHAMPION


def test_statuses_of_a_mix(fx: Fixture) -> None:
    for promote in (True, False, True, True):
        fx.add(promote)
    fx.registry.rollback(reason="drift", trigger="auto")
    assert fx.statuses() == {
        1: Status.PROMOTED,
        2: Status.REJECTED,
        3: Status.CHAMPION,
        4: Status.ROLLED_BACK,
    }


def test_rollback_restores_previous_champion_bit_identical(fx: Fixture) -> None:
    fx.add(True)
    fx.add(False)
    fx.add(True)
    restored = fx.registry.rollback(reason="accuracy dropped", trigger="auto")
    assert restored.version == 1 and restored.status is Status.CHAMPION
    loaded = fx.registry.load()
    assert loaded.info.version == 1
    assert_same(loaded.weights, fx.weights[1])
    assert_same(loaded.state, make_state(1))
    old = fx.registry.get(3)
    assert old.status is Status.ROLLED_BACK
    assert old.rolled_back is not None
    assert (old.rolled_back["reason"], old.rolled_back["trigger"]) == ("accuracy dropped", "auto")
    assert fx.registry.is_rolled_back(3) and not fx.registry.is_rolled_back(1)


def test_rollback_walks_back_past_rolled_back_versions(fx: Fixture) -> None:
    for _ in range(3):
        fx.add(True)
    assert fx.registry.rollback().version == 2
    assert fx.registry.rollback().version == 1
    with pytest.raises(NothingToRollBack, match="nothing to roll back to"):
        fx.registry.rollback()
    assert json.loads((fx.root / HEAD).read_text())["promotions"] == [1, 2, 3, 2, 1]
    assert fx.statuses() == {1: Status.CHAMPION, 2: Status.ROLLED_BACK, 3: Status.ROLLED_BACK}


def test_rollback_to_a_named_version(fx: Fixture) -> None:
    for _ in range(3):
        fx.add(True)
    assert fx.registry.rollback(1, reason="user asked").version == 1
    assert fx.statuses() == {1: Status.CHAMPION, 2: Status.PROMOTED, 3: Status.ROLLED_BACK}
    # A rolled-back version named explicitly comes back, and is no longer marked rolled back.
    assert fx.registry.rollback(3).version == 3
    assert fx.statuses() == {1: Status.ROLLED_BACK, 2: Status.PROMOTED, 3: Status.CHAMPION}
    assert not fx.registry.is_rolled_back(3)
    assert_same(fx.registry.load().weights, fx.weights[3])


def test_rollback_refuses_rejected_unknown_and_current_versions(fx: Fixture) -> None:
    fx.add(True)
    fx.add(False)
    fx.add(True)
    with pytest.raises(NothingToRollBack, match="version 2 was rejected"):
        fx.registry.rollback(2)
    with pytest.raises(VersionNotFoundError, match="No model version 99"):
        fx.registry.rollback(99)
    with pytest.raises(NothingToRollBack, match="already the champion"):
        fx.registry.rollback(3)
    assert fx.statuses() == {1: Status.PROMOTED, 2: Status.REJECTED, 3: Status.CHAMPION}


@pytest.mark.parametrize("promotes", [(), (True,), (False, True)], ids=["empty", "one", "rejected-before"])
def test_rollback_with_nothing_earlier_raises(fx: Fixture, promotes: tuple[bool, ...]) -> None:
    for promote in promotes:
        fx.add(promote)
    head = (fx.root / HEAD).read_bytes() if promotes else None
    with pytest.raises(NothingToRollBack, match="nothing to roll back to"):
        fx.registry.rollback()
    assert ((fx.root / HEAD).read_bytes() if promotes else None) == head


def flip_weights(path: Path) -> None:
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))


def truncate_state(path: Path) -> None:
    (path / "state.safetensors").write_bytes((path / "state.safetensors").read_bytes()[:-4])


def future_format(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format": 2}))


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped-weights": (flip_weights, "fails its checksum"),
    "truncated-state": (truncate_state, "bytes where meta.json records"),
    "missing-weights": (lambda p: (p / "model.safetensors").unlink(), "is missing"),
    "missing-meta": (lambda p: (p / "meta.json").unlink(), "has no meta.json"),
    "garbage-meta": (lambda p: (p / "meta.json").write_bytes(b"\x00{not json"), "not valid JSON"),
    "meta-not-a-map": (lambda p: (p / "meta.json").write_text("[1, 2]"), "format None"),
    "meta-missing-keys": (lambda p: (p / "meta.json").write_text('{"format": 1}'), "malformed"),
    "future-format": (future_format, "format 2.*upgrade lifelong"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_corrupt_target_is_refused_and_champion_keeps_serving(fx: Fixture, damage: str) -> None:
    fx.add(True)
    fx.add(True)
    target = fx.root / "v000001"
    damage_it, problem = DAMAGE[damage]
    damage_it(target)
    head = (fx.root / HEAD).read_bytes()
    with pytest.raises(StateError, match=problem) as refused:
        fx.registry.rollback()
    assert str(target) in str(refused.value)
    assert (fx.root / HEAD).read_bytes() == head
    champion = fx.registry.champion()
    assert champion is not None and champion.version == 2 and not fx.registry.is_rolled_back(2)
    assert_same(fx.registry.load().weights, fx.weights[2])
    with pytest.raises(StateError, match=problem):
        fx.registry.load(1)


def test_damage_message_says_what_to_do(fx: Fixture) -> None:
    fx.add(True)
    flip_weights(fx.root / "v000001")
    with pytest.raises(StateError, match=r"lifelong rollback <version>.*or delete .*v000001"):
        fx.registry.load()


def test_a_version_whose_directory_is_gone_is_refused(fx: Fixture) -> None:
    fx.add(True)
    fx.add(True)
    (fx.root / "v000001").rename(fx.root / "elsewhere")
    with pytest.raises(NothingToRollBack, match="is gone"):
        fx.registry.rollback()
    with pytest.raises(VersionNotFoundError, match="No model version 1"):
        fx.registry.get(1)
    assert fx.statuses() == {2: Status.CHAMPION}


def test_a_damaged_version_is_left_out_of_the_list(fx: Fixture) -> None:
    for promote in (True, False, True):
        fx.add(promote)
    (fx.root / "v000002" / "meta.json").write_text("{")
    assert [v.version for v in fx.registry.versions()] == [1, 3]


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        ({"format": 2, "champion": 1, "promotions": [1], "rolled_back": {}, "next": 2}, "format 2.*upgrade"),
        ({"champion": 1}, "format None.*move .* aside"),
        ({"format": 1, "champion": "one", "promotions": [], "rolled_back": {}, "next": 2}, "malformed"),
        ("{torn", "unreadable"),
    ],
    ids=["future-format", "no-format", "malformed", "not-json"],
)
def test_unusable_head_is_refused(fx: Fixture, head: object, problem: str) -> None:
    fx.add(True)
    (fx.root / HEAD).write_text(head if isinstance(head, str) else json.dumps(head))
    for call in (fx.registry.champion, fx.registry.versions, fx.registry.rollback, lambda: fx.add(True)):
        with pytest.raises(StateError, match=problem) as refused:
            call()
        assert str(fx.root / HEAD) in str(refused.value)


def test_moving_head_aside_then_naming_a_version_recovers(fx: Fixture) -> None:
    fx.add(True)
    fx.add(False)
    (fx.root / HEAD).rename(fx.root / "HEAD.json.broken")
    assert fx.registry.champion() is None
    assert fx.registry.rollback(1).status is Status.CHAMPION
    assert fx.add(True).version == 3  # numbering continues past the directories on disk


def test_retention_keeps_last_n_and_every_promoted_version(tmp_path: Path) -> None:
    fx = Fixture(tmp_path, keep_versions=2)
    fx.add(True)  # 1
    fx.add(False)  # 2
    fx.add(True)  # 3
    fx.add(False)  # 4
    fx.add(False)  # 5
    fx.registry.rollback()  # 1 champion, 3 rolled back
    fx.add(False)  # 6
    fx.add(False)  # 7
    assert fx.statuses() == {
        1: Status.CHAMPION,
        3: Status.ROLLED_BACK,
        6: Status.REJECTED,
        7: Status.REJECTED,
    }
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("v")) == [
        "v000001",
        "v000003",
        "v000006",
        "v000007",
    ]
    assert not [p for p in tmp_path.iterdir() if ".del-" in p.name]
    assert fx.registry.prune() == []


def test_prune_applies_a_smaller_keep_last(fx: Fixture) -> None:
    for promote in (True, False, False, False, True, False):
        fx.add(promote)
    smaller = ModelRegistry(root=fx.root, keep_versions=1)
    assert smaller.prune() == [2, 3, 4]
    assert [v.version for v in smaller.versions()] == [1, 5, 6]


def test_leftover_temp_dirs_are_ignored_then_cleaned_on_open(fx: Fixture) -> None:
    fx.add(True)
    for leftover in (".v000002.tmp-123", ".v000001.del-456"):
        (fx.root / leftover).mkdir()
        (fx.root / leftover / "model.safetensors").write_bytes(b"half written")
    assert [v.version for v in fx.registry.versions()] == [1]
    ModelRegistry(root=fx.root)
    assert sorted(p.name for p in fx.root.iterdir() if p.name.startswith(".v")) == []
    assert fx.add(True).version == 2


def test_a_second_registry_on_the_same_root_sees_every_change(fx: Fixture) -> None:
    other = ModelRegistry(root=fx.root)
    fx.add(True)
    fx.add(True)
    champion = other.champion()
    assert champion is not None and champion.version == 2
    other.rollback(reason="from the CLI")
    champion = fx.registry.champion()
    assert champion is not None and champion.version == 1
    assert fx.registry.is_rolled_back(2)
    assert_same(fx.registry.load().weights, fx.weights[1])
    assert fx.add(False).version == 3


def test_writers_wait_for_the_lock_and_readers_do_not(tmp_path: Path) -> None:
    fx = Fixture(tmp_path)
    fx.add(True)
    fx.add(True)
    fx.registry.lock_timeout_s = 0
    with open(tmp_path / ".lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(StateInUse, match="locked by another process"):
            fx.registry.rollback()
        with pytest.raises(StateInUse, match="locked by another process"):
            fx.add(True)
        assert [v.version for v in fx.registry.versions()] == [1, 2]
    assert fx.registry.rollback().version == 1


def test_to_json_is_strict_json(fx: Fixture) -> None:
    fx.add(True, lineage={"snapshot": "snapshot-01"}, learner={"seen": 12})
    added = fx.registry.add(
        weights=make_weights(9), state={}, promote=False, scores={"loss": float("nan")}, parent=1
    )
    for version in (*fx.registry.versions(), added):
        found = json.loads(json.dumps(version.to_json(), allow_nan=False))
        for key in ("version", "status", "created_at", "scores", "parent", "decision", "reason", "lineage"):
            assert key in found
    assert added.to_json()["scores"] == {"loss": None} and added.to_json()["status"] == "rejected"
    assert fx.registry.load(2).state == {}


def test_views_and_shared_storage_are_saved_as_plain_copies(fx: Fixture) -> None:
    base = torch.arange(12.0, requires_grad=True).reshape(3, 4)
    weights = {"a": base, "tied": base, "transposed": base.T, "row": base[1]}
    fx.registry.add(weights=weights, state={}, promote=True, scores={}, parent=None)
    assert_same(fx.registry.load().weights, {k: v.detach() for k, v in weights.items()})


@pytest.mark.parametrize(
    "bad",
    [
        {"weights": {"w": [1.0, 2.0]}},
        {"state": {3: torch.zeros(1)}},
        {"scores": {"accuracy": "high"}},
        {"lineage": {"offsets": object()}},
        {"parent": "1"},
    ],
    ids=["list-weight", "int-key", "text-score", "object-lineage", "text-parent"],
)
def test_bad_input_is_refused_before_anything_is_written(fx: Fixture, bad: dict[str, object]) -> None:
    args: dict[str, object] = {"weights": make_weights(1), "state": {}, "promote": True, "scores": {}}
    with pytest.raises(TypeError):
        fx.registry.add(**{"parent": None, **args, **bad})  # type: ignore[arg-type]
    assert sorted(p.name for p in fx.root.iterdir()) == [".lock"]


def test_constructor_validates_keep_last(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_versions"):
        ModelRegistry(root=tmp_path, keep_versions=0)


@settings(max_examples=25, deadline=None)
@given(operations=st.lists(st.sampled_from(["promote", "reject", "rollback"]), max_size=12))
def test_random_histories_keep_a_loadable_promoted_champion(operations: list[str]) -> None:
    # A directory per example: hypothesis runs many inside one call, so tmp_path would be shared.
    with tempfile.TemporaryDirectory() as root:
        check_history(Fixture(Path(root), keep_versions=2), operations)


def check_history(fx: Fixture, operations: list[str]) -> None:
    champion: int | None = None
    promoted: list[int] = []  # the expected HEAD promotions
    rolled_back: set[int] = set()
    created = 0
    for operation in operations:
        if operation == "rollback":
            earlier = [v for v in reversed(promoted) if v != champion and v not in rolled_back]
            if not earlier:
                with pytest.raises(NothingToRollBack, match="nothing to roll back to"):
                    fx.registry.rollback()
                continue
            assert fx.registry.rollback().version == earlier[0]
            assert champion is not None
            rolled_back.add(champion)
            champion = earlier[0]
            promoted.append(champion)
        else:
            created = fx.add(operation == "promote").version
            if operation == "promote":
                champion = created
                promoted.append(created)
        found = fx.registry.champion()
        assert (None if found is None else found.version) == champion
        if found is not None:
            assert found.decision == "promoted"
            assert_same(fx.registry.load().weights, fx.weights[found.version])
        assert {v.version for v in fx.registry.versions()} == {
            *promoted,
            *range(max(1, created - 1), created + 1),
        }
        assert {v for v in range(1, created + 1) if fx.registry.is_rolled_back(v)} == rolled_back


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_the_weights_leaves_the_registry_as_it_was(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx.add(True)
    before = tree(fx.root)

    def save_partly(tensors: object, filename: str) -> None:
        Path(filename).write_bytes(b"\0" * 100)
        # What safetensors raises when the disk fills up under it.
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(lifelong.registry.base, "save_file", save_partly)
    with pytest.raises(DiskFull, match="free some space") as full:
        fx.add(True)
    assert str(fx.root) in str(full.value)
    assert isinstance(full.value.__cause__, OSError) and full.value.__cause__.errno == errno.ENOSPC
    assert tree(fx.root) == before  # no partial version directory, HEAD.json untouched
    monkeypatch.undo()  # space freed
    assert fx.add(True).version == 2
    assert fx.registry.champion().version == 2  # type: ignore[union-attr]


def test_a_full_disk_while_writing_head_removes_the_new_version(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fx.add(True)
    before = tree(fx.root)
    monkeypatch.setattr(lifelong.registry.store, "write_atomically", no_space)
    with pytest.raises(DiskFull, match=str(fx.root)):
        fx.add(True)
    assert tree(fx.root) == before
    assert [v.version for v in fx.registry.versions()] == [1]


def test_write_atomically_removes_its_temp_file_when_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "HEAD.json"
    path.write_bytes(b"before")
    monkeypatch.setattr(lifelong.files.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        write_atomically(path, b"after")
    assert tree(tmp_path) == {"HEAD.json": b"before"}


@pytest.mark.parametrize("failing", ["draft", "manifest", "pointer"])
def test_a_snapshot_that_meets_a_full_disk_is_removed_and_the_previous_stays_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    snapshots = SnapshotDir(tmp_path / "memory", kind="test", format=1)
    with snapshots.begin() as draft:
        (draft.path / "keys").write_bytes(b"first")
        previous = draft.commit({"size": 1})
    before = tree(snapshots.root)
    real = lifelong.memory.snapshot.write_atomically

    def write(path: Path, data: bytes) -> None:
        if {"pointer": "CURRENT", "manifest": "manifest.json"}.get(failing) == path.name:
            no_space()
        real(path, data)

    monkeypatch.setattr(lifelong.memory.snapshot, "write_atomically", write)
    with pytest.raises(DiskFull, match=str(snapshots.root)), snapshots.begin() as draft:
        (draft.path / "keys").write_bytes(b"second")
        if failing == "draft":
            no_space()  # the component's own files fill the disk
        draft.commit({"size": 2})
    assert tree(snapshots.root) == before
    assert snapshots.current() == previous
    assert snapshots.load() == (snapshots.manifest(), previous)
