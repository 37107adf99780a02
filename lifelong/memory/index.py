"""Nearest-neighbour search over the memory's keys with FAISS (the only module that imports it).

Exact (flat) search while the memory is small; an inverted-file index (IVF) trained
on the keys once there are enough of them, with about sqrt(capacity) lists. The
IVF's coarse centroids double as the memory's regions (for the diversity policy).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)


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


class VectorIndex:
    """Slot-addressed vectors: add, remove, search, regions.

    Example::

        index = VectorIndex(dim=64, capacity=100_000)
        index.add(keys, slots)
        distances, slots = index.search(queries, k=10)
    """

    def __init__(self, *, dim: int, capacity: int, nprobe: int | None = None) -> None:
        self.dim = dim
        self.capacity = capacity
        self.nlist = ivf_lists(capacity)
        self.nprobe = nprobe or 8
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatL2(dim))

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
        log.info("rehearsal index: IVF with %d lists over %d keys", self.nlist, len(keys))

    def add(self, keys: np.ndarray[Any, Any], slots: np.ndarray[Any, Any]) -> None:
        """Add ``keys`` under ``slots`` (slots not held already)."""
        if len(keys):
            self._index.add_with_ids(np.ascontiguousarray(keys, dtype=np.float32), slots.astype(np.int64))

    def remove(self, slots: np.ndarray[Any, Any]) -> None:
        """Remove the vectors of ``slots``."""
        if len(slots):
            array = np.ascontiguousarray(slots, dtype=np.int64)
            self._index.remove_ids(faiss.IDSelectorArray(len(array), faiss.swig_ptr(array)))

    def search(
        self, queries: np.ndarray[Any, Any], k: int
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Squared L2 distances and slots of the ``k`` nearest keys (slot -1 where fewer exist)."""
        return self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)  # type: ignore[no-any-return]

    def regions(self, keys: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The IVF list (region) of each key; all zeros before training."""
        if not self.trained:
            return np.zeros(len(keys), dtype=np.int64)
        _, lists = self._index.quantizer.search(np.ascontiguousarray(keys, dtype=np.float32), 1)
        return lists[:, 0].astype(np.int64)  # type: ignore[no-any-return]

    def write(self, path: Path) -> None:
        """Serialize to ``path`` (FAISS's own format: no pickle)."""
        faiss.write_index(self._index, str(path))

    def read(self, path: Path) -> None:
        """Replace this index with the one serialized at ``path``."""
        index = faiss.read_index(str(path))
        if index.d != self.dim:
            raise ValueError(f"index at {path} has dimension {index.d}, expected {self.dim}")
        if isinstance(index, faiss.IndexIVFFlat):
            index.nprobe = self.nprobe
        self._index = index
