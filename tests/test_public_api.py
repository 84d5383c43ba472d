"""Every public name of kvsync is documented, and the layers of DESIGN.md hold."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import kvsync

SRC = Path(kvsync.__file__).parent
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages([str(SRC)], prefix="kvsync.")
    if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_has_a_docstring_and_an_explicit_all(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__ and module.__doc__.strip(), f"{name} has no module docstring"
    assert hasattr(module, "__all__"), f"{name} has no __all__"


@pytest.mark.parametrize("name", MODULES)
def test_every_public_class_and_function_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    missing = [
        public
        for public in getattr(module, "__all__", [])
        if (inspect.isclass(obj := getattr(module, public)) or inspect.isfunction(obj))
        and not (obj.__doc__ or "").strip()
    ]
    assert not missing, f"{name}: undocumented public names {missing}"


# Layer -> packages it must not import (DESIGN.md: dependencies point down only).
FORBIDDEN = {
    "protocol": ("kvsync.server", "kvsync.client", "kvsync.store", "kvsync.kv", "kvsync.cli"),
    "server": ("kvsync.client", "kvsync.store", "kvsync.launcher", "kvsync.cli"),
    "client": ("kvsync.server", "kvsync.store", "kvsync.kv", "kvsync.launcher"),
    "optimizer": ("kvsync.server", "kvsync.client", "kvsync.store", "kvsync.launcher"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer: str) -> None:
    offenders = []
    for path in (SRC / layer).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN[layer])
            ]
    assert not offenders, offenders
