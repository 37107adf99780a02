"""The files of a rehearsal-memory snapshot: what :meth:`RehearsalMemory.snapshot` writes and restore reads.

Nothing here is pickled: arrays are ``.npy``/``.npz`` loaded with ``allow_pickle=False``,
ids are JSON, the index is FAISS's own format.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lifelong.errors import UnsupportedFormat
from lifelong.memory.index import VectorIndex
from lifelong.memory.payloads import CHECKSUM, PayloadLog
from lifelong.memory.policies import Policy
from lifelong.memory.slots import Slots


class RehearsalMemory(Protocol):
    """What a snapshot holds of a :class:`~lifelong.memory.rehearsal.RehearsalMemory`: its settings,
    its slots, index and payload log, and the counters its policies draw against."""

    capacity: int
    features: int
    dtype: np.dtype[Any]
    policy: Policy
    dim: int
    seed: int
    offsets: dict[str, int]
    counters: Counter[str]
    _slots: Slots
    _index: VectorIndex
    _log: PayloadLog
    _generation: int
    _seen: int
    _seen_by_class: Counter[int]
    _rng: np.random.Generator
    _scale_cache: float
    _scale_size: int

    @property
    def size(self) -> int: ...

    def classes(self) -> dict[int, int]: ...


def write(memory: RehearsalMemory, directory: Path) -> dict[str, Any]:
    """Write the memory's arrays, ids, bags and index into ``directory``; return the manifest fields."""
    memory._slots.write(directory)
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
        "payload_checksum": CHECKSUM,
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
    """Fill a freshly reset ``memory`` from the snapshot at ``path``.

    A format 1 snapshot has no payload checksums: the slots' are zeros, for the memory to compute.
    """
    checksum = manifest.get("payload_checksum", CHECKSUM)
    if checksum != CHECKSUM:
        raise UnsupportedFormat(
            f"rehearsal memory snapshot {path} checksums its payloads with {checksum!r}, this lifelong "
            f"with {CHECKSUM!r}: upgrade lifelong to read it"
        )
    memory._log.truncate(manifest["payload_rows"])
    memory._slots.read(path)
    memory._index.read(path / "index.faiss")
    memory._slots.track_regions = memory.policy == "diversity" and memory._index.trained
    memory._seen = manifest["seen"]
    memory._seen_by_class = Counter({int(k): v for k, v in manifest["seen_by_class"].items()})
    memory._rng.bit_generator.state = manifest["rng"]
    memory._scale_cache, memory._scale_size = manifest["scale"]
    memory.offsets = manifest["offsets"]
    memory.counters = Counter(manifest["counters"])
