"""Names of a package imported on first use (PEP 562), written once for every package.

A package lists its public names and the modules they come from; :func:`lazy_names` gives
its ``__getattr__`` and ``__dir__``. ``import package`` then loads none of those modules,
and the first ``package.Name`` (or ``from package import Name``) imports one and keeps the
name in the package, so later lookups are plain attribute reads.

Example:
    >>> getattr_, dir_ = lazy_names("pkg", {"dumps": "json"}, namespace := {})
    >>> getattr_("dumps") is __import__("json").dumps, "dumps" in namespace
    (True, True)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose module globals are ``namespace``:
    each name of ``names`` (name -> module) is imported from its module on first use.

    Raises:
        AttributeError: (from ``__getattr__``) a name that is not in ``names``.
    """

    def getattr_(name: str) -> Any:
        where = names.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(names))

    return getattr_, dir_
