"""The files of a rehearsal-memory snapshot: what :meth:`RehearsalMemory.snapshot` writes and restore reads.

Nothing here is pickled: arrays are ``.npy``/``.npz`` loaded with ``allow_pickle=False``,
ids are JSON, the index is FAISS's own format.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from lifelong.memory.bags import Bag, Bags

if TYPE_CHECKING:
    from lifelong.memory.rehearsal import RehearsalMemory


def write(memory: RehearsalMemory, directory: Path) -> dict[str, Any]:
    """Write the memory's arrays, ids, bags and index into ``directory``; return the manifest fields."""
    np.save(directory / "keys.npy", memory._keys, allow_pickle=False)
    np.savez(directory / "slots.npz", y=memory._y, ts=memory._ts, row=memory._row, region=memory._region)
    (directory / "ids.json").write_bytes(msgspec.json.encode(memory._ids))
    bags: dict[str, Any] = {
        "occupied": memory._occupied.array(),
        "free": np.asarray(memory._free, dtype=np.int64),
        **{f"class_{k}": v for k, v in memory._classes.pack().items()},
        **{f"region_{k}": v for k, v in memory._regions.pack().items()},
    }
    np.savez(directory / "bags.npz", **bags)
    memory._index.write(directory / "index.faiss")
    return {
        "capacity": memory.capacity,
        "features": memory.features,
        "dtype": memory.dtype.str,
        "policy": memory.policy,
        "key_dim": memory.dim,
        "seed": memory.seed,
        "payload_generation": memory._generation,
        "payload_rows": memory._log.rows,
        "seen": memory._seen,
        "seen_by_class": {str(k): v for k, v in memory._seen_by_class.items()},
        "rng": memory._rng.bit_generator.state,
        "scale": [memory._scale_cache, memory._scale_size],
        "offsets": memory.offsets,
        "counters": dict(memory.counters),
        "size": memory.size,
        "classes": {str(k): v for k, v in memory.classes().items()},
    }


def settings_of(memory: RehearsalMemory) -> dict[str, Any]:
    """The settings a snapshot must share with the memory that loads it."""
    return {
        "capacity": memory.capacity,
        "features": memory.features,
        "key_dim": memory.dim,
        "seed": memory.seed,
        "dtype": memory.dtype.str,
    }


def read(memory: RehearsalMemory, path: Path, manifest: dict[str, Any]) -> None:
    """Fill a freshly reset ``memory`` from the snapshot at ``path``."""
    memory._log.truncate(manifest["payload_rows"])
    memory._keys = np.load(path / "keys.npy", allow_pickle=False)
    with np.load(path / "slots.npz", allow_pickle=False) as arrays:
        memory._y, memory._ts, memory._row, memory._region = (arrays[k] for k in ("y", "ts", "row", "region"))
    memory._ids = msgspec.json.decode((path / "ids.json").read_bytes(), type=list[str | None])
    memory._index.read(path / "index.faiss")
    with np.load(path / "bags.npz", allow_pickle=False) as bags:
        memory._occupied = Bag()
        memory._occupied.extend(bags["occupied"].tolist())
        memory._free = bags["free"].tolist()
        memory._classes = Bags.unpack(*(bags[f"class_{k}"] for k in ("keys", "sizes", "items")))
        memory._regions = Bags.unpack(*(bags[f"region_{k}"] for k in ("keys", "sizes", "items")))
        memory._crowding[:] = 0
        memory._crowding[bags["region_keys"]] = bags["region_sizes"]
    slot_of: dict[Any, int] = dict(zip(memory._ids, range(memory.capacity), strict=True))
    slot_of.pop(None, None)
    memory._slot_of = slot_of
    memory._seen = manifest["seen"]
    memory._seen_by_class = Counter({int(k): v for k, v in manifest["seen_by_class"].items()})
    memory._rng.bit_generator.state = manifest["rng"]
    memory._scale_cache, memory._scale_size = manifest["scale"]
    memory.offsets = manifest["offsets"]
    memory.counters = Counter(manifest["counters"])
