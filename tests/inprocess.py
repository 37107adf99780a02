"""A daemon on an in-memory bus, running in a thread: what the in-process tests start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry

from lifelong.config import Settings, load_settings
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


@contextmanager
def daemon_from_config(
    text: str, directory: Path
) -> Iterator[tuple[Daemon, MemoryBus, Settings, CollectorRegistry]]:
    """:func:`daemon_on_bus` for a config ``text`` whose ``{dir}`` becomes ``directory``/state."""
    config = directory / "lifelong.toml"
    config.write_text(text.format(dir=directory / "state"))
    settings = load_settings(config)
    with daemon_on_bus(settings) as (daemon, bus, registry):
        yield daemon, bus, settings, registry
