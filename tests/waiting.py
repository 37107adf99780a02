"""Polling until something holds, for tests of threads, processes and the broker."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float = 30.0,
    what: Callable[[], object] = lambda: "",
    *,
    interval_s: float = 0.05,
) -> None:
    """Return once ``condition()`` holds; fail after ``timeout_s`` saying ``what()``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting: {what()}")
        time.sleep(interval_s)
