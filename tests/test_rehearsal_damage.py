"""The rehearsal memory's damaged payloads: rebuilt from the stored inputs, dropped and counted, refused."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.errors import UnsupportedFormat
from lifelong.files import digest
from lifelong.memory.rehearsal import RehearsalMemory
from tests.memories import FEATURES, batches, corrupt_manifest

Array = np.ndarray[Any, Any]
DAMAGED = ("s3", "s17", "s41")


def flip_row(path: Path, row: int, byte: int = 0, mask: int = 0xFF) -> None:
    """Flip bits (``mask``) of one byte of payload ``row`` in the log at ``path``, behind its memory."""
    with open(path, "r+b") as file:
        file.seek(row * FEATURES * 4 + byte)
        value = file.read(1)[0]
        file.seek(row * FEATURES * 4 + byte)
        file.write(bytes([value ^ mask]))


def flip(memory: RehearsalMemory, id: str, byte: int = 0) -> None:
    memory.flush()
    flip_row(memory._log.path, int(memory._slots.row[memory._slots.slot_of[id]]), byte)


def stored_inputs(
    added: dict[str, Array], gone: frozenset[str] = frozenset()
) -> Callable[[list[str]], list[Array | None]]:
    """An ``inputs`` over the samples ``added``, as the sample store gives them (None for ``gone`` ones)."""
    return lambda ids: [None if id in gone else added[id] for id in ids]


def populated(directory: Path) -> tuple[RehearsalMemory, dict[str, Array]]:
    memory = RehearsalMemory(directory, features=FEATURES, capacity=100)
    ids, x, y = next(batches(np.random.default_rng(20), 1, 60))
    memory.add(ids, x, y)
    return memory, dict(zip(ids, x.astype(np.float32), strict=True))  # as stored


def damaged_when(memory: RehearsalMemory, when: str, **options: Any) -> RehearsalMemory:
    """Flip a byte of the rows of ``DAMAGED``: live, at rest (between snapshot and restore), or after."""
    if when == "live":
        for id in DAMAGED:
            flip(memory, id, byte=5)
        return memory
    memory.snapshot()
    rows = [int(memory._slots.row[memory._slots.slot_of[id]]) for id in DAMAGED]
    path = memory._log.path
    memory.close()
    if when == "at_rest":
        for row in rows:
            flip_row(path, row, byte=5)
    restored = RehearsalMemory(memory.directory, features=FEATURES, capacity=memory.capacity, **options)
    if when == "after_restore":
        for id in DAMAGED:
            flip(restored, id, byte=5)
    return restored


def held(memory: RehearsalMemory) -> dict[str, list[float]]:
    everything = memory.sample(memory.capacity)
    assert len(set(everything.ids)) == len(everything.ids) == memory.size
    return {id: x.tolist() for id, x in zip(everything.ids, everything.x, strict=True)}


@pytest.mark.parametrize("when", ["live", "at_rest", "after_restore"])
def test_damaged_payloads_are_rebuilt_from_the_stored_inputs(
    tmp_path: Path, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    memory, added = populated(tmp_path)
    memory.inputs = stored_inputs(added)
    memory = damaged_when(memory, when, inputs=memory.inputs)
    expected = {id: x.tolist() for id, x in added.items()}
    assert held(memory) == expected
    assert memory.counters["payload_rebuilt"] == 3 and memory.counters["payload_dropped"] == 0
    assert f"payload log {memory._log.path}: 3 rows damaged" in caplog.text
    assert "3 rebuilt from the stored inputs, 0 dropped" in caplog.text
    # Rebuilt rows are written anew with their checksums: not rebuilt twice, and they persist.
    assert memory.neighbors(added["s17"][None], 1).x.tolist() == [expected["s17"]]
    assert memory.select(lambda id: id == "s41").x.tolist() == [expected["s41"]]
    assert held(memory) == expected and memory.counters["payload_rebuilt"] == 3
    memory.snapshot()
    assert held(RehearsalMemory(tmp_path, features=FEATURES, capacity=100)) == expected


@pytest.mark.parametrize("when", ["live", "at_rest", "after_restore"])
def test_damaged_payloads_without_inputs_are_dropped_and_counted(
    tmp_path: Path, when: str, caplog: pytest.LogCaptureFixture
) -> None:
    memory, added = populated(tmp_path)
    memory = damaged_when(memory, when)
    found = memory.neighbors(added["s3"][None], 5)  # searched again once s3 is dropped: still 5
    assert "s3" not in found.ids and len(found.ids) == 5
    assert memory.counters["payload_dropped"] == 1
    drawn = memory.sample(50)  # drawn again once a damaged row is met: still 50, none damaged
    assert memory.counters["payload_dropped"] > 1 and len(drawn.ids) == 50
    assert all(x.tolist() == added[id].tolist() for id, x in zip(drawn.ids, drawn.x, strict=True))
    assert held(memory) == {id: x.tolist() for id, x in added.items() if id not in DAMAGED}
    assert memory.size == 57 and "s17" not in memory
    assert memory.counters["payload_dropped"] == 3 and memory.counters["payload_rebuilt"] == 0
    assert "0 rebuilt from the stored inputs" in caplog.text


def test_samples_gone_from_the_store_are_dropped(tmp_path: Path) -> None:
    memory, added = populated(tmp_path)
    memory.inputs = stored_inputs(added, gone=frozenset({"s17"}))
    memory = damaged_when(memory, "live")
    assert held(memory) == {id: x.tolist() for id, x in added.items() if id != "s17"}
    assert memory.counters["payload_rebuilt"] == 2 and memory.counters["payload_dropped"] == 1


def test_compaction_does_not_copy_a_damaged_row(tmp_path: Path) -> None:
    memory = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    added: dict[str, Array] = {}
    for ids, x, y in batches(np.random.default_rng(13), 6, 100):
        memory.add(ids, x, y)  # 600 rows written for 100 slots: the snapshot compacts the log
        added.update(zip(ids, x.astype(np.float32), strict=True))
    expected = {id: added[id].tolist() for id in held(memory)}
    victims = sorted(expected)[:2]
    for id in victims:
        flip(memory, id, byte=2)
    memory.inputs = stored_inputs(added)
    memory.snapshot()
    assert [p.name for p in tmp_path.glob("payload-*.bin")] == ["payload-1.bin"]
    assert memory.counters["payload_rebuilt"] == 2
    restored = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)  # no inputs: nothing to rebuild
    assert held(restored) == expected and restored.counters["payload_dropped"] == 0
    flip(restored, victims[0], byte=30)  # the compacted log's rows carry their checksums too
    del expected[victims[0]]
    assert held(restored) == expected and restored.counters["payload_dropped"] == 1


def as_format_1(root: Path) -> None:
    """Rewrite the current snapshot as a format 1 memory wrote it: no payload checksums."""

    def change(manifest: dict[str, Any], current: Path) -> None:
        with np.load(current / "slots.npz") as arrays:
            kept = {name: arrays[name] for name in arrays.files if name != "crc"}
        np.savez(current / "slots.npz", **kept)
        manifest["files"]["slots.npz"] = digest(current / "slots.npz")
        manifest["format"] = 1
        manifest.pop("payload_checksum", None)

    corrupt_manifest(root, change)


def test_a_format_1_snapshot_gains_checksums_on_load(tmp_path: Path) -> None:
    memory, added = populated(tmp_path)
    memory.snapshot()
    memory.close()
    as_format_1(tmp_path)
    restored = RehearsalMemory(tmp_path, features=FEATURES, capacity=100)
    expected = {id: x.tolist() for id, x in added.items()}
    assert held(restored) == expected
    flip(restored, "s9")
    del expected["s9"]
    assert held(restored) == expected
    manifest = json.loads((restored.snapshot() / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["payload_checksum"] == "crc32c"


def test_a_snapshot_checksummed_another_way_is_refused(tmp_path: Path) -> None:
    populated(tmp_path)[0].snapshot()
    corrupt_manifest(tmp_path, lambda m, _: m.update(payload_checksum="xxh3"))
    with pytest.raises(UnsupportedFormat, match=r"'xxh3'.*upgrade lifelong"):
        RehearsalMemory(tmp_path, features=FEATURES, capacity=100)


@settings(max_examples=40, deadline=None)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, FEATURES * 4 - 1), st.integers(1, 255)), max_size=6
    ),
    gone=st.sets(st.integers(0, 119), max_size=40),
    rebuild=st.booleans(),
    restart=st.booleans(),
)
def test_every_row_drawn_is_the_one_added(
    flips: list[tuple[int, int, int]], gone: set[int], rebuild: bool, restart: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory = RehearsalMemory(Path(tmp), features=FEATURES, capacity=50)
        added: dict[str, Array] = {}
        for ids, x, y in batches(np.random.default_rng(21), 4, 30):  # evictions leave rows no one holds
            memory.add(ids, x, y)
            added.update(zip(ids, x.astype(np.float32), strict=True))
        if restart:
            memory.snapshot()
            memory.close()
            memory = RehearsalMemory(Path(tmp), features=FEATURES, capacity=50)
        memory.flush()
        rows = {(row % memory._log.rows, byte, mask) for row, byte, mask in flips}
        for row, byte, mask in rows:
            flip_row(memory._log.path, row, byte, mask)
        before = {id: int(memory._slots.row[slot]) for id, slot in memory._slots.slot_of.items()}
        damaged = {id for id, row in before.items() if row in {row for row, _, _ in rows}}
        lost = damaged & {f"s{i}" for i in gone} if rebuild else damaged
        if rebuild:
            memory.inputs = stored_inputs(added, gone=frozenset(f"s{i}" for i in gone))
        for drawn in (
            memory.sample(20),
            memory.sample(10, balanced=True),
            memory.neighbors(np.zeros((3, FEATURES)), 5),
            memory.select(lambda id: True),
        ):
            for id, x in zip(drawn.ids, drawn.x, strict=True):
                assert x.tolist() == added[id].tolist()
        assert set(held(memory)) == set(before) - lost
        assert memory.counters["payload_dropped"] == len(lost)
        assert memory.counters["payload_rebuilt"] == len(damaged) - len(lost)
        memory.close()
