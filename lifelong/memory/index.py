"""Nearest-neighbour search over the memory's keys with FAISS (the only module that imports it).

Exact (flat) search while the memory is small; an inverted-file index (IVF) trained
on the keys once there are enough of them, with about sqrt(capacity) lists. The
IVF's coarse centroids double as the memory's regions (for the diversity policy).

With a GPU build of FAISS and a GPU, searches go to an exact copy of the keys on the
GPU instead (:class:`ExactMirror`): FAISS's GPU indexes cannot remove vectors, and
the memory evicts all the time, so the CPU index stays the record.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)


Device = Literal["auto", "cpu", "gpu"]
DEVICES = ("auto", "cpu", "gpu")
# FAISS's GPU search handles at most this many neighbours per query.
_GPU_MAX_K = 2048
# Scratch memory FAISS reserves on the GPU (its default, 18% of the GPU, would crowd out training).
_GPU_TEMP_BYTES = 512 << 20
_gpu_resources: Any = None


def gpu_count() -> int:
    """GPUs FAISS can use: 0 with a CPU-only build of faiss."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def resolve_device(device: str) -> Literal["cpu", "gpu"]:
    """Where searches run: ``auto`` picks the GPU when FAISS can use one; ``gpu`` insists."""
    if device not in DEVICES:
        raise ValueError(f"memory.device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    if gpu_count():
        return "gpu"
    if device == "gpu":
        raise ValueError(
            "memory.device = 'gpu', but the installed faiss has no GPU support or sees no GPU: install "
            "a GPU build (pip install faiss-gpu-cu12 in place of faiss-cpu) or set memory.device = 'auto'"
        )
    return "cpu"


def gpu_flat_index(dim: int) -> Any:
    """An empty exact (flat) L2 index on GPU 0, sharing one set of FAISS GPU resources per process."""
    global _gpu_resources
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
        _gpu_resources.setTempMemory(_GPU_TEMP_BYTES)
    return faiss.GpuIndexFlatL2(_gpu_resources, dim)


def ivf_lists(capacity: int) -> int:
    """Inverted lists for a memory of ``capacity``: about sqrt(capacity), with 39+ keys each to train."""
    return max(4, min(int(math.sqrt(capacity)), capacity // 39))


def training_size(capacity: int) -> int:
    """Keys needed before switching to IVF: enough for k-means, never more than the capacity."""
    return min(capacity, max(10_000, 40 * ivf_lists(capacity)))


def exact_knn(
    queries: np.ndarray[Any, Any], keys: np.ndarray[Any, Any], k: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Brute-force squared L2 neighbours of ``queries`` among ``keys``."""
    distances, found = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(keys, dtype=np.float32), k
    )
    return distances, found


def batch_knn(
    keys: np.ndarray[Any, Any], k: int, *, exact_up_to: int = 4096
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Each key's ``k`` nearest among ``keys`` themselves (positions in ``keys``).

    Exact for small batches; a larger one gets an IVF trained on itself (about sqrt(n) lists,
    two probed), so finding repeats inside a batch of n keys costs about n * sqrt(n), not n * n.
    Near-duplicates share a list but for the rare pair across a boundary, which is then missed.
    """
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    if len(keys) <= exact_up_to:
        return exact_knn(keys, keys, k)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(keys.shape[1]), keys.shape[1], ivf_lists(len(keys)))
    index.cp.min_points_per_centroid = 1  # no warning for the few points per list k-means gets here
    index.train(keys)
    index.add(keys)
    index.nprobe = 2
    distances, found = index.search(keys, k)
    return distances, found


class Projection:
    """A fixed linear map from ``features`` to ``dim`` dimensions, applied by FAISS.

    FAISS's BLAS shares its OpenMP threads with the searches; numpy's keeps its own
    threads spinning after each product, which would take the cores from the search
    that follows it.

    >>> import numpy as np
    >>> Projection(np.eye(3, 2, dtype=np.float32)).apply(np.ones((1, 3), np.float32)).tolist()
    [[1.0, 1.0]]
    """

    def __init__(self, matrix: np.ndarray[Any, Any]) -> None:
        features, dim = matrix.shape
        self._transform: Any = faiss.LinearTransform(features, dim, False)
        rows = np.ascontiguousarray(matrix.T, dtype=np.float32)  # FAISS computes A @ x
        faiss.copy_array_to_vector(rows.ravel(), self._transform.A)
        self._transform.is_trained = True

    def apply(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``x @ matrix`` for rows ``x``."""
        return self._transform.apply(np.ascontiguousarray(x, dtype=np.float32))  # type: ignore[no-any-return]


class ExactMirror:
    """An exact copy of the held keys in a flat index (on the GPU), rebuilt at the next search after a change.

    ``held`` returns the keys held and their slots. Brute force is exact; a rebuild copies
    every key over once, and happens only when the memory changed since the last search.

    Example::

        mirror = ExactMirror(dim=64, held=lambda: (keys[slots], slots))
        distances, slots = mirror.search(queries, k=10)
    """

    def __init__(
        self,
        *,
        dim: int,
        held: Callable[[], tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]],
        flat_index: Callable[[int], Any] | None = None,
    ) -> None:
        self.dim = dim
        self.held = held
        self.stale = True
        self._index = (flat_index or gpu_flat_index)(dim)
        self._slots = np.zeros(0, dtype=np.int64)

    def search(
        self, queries: np.ndarray[Any, Any], k: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Squared L2 distances and slots of the ``k`` nearest held keys (slot -1 where fewer exist)."""
        if self.stale:
            keys, slots = self.held()
            self._index.reset()
            if len(keys):
                self._index.add(np.ascontiguousarray(keys, dtype=np.float32))
            self._slots = np.asarray(slots, dtype=np.int64)
            self.stale = False
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        found_k = min(k, len(self._slots), _GPU_MAX_K)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        slots = np.full((len(queries), k), -1, dtype=np.int64)
        if found_k and len(queries):
            near, rows = self._index.search(queries, found_k)
            distances[:, :found_k] = near
            slots[:, :found_k] = np.where(rows >= 0, self._slots[np.maximum(rows, 0)], -1)
        return distances, slots


class VectorIndex:
    """Slot-addressed vectors: add, remove, search, regions.

    Example::

        index = VectorIndex(dim=64, capacity=100_000)
        index.add(keys, slots)
        distances, slots = index.search(queries, k=10)
    """

    def __init__(
        self, *, dim: int, capacity: int, nprobe: int | None = None, mirror: ExactMirror | None = None
    ) -> None:
        self.dim = dim
        self.capacity = capacity
        self.nlist = ivf_lists(capacity)
        self.nprobe = nprobe or 8
        # Where searches go when set (the GPU); this index stays the record either way.
        self.mirror = mirror
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))

    def _changed(self) -> None:
        if self.mirror is not None:
            self.mirror.stale = True

    @property
    def trained(self) -> bool:
        """Whether the IVF (and so the regions) exists yet."""
        return isinstance(self._index, faiss.IndexIVFFlat)

    @property
    def size(self) -> int:
        """Vectors held."""
        return int(self._index.ntotal)

    def train(self, keys: np.ndarray[Any, Any], slots: np.ndarray[Any, Any]) -> None:
        """Switch to an IVF trained on ``keys`` and holding exactly ``keys`` at ``slots``."""
        quantizer = faiss.IndexFlatL2(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist)
        ivf.train(np.ascontiguousarray(keys, dtype=np.float32))
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        ivf.nprobe = self.nprobe
        ivf.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32), slots.astype(np.int64))
        self._index = ivf
        self._changed()
        log.info("rehearsal index: IVF with %d lists over %d keys", self.nlist, len(keys))

    def add(self, keys: np.ndarray[Any, Any], slots: np.ndarray[Any, Any]) -> None:
        """Add ``keys`` under ``slots`` (slots not held already)."""
        if len(keys):
            self._index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32), slots.astype(np.int64))
            self._changed()

    def remove(self, slots: np.ndarray[Any, Any]) -> None:
        """Remove the vectors of ``slots``."""
        if len(slots):
            array = np.ascontiguousarray(slots, dtype=np.int64)
            self._index.remove_ids(faiss.IDSelectorArray(len(array), faiss.swig_ptr(array)))
            self._changed()

    def search(
        self, queries: np.ndarray[Any, Any], k: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Squared L2 distances and slots of the ``k`` nearest keys (slot -1 where fewer exist)."""
        if self.mirror is not None:
            return self.mirror.search(queries, k)
        return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[no-any-return]

    def regions(self, keys: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The IVF list (region) of each key; all zeros before training."""
        if not self.trained:
            return np.zeros(len(keys), dtype=np.int64)
        _, lists = self._index.quantizer.search(np.ascontiguousarray(keys, dtype=np.float32), 1)
        return lists[:, 0].astype(np.int64)  # type: ignore[no-any-return]

    def write(self, path: Path) -> None:
        """Serialize to ``path`` (FAISS's own format: no pickle)."""
        try:
            faiss.write_index(self._index, str(path))
        except RuntimeError as error:  # FAISS reports a failed write in words, errno included
            if "No space left on device" in str(error):
                raise OSError(errno.ENOSPC, f"no space left writing {path}: {error}") from error
            raise

    def read(self, path: Path) -> None:
        """Replace this index with the one serialized at ``path``."""
        index = faiss.read_index(str(path))
        if index.d != self.dim:
            raise ValueError(f"index at {path} has dimension {index.d}, expected {self.dim}")
        if isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = self.nprobe
        self._index = index
        self._changed()
