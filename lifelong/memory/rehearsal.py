"""The rehearsal memory: a bounded, diverse set of past labeled samples for replay.

Each sample lives in a slot. Its payload (x) is on disk in an append-only log,
its key (the vector FAISS searches) in RAM: the raw features when there are at
most ``KEY_DIM`` of them, otherwise a fixed Gaussian random projection to
``KEY_DIM`` dimensions. A random projection preserves distances up to a small
distortion (Johnson-Lindenstrauss), needs no training, and never changes, so
keys stay comparable for the memory's whole life; a learned embedding would
drift with the model and invalidate the index at every update.

When full, the ``policy`` decides what a new sample replaces (:mod:`lifelong.memory.policies`).

Each payload row's checksum is kept in its slot and snapshotted with it, and every read
(draws, compaction) checks it: a damaged row is rebuilt from ``inputs`` (the sample
store's copy) when it can be, else its sample is dropped; it is never returned.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifelong.errors import SettingsChanged
from lifelong.labeled import Labeled
from lifelong.memory import layout
from lifelong.memory.index import (
    Device,
    ExactMirror,
    Projection,
    VectorIndex,
    batch_knn,
    exact_knn,
    ivf_lists,
    resolve_device,
    training_size,
)
from lifelong.memory.payloads import PayloadLog, row_checksums
from lifelong.memory.policies import FREE, POLICIES, Policy, admit
from lifelong.memory.slots import Slots
from lifelong.memory.snapshot import SnapshotDir

log = logging.getLogger(__name__)

# 2: payload checksums in the slot table. A format 1 snapshot is migrated on load (see restore).
FORMAT = 2
KEY_DIM = 64


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`RehearsalMemory.add` did with a batch."""

    stored: int
    evicted: int
    skipped: int
    near_duplicates: int


