"""Process-wide tuning the daemon applies at start (and the benchmarks, to measure what it runs)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def pin_mmap_threshold(threshold: int = 16 << 20, trim: int = 64 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more from mmap, always; keep ``trim`` bytes of free heap.

    glibc raises its mmap threshold after each large free, up to 32 MiB, so the
    daemon's batch buffers (tens of MiB, freed after each batch) would end up in
    the heap, which fragments and never shrinks. A fixed threshold returns them
    to the system. Smaller arrays (a replay batch, the payloads of a neighbour
    search: a few MiB) stay in the heap and are reused: a fresh mapping costs a
    page fault per 4 KiB, as much as reading the payloads themselves. ``trim``
    keeps that much free memory at the heap's top instead of returning it after
    every free. Returns False where the C library has no ``mallopt``.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        pinned = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
        return pinned and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    except (OSError, AttributeError, TypeError):
        log.debug("mallopt not available; keeping the C library's allocation policy")
        return False
