"""Imports point one way: daemon wires everything; connectors, memory and registry stay independent."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lifelong"

# subpackage -> subpackages it must never import
FORBIDDEN = {
    "connectors": {"daemon", "learners", "memory", "registry"},
    "memory": {"daemon", "learners", "connectors", "registry"},
    "registry": {"daemon", "learners", "connectors", "memory"},
    "learners": {"daemon", "connectors", "registry"},
}
# third-party modules a subpackage must never import
FORBIDDEN_LIBRARIES = {
    "connectors": {"torch", "avalanche", "faiss", "prometheus_client", "apscheduler"},
    "learners": {"kafka", "prometheus_client", "apscheduler"},
    "memory": {"kafka", "prometheus_client", "apscheduler", "torch", "avalanche"},
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_imports_point_one_way(room: str) -> None:
    files = sorted((PACKAGE / room).rglob("*.py"))
    assert files, f"lifelong/{room} has no modules"
    for path in files:
        for name in imported(path):
            parts = name.split(".")
            if parts[0] == "lifelong" and len(parts) > 1:
                assert parts[1] not in FORBIDDEN[room], f"{path.name} imports {name}"
            assert parts[0] not in FORBIDDEN_LIBRARIES.get(room, set()), f"{path.name} imports {name}"
