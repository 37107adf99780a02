"""The sample store: label rule, dedupe, expiry, atomic offsets, format checks, damage and full disks."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong.errors import DiskFull, StateDamaged, StateError
from lifelong.events import Feedback, Sample
from lifelong.memory.opening import FORMAT
from lifelong.memory.samples import IngestBatch, SampleStore
from tests.streams import stored

X = np.zeros(3, dtype=np.float32)


def batch(*events: Sample | Feedback, ts: int = 1_000, positions: dict | None = None) -> IngestBatch:  # type: ignore[type-arg]
    out = IngestBatch(positions=positions or {})
    for offset, event in enumerate(events):
        if isinstance(event, Sample):
            out.samples.append(stored(event, "s", 0, offset, ts))
        else:
            out.feedback.append((event.id, event.y, ts))
    return out


def labels(store: SampleStore) -> dict[str, int]:
    return {id: y for id, _, y in store.labeled()}


@pytest.fixture
def store(tmp_path: Path) -> SampleStore:
    with SampleStore.open(tmp_path, waiting_ttl_s=10, max_waiting=100) as opened:
        yield opened  # type: ignore[misc]


def test_samples_labels_and_status(store: SampleStore) -> None:
    applied = store.apply(batch(Sample("a", X, 1), Sample("b", X), Sample("c", X), positions={("s", 0): 3}))
    assert (applied.stored, applied.duplicates) == (3, 0)
    store.apply(batch(Feedback("b", 2), positions={("f", 0): 1}))
    status = store.status()
    assert (status.samples, status.labeled, status.waiting) == (3, 2, 1)
    assert status.offsets == {"f:0": 1, "s:0": 3}
    assert labels(store) == {"a": 1, "b": 2}


def test_recent_labeled_picks_the_newest_kept_labeled_samples(store: SampleStore) -> None:
    samples = [
        Sample(f"k{i}" if i % 2 else f"d{i}", np.full(3, i, np.float32), None if i == 9 else i % 4)
        for i in range(10)
    ]
    store.apply(batch(*samples))
    found = store.recent_labeled(lambda id: id.startswith("k"), limit=3, scan=100)
    assert [(id, int(x[0]), y) for id, x, y in found] == [("k7", 7, 3), ("k5", 5, 1), ("k3", 3, 3)]
    assert [id for id, _, _ in store.recent_labeled(lambda id: True, limit=10, scan=2)] == ["d8", "k7"]


def test_labels_given_then_inputs_by_id(store: SampleStore) -> None:
    samples = [Sample(f"s{i}", np.full(3, i, np.float32), None if i == 1 else i) for i in range(4)]
    store.apply(batch(*samples))
    store.apply(batch(Feedback("s1", 7)))
    given = store.labels_given(0, 10)
    assert [(id, y) for _, id, y in given] == [("s0", 0), ("s2", 2), ("s3", 3), ("s1", 7)]
    assert [(e.id, e.y) for e in store.label_events(0, 10)] == [(g.id, g.y) for g in given]
    assert [int(x[0]) for x in store.inputs(["s3", "s1", "s0"])] == [3, 1, 0]
    with pytest.raises(StateError, match="'nope'"):
        store.inputs(["s0", "nope"])


def test_feedback_overrides_inline_and_latest_feedback_wins(store: SampleStore) -> None:
    store.apply(batch(Sample("a", X, 1)))
    applied = store.apply(batch(Feedback("a", 2), Feedback("a", 0)))
    assert applied.relabeled == 2
    assert labels(store) == {"a": 0}


def test_held_relabels_wait_out_of_training_until_released_or_dropped(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path, relabels="hold") as store:
        store.apply(batch(Sample("a", X, 1), Sample("b", X, 1), Sample("c", X, 1), Sample("w", X)))
        events = store.last_label_event()
        applied = store.apply(batch(Feedback("a", 2), Feedback("b", 3), Feedback("c", 4), Feedback("w", 5)))
        # The waiting sample takes its first label; the three that change a label are held.
        assert (applied.held, applied.labeled_late, applied.relabeled) == (3, 1, 0)
        assert labels(store) == {"a": 1, "b": 1, "c": 1, "w": 5}
        assert [e.id for e in store.label_events(events, 10)] == ["w"]
        assert [(h.id, h.y, h.was) for h in store.held_labels()] == [("a", 2, 1), ("b", 3, 1), ("c", 4, 1)]
        store.apply(batch(Feedback("c", 1)))  # the label in place, said again: the relabel is withdrawn
        assert [h.id for h in store.held_labels()] == ["a", "b"]

        events = store.last_label_event()
        assert store.release_labels(["a", "nope"]) == 1
        assert labels(store)["a"] == 2
        assert [(e.id, e.y) for e in store.label_events(events, 10)] == [("a", 2)]
        assert store.drop_held(["b"]) == 1
        assert labels(store)["b"] == 1 and store.held_count() == 0
        counters = store.status().counters
        assert (counters["held"], counters["held_released"], counters["held_dropped"]) == (3, 1, 1)
        store.apply(batch(Feedback("b", 7)))
        assert store.forget(["b"]) == ["b"] and store.held_count() == 0


@pytest.mark.parametrize(
    "inline, feedback",
    [(1, [2, 3]), (1, [2, 1]), (1, [1, 3]), (None, [2, 3]), (1, [2]), (None, [2]), (1, [1])],
)
def test_held_labels_do_not_depend_on_how_the_topics_interleave(
    tmp_path: Path, inline: int | None, feedback: list[int]
) -> None:
    outcomes = []
    for cut in range(len(feedback) + 1):  # the sample arrives after `cut` of the feedback labels
        with SampleStore.open(tmp_path / str(cut), relabels="hold") as store:
            for y in feedback[:cut]:
                store.apply(batch(Feedback("a", y)))
            store.apply(batch(Sample("a", X, inline)))
            for y in feedback[cut:]:
                store.apply(batch(Feedback("a", y)))
            outcomes.append((labels(store), [(h.y, h.was) for h in store.held_labels()]))
    assert all(outcome == outcomes[0] for outcome in outcomes), outcomes
    first = inline if inline is not None else feedback[0]
    assert outcomes[0][0] == {"a": first}  # the first label the sample has is the one in place


def test_feedback_before_its_sample_waits_then_applies(store: SampleStore) -> None:
    applied = store.apply(batch(Feedback("a", 2), Feedback("a", 1)))
    assert applied.early_feedback == 2
    assert store.status().early_feedback == 1
    applied = store.apply(batch(Sample("a", X, 0)))
    assert applied.labeled_late == 1
    assert labels(store) == {"a": 1}
    assert store.status().early_feedback == 0


def test_duplicate_ids_are_stored_once(store: SampleStore) -> None:
    store.apply(batch(Sample("a", X, 1), Sample("a", X + 1, 2)))
    applied = store.apply(batch(Sample("a", X, 0)))
    assert applied.duplicates == 1
    assert store.status().samples == 1
    assert labels(store) == {"a": 1}
    assert store.status().counters["duplicates"] == 2


def test_waiting_halves_expire_by_stream_time(store: SampleStore) -> None:
    store.apply(batch(Sample("old", X), Feedback("ghost", 1), ts=1_000))
    store.apply(batch(Sample("new", X), ts=5_000))
    assert store.status().waiting == 2
    applied = store.apply(batch(Sample("later", X, 1), ts=12_000))  # ttl is 10 s
    assert (applied.expired_samples, applied.expired_feedback) == (1, 1)
    status = store.status()
    assert (status.waiting, status.early_feedback) == (1, 0)
    assert status.counters["expired_samples"] == 1


def test_waiting_is_bounded(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path, max_waiting=5) as store:
        for i in range(4):
            store.apply(batch(*(Sample(f"s{i}.{j}", X) for j in range(3)), ts=1_000 + i))
        assert store.status().waiting == 5
        assert store.status().counters["expired_samples"] == 7


def test_failed_batch_leaves_store_and_offsets_unchanged(store: SampleStore) -> None:
    store.apply(batch(Sample("a", X), positions={("s", 0): 1}))
    broken = batch(Sample("b", X, 1), positions={("s", 0): 2})
    broken.dead_letters = Counter({"not_json": 1})
    broken.samples.append(("c", b"", "<f4", 1, None, None, "s", 0, 5))  # type: ignore[arg-type]
    with pytest.raises(sqlite3.ProgrammingError):
        store.apply(broken)
    status = store.status()
    assert (status.samples, status.dead_letters, status.offsets) == (1, 0, {"s:0": 1})
    store.apply(batch(Feedback("a", 2)))
    assert labels(store) == {"a": 2}


def test_store_survives_reopen(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path) as store:
        store.apply(batch(Sample("a", X), Feedback("z", 1), positions={("s", 0): 7}))
    with SampleStore.open(tmp_path) as store:
        assert store.positions() == {("s", 0): 7}
        store.apply(batch(Sample("z", X)))
        assert labels(store) == {"z": 1}


def test_future_format_is_refused_and_kept(tmp_path: Path) -> None:
    SampleStore.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "samples.sqlite")
    db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (str(FORMAT + 1),))
    db.commit()
    db.close()
    with pytest.raises(StateError, match="upgrade lifelong"):
        SampleStore.open(tmp_path)
    db = sqlite3.connect(tmp_path / "samples.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0] == str(FORMAT + 1)


def test_corrupt_database_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "samples.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateDamaged, match=r"not a database.*move it"):
        SampleStore.open(tmp_path)
    assert path.read_bytes() == b"this is not sqlite" * 100


def test_readonly_open_of_missing_state(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no state"):
        SampleStore.open(tmp_path / "none", readonly=True)


def numbered(first: int, count: int) -> IngestBatch:
    """``count`` labeled samples ``n<first>``... with 64 floats each, and the offset after them."""
    out = IngestBatch(positions={("s", 0): first + count})
    for n in range(first, first + count):
        out.samples.append(stored(Sample(f"n{n}", np.full(64, n, np.float32), n % 3), "s", 0, n, 1_000 + n))
    return out


def filled(directory: Path, samples: int = 3_000) -> Path:
    """A closed store of ``samples`` labeled samples in ``directory``; returns its file."""
    with SampleStore.open(directory) as store:
        for first in range(0, samples, 500):
            store.apply(numbered(first, 500))
    return directory / "samples.sqlite"


def flip(path: Path, at: int, count: int = 200) -> None:
    """Invert ``count`` bytes of ``path`` from offset ``at``: a torn write or a bad sector."""
    data = bytearray(path.read_bytes())
    data[at : at + count] = bytes(b ^ 0xFF for b in data[at : at + count])
    path.write_bytes(bytes(data))


def damage_middle(path: Path) -> None:
    """Flip 200 bytes from the start of the database's middle page (its header and cells)."""
    with closing(sqlite3.connect(path)) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
    flip(path, path.stat().st_size // 2 // page * page)


def test_store_damaged_in_the_middle_is_refused_at_open_naming_the_file(tmp_path: Path) -> None:
    path = filled(tmp_path)
    damage_middle(path)
    for readonly in (False, True):
        with pytest.raises(StateDamaged, match="move it") as refused:
            SampleStore.open(tmp_path, readonly=readonly)
        assert str(path) in str(refused.value) and "lifelong check --state" in str(refused.value)
        assert "\n" not in str(refused.value)  # one line in the log


def test_damage_met_by_a_later_read_raises_state_damaged(tmp_path: Path) -> None:
    path = filled(tmp_path)
    with closing(sqlite3.connect(path)) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        try:
            leaves = [
                n
                for (n,) in db.execute(
                    "SELECT pageno FROM dbstat WHERE name = 'samples' AND pagetype = 'leaf'"
                )
            ]
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to find the samples' pages with")
    flip(path, (leaves[len(leaves) // 2] - 1) * page)
    # No time for the check at open: the damage is met by the first full scan instead.
    with SampleStore.open(tmp_path, check_s=0.0) as store:
        with pytest.raises(StateDamaged, match="malformed") as met:
            list(store.labeled())
        assert str(path) in str(met.value)
        assert isinstance(met.value.__cause__, sqlite3.DatabaseError)
        assert store.check(full=True)


def test_the_check_at_open_is_bounded_in_time(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    filled(tmp_path)
    with caplog.at_level(logging.WARNING), SampleStore.open(tmp_path) as store:
        assert store.check(full=True) == []
    assert not caplog.records
    with caplog.at_level(logging.WARNING), SampleStore.open(tmp_path, check_s=0.0) as store:
        assert store.status().samples == 3_000
    [warning] = caplog.records
    assert "cut short" in warning.getMessage() and "lifelong check --state" in warning.getMessage()


def chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and every exception it was raised from or while handling."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def test_a_full_disk_raises_disk_full_keeps_what_was_committed_and_resumes(tmp_path: Path) -> None:
    with SampleStore.open(tmp_path) as store:
        store.apply(numbered(0, 500))
        # SQLite answers a page limit exactly as it answers a full disk (SQLITE_FULL).
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(DiskFull, match="free some space") as full:
            store.apply(numbered(500, 500))
        assert str(tmp_path) in str(full.value)
        assert isinstance(full.value.__cause__, sqlite3.OperationalError)
        assert not any("rollback" in str(error) for error in chain(full.value))
        status = store.status()
        assert (status.samples, status.waiting, status.offsets) == (500, 0, {"s:0": 500})
        store._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
        assert store.apply(numbered(500, 500)).stored == 500
    with SampleStore.open(tmp_path) as store:
        assert store.status().samples == 1_000
        assert store.positions() == {("s", 0): 1_000}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and may be refused in containers: then the test is skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a tmpfs: {error}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        # Lazy: detached even if a test failed with the store still open on it.
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True, timeout=30, check=False)


def test_a_really_full_disk_stops_with_disk_full_and_the_store_reopens(small_disk: Path) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1 << 20))
    committed = 0
    with SampleStore.open(small_disk) as store, pytest.raises(DiskFull) as full:
        for first in range(0, 100_000, 500):
            store.apply(numbered(first, 500))
            committed = first + 500
    assert not any("rollback" in str(error) for error in chain(full.value))
    assert committed > 0
    filler.unlink()  # space freed
    with SampleStore.open(small_disk) as store:
        assert store.status().samples == committed
        assert store.positions() == {("s", 0): committed}
        store.apply(numbered(committed, 500))
        assert store.check(full=True) == []


events = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.none() | st.integers(0, 4), st.booleans()),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(events, st.randoms(use_true_random=False))
def test_labels_do_not_depend_on_topic_interleaving(tmp_path_factory, stream, random) -> None:  # type: ignore[no-untyped-def]
    """Samples and feedback arrive on two topics; only each topic's own order may matter."""
    samples = [Sample(id, X, y) for id, y, is_sample in stream if is_sample]
    feedback = [Feedback(id, y if y is not None else 0) for id, y, is_sample in stream if not is_sample]

    def run(order: list[Sample | Feedback]) -> tuple[dict[str, int], int]:
        with SampleStore.open(tmp_path_factory.mktemp("s")) as store:
            for event in order:
                store.apply(batch(event))
            return labels(store), store.status().samples

    merged: list[Sample | Feedback] = []
    queues = [list(samples), list(feedback)]
    while any(queues):
        queue = random.choice([q for q in queues if q])
        merged.append(queue.pop(0))
    assert run(merged) == run([*samples, *feedback])
