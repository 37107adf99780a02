"""The examples in the package's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import lifelong


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(lifelong.__path__, prefix="lifelong."):
        spec = importlib.util.find_spec(info.name)
        origin = spec.origin if spec else None
        if origin and origin.endswith(".py") and ">>>" in Path(origin).read_text(encoding="utf-8"):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_some_modules_carry_examples() -> None:
    assert "lifelong.memory.index" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


@pytest.mark.parametrize("name", ["lifelong", "lifelong.registry", "lifelong.events"])
def test_public_names_exist_and_are_documented(name: str) -> None:
    module = importlib.import_module(name)
    public = module.__all__
    assert len(set(public)) == len(public), f"{name}.__all__ repeats a name"
    for attribute in public:
        value = getattr(module, attribute)  # AttributeError: __all__ names something that is gone
        if callable(value):
            assert value.__doc__, f"{name}.{attribute} has no docstring"
