"""Who is in which slot of a rehearsal memory, and the bags that draws and evictions pick from.

A memory of capacity ``n`` has ``n`` slots. A slot holds one sample's id, label, timestamp,
search key, the row of its payload in the log and that row's checksum; the bags group the
occupied slots (all, by class, by IVF region) so a uniform draw from any group costs O(1).
Nothing here touches FAISS or the payload log: :class:`~lifelong.memory.rehearsal.RehearsalMemory`
keeps those in step with the slots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from lifelong.memory.bags import Bag, Bags
from lifelong.memory.policies import ANY, CROWDED


class Slots:
    """The slot table of a memory of ``capacity`` samples with keys of ``dim`` dimensions.

    Example::

        slots = Slots(capacity=4, dim=2, regions=2)
        taken = slots.fill(["a", "b"], y=np.array([0, 1]), ts=np.zeros(2, np.int64),
                           keys=np.zeros((2, 2), np.float32))
        slots.vacate(int(taken[0]))
    """

    def __init__(self, *, capacity: int, dim: int, regions: int) -> None:
        self.capacity = capacity
        self.ids: list[str | None] = [None] * capacity
        self.slot_of: dict[str, int] = {}
        self.y = np.full(capacity, -1, dtype=np.int64)
        self.ts = np.zeros(capacity, dtype=np.int64)
        self.row = np.full(capacity, -1, dtype=np.int64)  # the payload log row
        self.crc = np.zeros(capacity, dtype=np.uint32)  # the checksum of that row's bytes
        self.region = np.zeros(capacity, dtype=np.int64)
        self.keys = np.zeros((capacity, dim), dtype=np.float32)
        self.occupied = Bag()
        self.classes = Bags()
        self.regions = Bags()
        # Members per region, kept beside the bags: argmax over ~sqrt(capacity) regions per eviction.
        self.crowding = np.zeros(regions, dtype=np.int64)
        self.free = list(range(capacity - 1, -1, -1))
        # Regions are tracked only by the diversity policy, once the index has regions.
        self.track_regions = False

    def __len__(self) -> int:
        return len(self.occupied)

    def held(self) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """The keys of the occupied slots, and those slots."""
        slots = self.occupied.array()
        return self.keys[slots], slots

    def occupy(self, slot: int, id: str, label: int, ts: int, key: np.ndarray[Any, Any], region: int) -> None:
        """Put one sample in an empty ``slot``."""
        self.ids[slot] = id
        self.slot_of[id] = slot
        self.y[slot] = label
        self.ts[slot] = ts
        self.keys[slot] = key
        self.occupied.add(slot)
        self.classes.add(label, slot)
        if self.track_regions:
            self.region[slot] = region
            self.regions.add(region, slot)
            self.crowding[region] += 1

    def fill(
        self,
        ids: list[str],
        *,
        y: np.ndarray[Any, Any],
        ts: np.ndarray[Any, Any],
        keys: np.ndarray[Any, Any],
        regions: np.ndarray[Any, Any] | None = None,
    ) -> np.ndarray[Any, Any]:
        """Put a batch in free slots at once (there must be room); return the slots taken, in order."""
        count = len(ids)
        slots = np.asarray(self.free[-count:][::-1], dtype=np.int64)
        del self.free[len(self.free) - count :]
        slot_list = slots.tolist()
        for slot, name in zip(slot_list, ids, strict=True):
            self.ids[slot] = name
        self.slot_of.update(zip(ids, slot_list, strict=True))
        self.y[slots], self.ts[slots], self.keys[slots] = y, ts, keys
        self.occupied.extend(slot_list)
        for label in np.unique(y).tolist():
            self.classes.extend(label, slots[y == label].tolist())
        if self.track_regions and regions is not None:
            self.region[slots] = regions
            for region in np.unique(regions).tolist():
                members = slots[regions == region].tolist()
                self.regions.extend(region, members)
                self.crowding[region] += len(members)
        return slots

    def vacate(self, slot: int) -> None:
        """Empty ``slot`` (its payload row stays until it is reused or released)."""
        id = self.ids[slot]
        if id is None:
            return
        del self.slot_of[id]
        self.ids[slot] = None
        self.occupied.discard(slot)
        self.classes.discard(int(self.y[slot]), slot)
        if self.track_regions:
            self.regions.discard(int(self.region[slot]), slot)
            self.crowding[self.region[slot]] -= 1
        self.y[slot] = -1

    def release(self, slot: int) -> None:
        """Empty ``slot`` for good: its payload row is gone and the slot is free again."""
        self.vacate(slot)
        self.row[slot] = -1
        self.crc[slot] = 0
        self.free.append(slot)

    def relabel(self, id: str, label: int) -> bool:
        """Give the sample ``id`` a new label; whether it is held with another one."""
        slot = self.slot_of.get(id)
        if slot is None or self.y[slot] == label:
            return False
        self.classes.discard(int(self.y[slot]), slot)
        self.classes.add(label, slot)
        self.y[slot] = label
        return True

    def victim(self, source: int, rng: np.random.Generator) -> int:
        """An occupied slot to evict, drawn from ``source``: any, the most crowded region, or a class."""
        if source == ANY:
            return self.occupied.choice(rng)
        if source == CROWDED:
            bag = self.regions[int(np.argmax(self.crowding))] if self.track_regions else self.occupied
            return bag.choice(rng)
        return self.classes[source].choice(rng)

    def assign_regions(self, regions: np.ndarray[Any, Any]) -> None:
        """Group the occupied slots, in :meth:`held` order, by their IVF ``regions`` from now on."""
        slots = self.occupied.array()
        self.region[slots] = regions
        self.regions = Bags.of(regions, slots)
        self.crowding = np.bincount(regions, minlength=len(self.crowding)).astype(np.int64)
        self.track_regions = True

    # -- files -----------------------------------------------------------------------------------

    def write(self, directory: Path) -> None:
        """Write the table into a snapshot ``directory`` (arrays, ids as JSON, bags)."""
        np.save(directory / "keys.npy", self.keys, allow_pickle=False)
        np.savez(
            directory / "slots.npz", y=self.y, ts=self.ts, row=self.row, crc=self.crc, region=self.region
        )
        (directory / "ids.json").write_bytes(msgspec.json.encode(self.ids))
        bags: dict[str, Any] = {
            "occupied": self.occupied.array(),
            "free": np.asarray(self.free, dtype=np.int64),
            **{f"class_{k}": v for k, v in self.classes.pack().items()},
            **{f"region_{k}": v for k, v in self.regions.pack().items()},
        }
        np.savez(directory / "bags.npz", **bags)

    def read(self, path: Path) -> None:
        """Load the table :meth:`write` wrote into the snapshot at ``path``.

        A snapshot of format 1 has no checksums: :attr:`crc` is then all zeros, for the memory to compute.
        """
        self.keys = np.load(path / "keys.npy", allow_pickle=False)
        with np.load(path / "slots.npz", allow_pickle=False) as arrays:
            self.y, self.ts, self.row, self.region = (arrays[k] for k in ("y", "ts", "row", "region"))
            has_crc = "crc" in arrays.files
            self.crc = arrays["crc"] if has_crc else np.zeros(self.capacity, dtype=np.uint32)
        self.ids = msgspec.json.decode((path / "ids.json").read_bytes(), type=list[str | None])
        with np.load(path / "bags.npz", allow_pickle=False) as bags:
            self.occupied = Bag()
            self.occupied.extend(bags["occupied"].tolist())
            self.free = bags["free"].tolist()
            self.classes = Bags.unpack(*(bags[f"class_{k}"] for k in ("keys", "sizes", "items")))
            self.regions = Bags.unpack(*(bags[f"region_{k}"] for k in ("keys", "sizes", "items")))
            self.crowding[:] = 0
            self.crowding[bags["region_keys"]] = bags["region_sizes"]
        slot_of: dict[Any, int] = dict(zip(self.ids, range(self.capacity), strict=True))
        slot_of.pop(None, None)
        self.slot_of = slot_of
