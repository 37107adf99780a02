"""Shared fixtures: one embedded broker per session, unique topics per test, settings files."""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lifelong.connectors.broker import EmbeddedBroker
from tests.kafka_setup import Setup

_counter = itertools.count()


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """Undo what ``lifelong.daemon.cli.main`` does to the root logger when a test calls it in-process.

    Its handler writes to that test's captured stderr, which is closed once the test ends;
    a daemon thread of a later test logging through it would fail.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker, on a free port, for the whole session."""
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses on the shared broker."""
    run = uuid.uuid4().hex[:8]
    return lambda stem: f"{stem}.{run}.{next(_counter)}"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a TOML config file from keyword sections; returns its path."""

    def make(name: str = "lifelong.toml", **sections: dict[str, object]) -> Path:
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                rendered = (
                    f'"{value}"'
                    if isinstance(value, (str, Path))
                    else str(value).lower()
                    if isinstance(value, bool)
                    else str(value)
                )
                lines.append(f"{key} = {rendered}")
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return make


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LIFELONG_* variables from the caller's shell."""
    for name in list(os.environ):
        if name.startswith("LIFELONG_"):
            monkeypatch.delenv(name)


@pytest.fixture
def setup(broker, unique, make_config, tmp_path) -> Callable[..., Setup]:  # type: ignore[no-untyped-def]
    """Make a :class:`Setup`: fresh topics on the session's broker and a config for them."""
    return lambda name, **sections: Setup(broker, unique, make_config, tmp_path, name, **sections)