class RehearsalMemory:
    """A fixed-capacity memory of labeled samples with FAISS search, on disk in ``directory``.

    Example::

        memory = RehearsalMemory(Path("state/memory"), features=784, capacity=10_000,
                                 policy="class_balanced")
        memory.add(ids, x, y)
        batch = memory.sample(256)
        memory.snapshot(offsets={"lifelong.samples:0": 1200})

    ``inputs`` returns the stored x of each of the ids it is given (None where the sample is
    gone): damaged payload rows are rebuilt from it. Without it they are dropped.
    """

    def __init__(
        self,
        directory: Path,
        *,
        features: int,
        capacity: int,
        policy: Policy = "reservoir",
        dtype: Any = np.float32,
        duplicate_radius: float = 0.05,
        seed: int = 0,
        device: Device = "auto",
        nprobe: int = 8,
        recency: float = 0.0,
        inputs: Callable[[list[str]], Sequence[np.ndarray[Any, Any] | None]] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if capacity < 1 or features < 1:
            raise ValueError(f"capacity and features must be >= 1, got {capacity!r}, {features!r}")
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe!r}")
        if not 0 <= recency <= 1:
            raise ValueError(f"recency must lie in [0, 1], got {recency!r}")
        self.directory = Path(directory)
        self.features = features
        self.capacity = capacity
        self.policy = policy
        self.dtype = np.dtype(dtype)
        self.duplicate_radius = duplicate_radius
        self.seed = seed
        # IVF lists a search visits: more finds more of the true neighbours, in proportion slower.
        self.nprobe = nprobe
        self.recency = recency  # the least admission chance of a new sample (see memory.policies)
        self.inputs = inputs
        # "gpu": searches run on an exact copy of the keys on the GPU (see lifelong.memory.index).
        self.device = resolve_device(device)
        self.dim = min(features, KEY_DIM)
        gaussian = np.random.default_rng(seed).standard_normal
        self._projection = (
            None if features <= KEY_DIM else Projection(gaussian((features, KEY_DIM)) / np.sqrt(KEY_DIM))
        )
        self._snapshots = SnapshotDir(self.directory / "snapshots", kind="rehearsal-memory", format=FORMAT)
        self._reset()
        self.restore()

    # -- state -----------------------------------------------------------------------------------

    def _reset(self, generation: int = 0) -> None:
        cap = self.capacity
        self._slots = Slots(capacity=cap, dim=self.dim, regions=ivf_lists(cap))
        self._seen = 0
        self._seen_by_class: Counter[int] = Counter()
        self._rng = np.random.default_rng(self.seed)
        mirror = ExactMirror(dim=self.dim, held=self._slots.held) if self.device == "gpu" else None
        self._index = VectorIndex(dim=self.dim, capacity=cap, nprobe=self.nprobe, mirror=mirror)
        self._scale_cache = 0.0
        self._scale_size = 0
        self._forgotten_since_snapshot = False
        self.offsets: dict[str, int] = {}
        self.counters: Counter[str] = Counter()
        self._generation = generation
        self._log: PayloadLog = PayloadLog(
            self.directory / f"payload-{generation}.bin", features=self.features, dtype=self.dtype
        )

    @property
    def size(self) -> int:
        """Samples held."""
        return len(self._slots)

    def __contains__(self, id: str) -> bool:
        return id in self._slots.slot_of

    def classes(self) -> dict[int, int]:
        """Samples held per label."""
        return {int(label): len(bag) for label, bag in sorted(self._slots.classes.items()) if len(bag)}

    def keys_of(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The search keys of inputs ``x`` (n x features)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.features)
        return x if self._projection is None else self._projection.apply(x)

    # -- adding ----------------------------------------------------------------------------------

    def add(
        self,
        ids: list[str],
        x: np.ndarray[Any, Any] | Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]],
        y: np.ndarray[Any, Any],
        ts: np.ndarray[Any, Any] | None = None,
    ) -> Added:
        """Offer labeled samples; the policy decides which are kept and what they replace.

        ``x`` is the inputs (n x features), or a callable that returns the rows at the batch
        positions it is given: then only the samples the policy keeps are loaded (once a
        stream is long, reservoir and class-balanced keep few of the samples they are offered).
        """
        y = np.asarray(y, dtype=np.int64)
        ts = np.zeros(len(ids), dtype=np.int64) if ts is None else np.asarray(ts, dtype=np.int64)
        first: dict[str, int] = {}  # new ids, each at its first position in the batch
        for i, id in enumerate(ids):
            if id not in self._slots.slot_of:
                first.setdefault(id, i)
        origin = None  # positions in the caller's batch, when some rows drop out
        if len(first) < len(ids):
            origin = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            y, ts, ids = y[origin], ts[origin], list(first)
        rows = self._rows(x, origin, len(ids))
        diverse = self.policy == "diversity"
        evicted = skipped = near = 0
        if diverse or len(ids) <= len(self._slots.free):
            # Every row may be stored, and near-duplicates and regions come from every key.
            every = rows(None)
            keys = self.keys_of(every) if ids else np.zeros((0, self.dim), np.float32)
            duplicates = self._near_duplicates(keys) if diverse else np.zeros(len(ids), bool)
            regions = self._index.regions(keys) if diverse and self._index.trained else None
            near = int(duplicates.sum())
            if len(ids) - near <= len(self._slots.free):
                self._fill(ids, every, y, ts, duplicates, keys, regions)
                self._seen += len(ids)
                self._seen_by_class.update(y.tolist())
            else:  # counts what it has seen one by one: the policy draws against those counts
                admitted, sources, skipped = self._admit(y, duplicates)
                picks = np.asarray(admitted, dtype=np.int64)
                picked_regions = None if regions is None else regions[picks]
                evicted = self._place(ids, every[picks], y, ts, picks, sources, keys[picks], picked_regions)
        else:  # only the rows the policy admits are loaded
            admitted, sources, skipped = self._admit(y, np.zeros(len(ids), bool))
            picks = np.asarray(admitted, dtype=np.int64)
            chosen = rows(picks)
            evicted = self._place(ids, chosen, y, ts, picks, sources, self.keys_of(chosen), None)
        stored = len(ids) - near - skipped
        self.counters.update(stored=stored, evicted=evicted, near_duplicates=near, skipped=skipped)
        if not self._index.trained and self.size >= training_size(self.capacity):
            self._train()
        return Added(stored=stored, evicted=evicted, skipped=skipped, near_duplicates=near)

    def _rows(
        self,
        x: np.ndarray[Any, Any] | Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]],
        origin: np.ndarray[Any, Any] | None,
        count: int,
    ) -> Callable[[np.ndarray[Any, Any] | None], np.ndarray[Any, Any]]:
        """Rows of the (deduplicated) batch at given positions (None: all of them), loaded on demand."""
        features = self.features
        if callable(x):
            load = x

            def lazy(picks: np.ndarray[Any, Any] | None) -> np.ndarray[Any, Any]:
                picks = np.arange(count) if picks is None else picks
                if not len(picks):
                    return np.zeros((0, features), self.dtype)
                return np.asarray(load(picks if origin is None else origin[picks])).reshape(-1, features)

            return lazy
        given = np.asarray(x).reshape(-1, features)
        batch = given if origin is None else given[origin]
        return lambda picks: batch if picks is None else batch[picks]

    def _place(
        self,
        ids: list[str],
        x: np.ndarray[Any, Any],
        y: np.ndarray[Any, Any],
        ts: np.ndarray[Any, Any],
        picks: np.ndarray[Any, Any],
        sources: list[int],
        keys: np.ndarray[Any, Any],
        regions: np.ndarray[Any, Any] | None,
    ) -> int:
        """Store the rows at ``picks`` where :meth:`_admit` said (x, keys, regions: those rows only).

        Returns how many stored samples it evicted.
        """
        table = self._slots
        placed: dict[int, int] = {}  # slot -> row in x of its final occupant
        replaced: set[int] = set()  # slots whose occupant from before this batch leaves
        evicted = 0
        for row, (n, source) in enumerate(zip(picks.tolist(), sources, strict=True)):
            slot = table.free.pop() if source == FREE else table.victim(source, self._rng)
            if table.ids[slot] is not None:
                if slot not in placed:
                    replaced.add(slot)
                table.vacate(slot)
                evicted += 1
            region = 0 if regions is None else int(regions[row])
            table.occupy(slot, ids[n], int(y[n]), int(ts[n]), keys[row], region)
            placed[slot] = row
        if replaced:
            self._index.remove(np.fromiter(replaced, dtype=np.int64))
        if placed:
            slots = np.fromiter(placed.keys(), dtype=np.int64)
            self._write(slots, x[list(placed.values())], table.keys[slots])
        return evicted

    def _admit(
        self, y: np.ndarray[Any, Any], duplicates: np.ndarray[Any, Any]
    ) -> tuple[list[int], list[int], int]:
        """The policy's decision on a batch (see :func:`lifelong.memory.policies.admit`)."""
        admission = admit(
            self.policy,
            capacity=self.capacity,
            labels=y.tolist(),
            draws=self._rng.random(len(y)).tolist(),
            skip=duplicates.tolist(),
            free=len(self._slots.free),
            seen=self._seen,
            seen_by_class=self._seen_by_class,
            class_sizes={label: len(bag) for label, bag in self._slots.classes.items()},
            recency=self.recency,
        )
        self._seen = admission.seen
        return admission.rows, admission.sources, admission.skipped

    def _fill(
        self,
        ids: list[str],
        x: np.ndarray[Any, Any],
        y: np.ndarray[Any, Any],
        ts: np.ndarray[Any, Any],
        duplicates: np.ndarray[Any, Any],
        keys: np.ndarray[Any, Any],
        regions: np.ndarray[Any, Any] | None,
    ) -> None:
        """Store every row but the near-duplicates in free slots, all at once (the memory has room)."""
        if duplicates.any():
            keep = ~duplicates
            ids = [name for name, dup in zip(ids, duplicates.tolist(), strict=True) if not dup]
            x, y, ts, keys = x[keep], y[keep], ts[keep], keys[keep]
            regions = None if regions is None else regions[keep]
        if not ids:
            return
        slots = self._slots.fill(ids, y=y, ts=ts, keys=keys, regions=regions)
        self._write(slots, x, keys)

    def _write(
        self, slots: np.ndarray[Any, Any], x: np.ndarray[Any, Any], keys: np.ndarray[Any, Any]
    ) -> None:
        """Append the payloads of newly occupied ``slots`` to the log and their keys to the index."""
        first, crcs = self._log.append(x)
        self._slots.row[slots] = np.arange(first, first + len(slots))
        self._slots.crc[slots] = crcs
        self._index.add(keys, slots)

    def _near_duplicates(self, keys: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Keys within ``duplicate_radius`` x the data's scale of a stored key or an earlier one."""
        out = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return out
        radius = self.duplicate_radius * self._scale(keys)
        limit = radius * radius
        if self._index.size:
            distances, _ = self._index.search(keys, 1)
            out |= distances[:, 0] <= limit
        if len(keys) > 1:  # repeats inside the batch: keep the first
            distances, found = batch_knn(keys, min(len(keys), 4))
            earlier = (found < np.arange(len(keys))[:, None]) & (found >= 0) & (distances <= limit)
            out |= earlier.any(axis=1)
        return out

    def _scale(self, keys: np.ndarray[Any, Any]) -> float:
        """Median distance between two random keys: the data's scale, which duplicates cannot shrink."""
        if self._scale_cache and abs(self.size - self._scale_size) * 10 <= self._scale_size:
            return self._scale_cache
        if self.size >= 64:
            first, second = (self._slots.occupied.draw(self._rng, 512) for _ in range(2))
            distances = np.linalg.norm(self._slots.keys[first] - self._slots.keys[second], axis=1)
        else:
            first, second = (self._rng.integers(0, len(keys), size=512) for _ in range(2))
            distances = np.linalg.norm(keys[first] - keys[second], axis=1)
        distances = distances[first != second]
        scale = float(np.median(distances)) if len(distances) else 0.0
        if self.size >= 64:
            self._scale_cache, self._scale_size = scale, self.size
        return scale

    def _train(self) -> None:
        keys, slots = self._slots.held()
        self._index.train(keys, slots)
        if self.policy == "diversity":
            self._slots.assign_regions(self._index.regions(keys))

    def relabel(self, ids: list[str], y: list[int]) -> int:
        """Give stored samples a new label (later feedback); return how many were stored."""
        changed = sum(self._slots.relabel(id, label) for id, label in zip(ids, y, strict=True))
        self.counters["relabeled"] += changed
        return changed

    # -- forgetting ------------------------------------------------------------------------------

    def forget(self, ids: list[str]) -> list[str]:
        """Remove samples by id from the index and erase their payload; return the ids found."""
        table = self._slots
        slots = [table.slot_of[id] for id in ids if id in table.slot_of]
        found = [table.ids[s] for s in slots]
        if slots:
            self._log.erase(table.row[slots])
            self._drop(slots)
            self.counters["forgotten"] += len(slots)
            self._forgotten_since_snapshot = True
        return [id for id in found if id is not None]

    def _drop(self, slots: list[int]) -> None:
        """Remove the samples in ``slots`` from the index and free the slots."""
        self._index.remove(np.asarray(slots, dtype=np.int64))
        for slot in slots:
            self._slots.release(slot)

    # -- drawing ---------------------------------------------------------------------------------

    def sample(self, n: int, *, balanced: bool = False) -> Labeled:
        """``n`` samples drawn uniformly, or ``balanced`` across the classes held.

        A draw that lost samples (damaged payloads that could not be rebuilt, now dropped) is
        drawn again from what is left: the result has ``n`` samples while the memory holds them.
        """
        while True:  # each pass that loses samples drops at least one: the memory only shrinks
            slots = self._draw(n, balanced)
            replay = self._replay(slots)
            if len(replay.ids) == len(slots):
                return replay

    def _draw(self, n: int, balanced: bool) -> np.ndarray[Any, Any]:
        if not self.size:
            return np.zeros(0, dtype=np.int64)
        if not balanced:
            return self._slots.occupied.sample(self._rng, n)
        labels = [label for label, bag in self._slots.classes.items() if len(bag)]
        shares = np.full(len(labels), n // len(labels))
        shares[: n % len(labels)] += 1
        parts = [
            self._slots.classes[label].sample(self._rng, int(share))
            for label, share in zip(labels, shares, strict=True)
        ]
        return np.concatenate(parts)

    def select(self, keep: Callable[[str], bool]) -> Labeled:
        """Every stored sample whose id ``keep`` accepts (the gate's held-out slice), in slot order.

        Samples dropped for a damaged payload are not held any more, so not selected.
        """
        slots = [slot for slot, id in enumerate(self._slots.ids) if id is not None and keep(id)]
        return self._replay(np.asarray(slots, dtype=np.int64))

    def neighbors(self, x: np.ndarray[Any, Any], k: int = 10, *, exact: bool = False) -> Labeled:
        """The stored samples nearest to each of ``x`` (k per input, duplicates removed).

        Approximate (the IVF index) once the memory is large enough to train it; ``exact``
        searches every stored key instead (slower; the reference the approximation is measured by).
        A search that lost samples (damaged payloads, dropped) is made again over what is left.
        """
        keys = self.keys_of(x)
        while True:  # as in sample: a pass that loses samples drops at least one
            slots = self._nearest(keys, k, exact)
            replay = self._replay(slots)
            if len(replay.ids) == len(slots):
                return replay

    def _nearest(self, keys: np.ndarray[Any, Any], k: int, exact: bool) -> np.ndarray[Any, Any]:
        if not self.size:
            return np.zeros(0, dtype=np.int64)
        if exact:
            held, occupied = self._slots.held()
            _, found = exact_knn(keys, held, min(k, len(occupied)))
            return np.unique(occupied[found[found >= 0]])
        _, found = self._index.search(keys, k)
        return np.unique(found[found >= 0])

    def novelty(self, x: np.ndarray[Any, Any], k: int = 5) -> float:
        """How far ``x`` lies from the memory: mean k-NN distance over the memory's own (1.0 = typical)."""
        if self.size <= k:
            return 0.0
        distances, _ = self._index.search(self.keys_of(x), k)
        new = float(np.sqrt(np.maximum(distances, 0)).mean())
        slots = self._slots.occupied.sample(self._rng, min(256, self.size))
        own, _ = self._index.search(self._slots.keys[slots], k + 1)
        reference = float(np.sqrt(np.maximum(own[:, 1:], 0)).mean())
        return new / reference if reference > 0 else float("inf") if new > 0 else 0.0

    def _replay(self, slots: np.ndarray[Any, Any]) -> Labeled:
        """The samples in ``slots``, less those dropped for a damaged payload."""
        slots = np.asarray(slots, dtype=np.int64)
        x, kept = self._payloads(slots)
        if not kept.all():
            slots, x = slots[kept], x[kept]
        table = self._slots
        return Labeled(ids=[table.ids[s] or "" for s in slots.tolist()], x=x, y=table.y[slots].copy())

    def _payloads(self, slots: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The payloads of occupied ``slots``, each checked, and which slots still hold their sample.

        A damaged row comes back rebuilt (:meth:`_repair`), or its slot is dropped (False in the
        second array; what the first holds there is garbage).
        """
        table = self._slots
        if not len(slots):
            return np.zeros((0, self.features), self.dtype), np.ones(0, dtype=bool)
        x, damaged = self._log.read(table.row[slots], table.crc[slots])
        if damaged.any():
            return x, self._repair(slots, x, damaged)
        return x, np.ones(len(slots), dtype=bool)

    def _repair(
        self, slots: np.ndarray[Any, Any], x: np.ndarray[Any, Any], damaged: np.ndarray[Any, Any]
    ) -> np.ndarray[Any, Any]:
        """Rebuild the ``damaged`` rows of ``x`` from :attr:`inputs`, or drop their samples.

        A rebuilt row is appended to the log with a fresh checksum and its slot pointed at it.
        Returns which of ``slots`` still hold their sample.
        """
        table = self._slots
        bad = np.unique(slots[damaged]).tolist()
        ids = [table.ids[slot] or "" for slot in bad]
        found = [None] * len(ids) if self.inputs is None else list(self.inputs(ids))
        if len(found) != len(ids):
            raise ValueError(f"inputs returned {len(found)} rows for {len(ids)} ids")
        rebuilt: dict[int, int] = {}  # slot -> its row in the values rebuilt
        values: list[np.ndarray[Any, Any]] = []
        for slot, row in zip(bad, found, strict=True):
            flat = None if row is None else np.asarray(row).reshape(-1)
            if flat is not None and flat.size == self.features:
                rebuilt[slot] = len(values)
                values.append(flat)
        lost = [slot for slot in bad if slot not in rebuilt]
        if values:
            data = np.asarray(np.stack(values), dtype=self.dtype)  # as add's rows are stored
            first, crcs = self._log.append(data)
            chosen = np.fromiter(rebuilt, dtype=np.int64, count=len(rebuilt))
            table.row[chosen] = np.arange(first, first + len(chosen))
            table.crc[chosen] = crcs
        kept = np.ones(len(slots), dtype=bool)
        for n in np.flatnonzero(damaged).tolist():
            at = rebuilt.get(int(slots[n]))
            if at is None:
                kept[n] = False
            else:
                x[n] = data[at]
        if lost:
            self._drop(lost)
        log.warning(
            "payload log %s: %d rows damaged (checksum mismatch): %d rebuilt from the stored inputs, "
            "%d dropped",
            self._log.path,
            len(bad),
            len(rebuilt),
            len(lost),
        )
        self.counters.update(payload_rebuilt=len(rebuilt), payload_dropped=len(lost))
        return kept

    # -- snapshots -------------------------------------------------------------------------------

    def snapshot(self, *, offsets: dict[str, int] | None = None) -> Path:
        """Write an atomic snapshot of the memory and the offsets its contents correspond to."""
        if offsets is not None:
            self.offsets = dict(offsets)
        stale = self._compact() if self._log.rows > 2 * self.capacity else None
        self._log.sync()
        with self._snapshots.begin() as draft:
            manifest = layout.write(self, draft.path)
            published = draft.commit(manifest)
        if stale is not None:
            stale.unlink(missing_ok=True)
        if self._forgotten_since_snapshot:  # older snapshots still name the forgotten ids
            self._snapshots.drop_older()
            self._forgotten_since_snapshot = False
        return published

    def _compact(self) -> Path:
        """Copy the live rows to a new payload log (evicted rows pile up in the old one)."""
        slots = self._slots.occupied.array()
        rows = self._slots.row
        old = self._log
        new = PayloadLog(
            self.directory / f"payload-{self._generation + 1}.bin", features=self.features, dtype=self.dtype
        )
        new.truncate(0)
        for start in range(0, len(slots), 65536):
            chunk = slots[start : start + 65536]
            x, kept = self._payloads(chunk)  # damaged rows are rebuilt (into the old log) or dropped
            if not kept.all():
                chunk, x = chunk[kept], x[kept]
            first, _ = new.append(x)  # the same bytes: the slots keep their checksums
            rows[chunk] = np.arange(first, first + len(chunk))
        self._log, self._generation = new, self._generation + 1
        old.close()
        return old.path

    def current_snapshot(self) -> Path | None:
        """The directory of the snapshot a restart would load, if any."""
        return self._snapshots.current()

    def restore(self) -> bool:
        """Load the current snapshot, if there is one; return whether one was loaded.

        A format 1 snapshot (before payload checksums) is loaded too, and the checksums of its
        rows computed from the payload log as it is then: an upgrade keeps the memory, and
        trusts its rows once, as the version that wrote them did. Its next snapshot is format 2.
        """
        migrating = (self._snapshots.manifest() or {}).get("format") == 1
        snapshots = self._snapshots
        if migrating:
            snapshots = SnapshotDir(snapshots.root, kind=snapshots.kind, format=1)
        loaded = snapshots.load()
        if loaded is None:
            self._log.truncate(0)  # rows of a run that crashed before its first snapshot
            return False
        manifest, path = loaded
        for key, mine in layout.settings_of(self).items():
            if manifest[key] != mine:
                raise SettingsChanged(
                    f"rehearsal memory snapshot {path} has {key}={manifest[key]!r}, the configuration "
                    f"{mine!r}: restore the old setting or move {self.directory} aside to start it empty"
                )
        self._log.close()
        self._reset(generation=manifest["payload_generation"])
        layout.read(self, path, manifest)
        if migrating:
            self._checksum_rows()
        for other in self.directory.glob("payload-*.bin"):  # a crash mid-compaction leaves one behind
            if other != self._log.path:
                other.unlink(missing_ok=True)
        return True

    def _checksum_rows(self) -> None:
        """Compute the checksums of the held rows (a format 1 snapshot has none)."""
        slots = self._slots.occupied.array()
        for start in range(0, len(slots), 65536):
            chunk = slots[start : start + 65536]
            rows = self._slots.row[chunk]
            x, _ = self._log.read(rows, np.zeros(len(rows), np.uint32))  # past the end: damaged at every read
            self._slots.crc[chunk] = row_checksums(x)
        log.info("rehearsal memory %s: computed the checksums of %d payload rows", self.directory, len(slots))

    def flush(self) -> None:
        """Wait for the payload writes in flight."""
        self._log.flush()

    def close(self) -> None:
        """Close the payload log."""
        self._log.close()
