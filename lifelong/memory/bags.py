"""Sets with O(1) add, remove and uniform random draws, and groups of them keyed by label or region."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class Bag:
    """A set of ints that can also draw members uniformly at random.

    >>> bag = Bag([3, 5])
    >>> bag.discard(3)
    >>> bag.array().tolist()
    [5]
    """

    def __init__(self, items: Iterable[int] = ()) -> None:
        self._items: list[int] = []
        self._position: dict[int, int] = {}
        self.extend(list(dict.fromkeys(items)))

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: int) -> None:
        """Add ``item`` (no effect if present)."""
        if item not in self._position:
            self._position[item] = len(self._items)
            self._items.append(item)

    def extend(self, items: list[int]) -> None:
        """Add ``items`` (none of them present yet)."""
        start = len(self._items)
        self._items.extend(items)
        self._position.update(zip(items, range(start, start + len(items)), strict=True))

    def discard(self, item: int) -> None:
        """Remove ``item`` if present, by moving the last member into its place."""
        position = self._position.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._position[last] = position

    def choice(self, rng: np.random.Generator) -> int:
        """One member, uniformly."""
        # random() * n: a scalar integers() call costs several times more, once per eviction.
        return self._items[int(rng.random() * len(self._items))]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
        """``n`` distinct members (all of them if fewer), uniformly."""
        if n >= len(self._items):
            return self.array()
        items = self._items
        picks = rng.choice(len(items), size=n, replace=False).tolist()
        return np.array([items[i] for i in picks], dtype=np.int64)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray[Any, Any]:
        """``n`` members drawn with replacement (cheaper when repeats do not matter)."""
        items = self._items
        return np.array([items[i] for i in rng.integers(0, len(items), size=n).tolist()], dtype=np.int64)

    def array(self) -> np.ndarray[Any, Any]:
        """Every member."""
        return np.asarray(self._items, dtype=np.int64)


class Bags(dict[int, Bag]):
    """Bags by key (a class label, a region), created on first use."""

    @classmethod
    def of(cls, keys: np.ndarray[Any, Any], items: np.ndarray[Any, Any]) -> Bags:
        """Bags holding each of ``items`` under the matching entry of ``keys``."""
        bags = cls()
        for key, item in zip(keys.tolist(), items.tolist(), strict=True):
            bags.add(key, item)
        return bags

    def add(self, key: int, item: int) -> None:
        """Put ``item`` in the bag of ``key``."""
        bag = self.get(key)
        if bag is None:
            bag = self[key] = Bag()
        bag.add(item)

    def extend(self, key: int, items: list[int]) -> None:
        """Put ``items`` (none of them present yet) in the bag of ``key``."""
        bag = self.get(key)
        if bag is None:
            bag = self[key] = Bag()
        bag.extend(items)

    def discard(self, key: int, item: int) -> None:
        """Take ``item`` out of the bag of ``key``."""
        bag = self.get(key)
        if bag is not None:
            bag.discard(item)

    def pack(self) -> dict[str, np.ndarray[Any, Any]]:
        """Keys, sizes and members in order, for a snapshot (draws after restore stay identical)."""
        keys = sorted(self)
        return {
            "keys": np.asarray(keys, dtype=np.int64),
            "sizes": np.asarray([len(self[k]) for k in keys], dtype=np.int64),
            "items": np.concatenate([self[k].array() for k in keys]) if keys else np.zeros(0, np.int64),
        }

    @classmethod
    def unpack(
        cls, keys: np.ndarray[Any, Any], sizes: np.ndarray[Any, Any], items: np.ndarray[Any, Any]
    ) -> Bags:
        """The inverse of :meth:`pack`."""
        bags = cls()
        start = 0
        members = items.tolist()
        for key, size in zip(keys.tolist(), sizes.tolist(), strict=True):
            bag = bags[key] = Bag()
            bag.extend(members[start : start + size])
            start += size
        return bags
