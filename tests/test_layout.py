"""Imports point one way: daemon wires everything; the rooms stay independent; no cycles anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lifelong"

# subpackage -> subpackages it must never import
FORBIDDEN = {
    "connectors": {"daemon", "demo", "http", "learning", "learners", "memory", "registry"},
    "memory": {"daemon", "demo", "http", "learning", "learners", "connectors", "registry"},
    "registry": {"daemon", "demo", "http", "learning", "learners", "connectors", "memory"},
    "learners": {"daemon", "demo", "http", "learning", "connectors", "registry"},
    "monitor": {"daemon", "http", "learning", "learners", "connectors", "memory", "registry", "demo"},
    "http": {"daemon", "demo", "learning", "learners", "connectors", "memory", "registry", "monitor"},
    "learning": {"daemon", "demo", "http"},
}
# third-party modules a subpackage must never import
FORBIDDEN_LIBRARIES = {
    "connectors": {"torch", "avalanche", "faiss", "prometheus_client", "apscheduler"},
    "learners": {"kafka", "prometheus_client", "apscheduler"},
    "memory": {"kafka", "prometheus_client", "apscheduler", "torch", "avalanche"},
    "monitor": {"kafka", "torch", "avalanche", "faiss", "apscheduler"},
    "http": {"kafka", "torch", "avalanche", "faiss", "apscheduler"},
    "learning": {"kafka", "apscheduler"},
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


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (anywhere in it, lazily too)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from lifelong.memory import layout`` imports the module lifelong.memory.layout
                wanted = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for target in wanted:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != "lifelong":
                    targets.add(target)
        graph[name] = targets
    return graph


def test_the_layout_covers_every_room_and_top_level_module() -> None:
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == {*FORBIDDEN, *APPLICATIONS}, "a new room needs its rules in FORBIDDEN"
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == set(TOP_LEVEL), "a new top-level module needs its rules in TOP_LEVEL"


# top-level module -> rooms it must never import
ROOMS = {"daemon", "demo", "http", "learning", "learners", "memory", "registry", "connectors", "monitor"}
TOP_LEVEL = {
    "config": ROOMS,
    "errors": ROOMS,
    "events": ROOMS,
    "files": ROOMS,
    "labeled": ROOMS,
    "benchmarks": {"daemon", "demo", "http", "learning", "memory", "registry", "connectors"},
    "serving": {"daemon", "demo", "http", "learning", "memory"},
}


@pytest.mark.parametrize("module", sorted(TOP_LEVEL))
def test_top_level_modules_import_only_what_they_stand_on(module: str) -> None:
    for name in imported(PACKAGE / f"{module}.py"):
        parts = name.split(".")
        if parts[0] == "lifelong" and len(parts) > 1:
            assert parts[1] not in TOP_LEVEL[module], f"{module}.py imports {name}"


# The rooms that apply everything else: the daemon wires it, the demo runs a daemon (the daemon's
# CLI starts the demo). Nothing else imports them.
APPLICATIONS = {"daemon": set(), "demo": {"daemon"}}


@pytest.mark.parametrize("room", sorted(APPLICATIONS))
def test_nothing_but_an_application_imports_one(room: str) -> None:
    prefix = f"lifelong.{room}"
    allowed = {prefix} | {f"lifelong.{other}" for other, uses in APPLICATIONS.items() if room in uses}
    if room == "demo":
        allowed.add("lifelong.daemon.cli")  # `lifelong demo`
    offenders = {
        module: sorted(t for t in targets if t.startswith(prefix))
        for module, targets in import_graph().items()
        if not any(module == a or module.startswith(f"{a}.") for a in allowed)
    }
    assert not {m: ts for m, ts in offenders.items() if ts}


def test_no_import_cycles() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
