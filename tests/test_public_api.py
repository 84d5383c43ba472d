"""Every public name of kvsync is documented (the layers are checked in test_layers.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
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


def _is_class(obj: object) -> bool:
    # On Python 3.10 inspect.isclass() is also true of a generic alias such as
    # ``Callable[[int], bytes]`` (a type alias, documented by a comment, not a class).
    return inspect.isclass(obj) and not isinstance(obj, types.GenericAlias)


def test_a_generic_alias_is_not_taken_for_a_class() -> None:
    from collections.abc import Callable

    assert not _is_class(Callable[[int], bytes]) and not _is_class(list[int])
    assert _is_class(int) and _is_class(kvsync.TCPStore)


@pytest.mark.parametrize("name", MODULES)
def test_every_public_class_and_function_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    missing = [
        public
        for public in getattr(module, "__all__", [])
        if (_is_class(obj := getattr(module, public)) or inspect.isfunction(obj))
        and not (obj.__doc__ or "").strip()
    ]
    assert not missing, f"{name}: undocumented public names {missing}"
