"""A daemon on an in-memory bus, running in a thread: what the in-process tests start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prometheus_client import CollectorRegistry

from lifelong.config import Settings
from lifelong.connectors.memory import MemoryBus
from lifelong.daemon.app import Daemon
from lifelong.daemon.wiring import build_daemon, memory_connectors


@contextmanager
def daemon_on_bus(
    settings: Settings, bus: MemoryBus | None = None
) -> Iterator[tuple[Daemon, MemoryBus, CollectorRegistry]]:
    """Build and run a daemon reading ``bus`` (a fresh one by default); stopped and joined on exit."""
    bus = bus if bus is not None else MemoryBus()
    registry = CollectorRegistry()
    with ExitStack() as stack:
        connectors = memory_connectors(settings, bus)
        daemon = build_daemon(settings, stack, connectors=connectors, metrics_registry=registry)
        daemon.poll_timeout_s = 0.05
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        try:
            yield daemon, bus, registry
        finally:
            daemon.stop()
            thread.join(timeout=60)
