"""The program one process-mode rank of :func:`kvsync.testing.spawn_ranks` runs.

``python -m kvsync.testing MODULE QUALNAME FILE RANK WORLD_SIZE HOST PORT RESULT``
imports ``MODULE`` (from ``FILE`` when it is not importable by name, and never as
``__main__``, so a script's main guard does not run again), calls
``QUALNAME(rank, world_size, StoreAddress(host, port))``, and writes the encoded return
value, or the exception's type, message and traceback, as JSON to the ``RESULT`` file.
Exit code 0 on success, 1 when the function raised an ``Exception`` (``SystemExit`` and
``KeyboardInterrupt`` end the process without a result).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from kvsync.testing.results import encode

__all__ = ["MAIN_ALIAS", "StoreAddress", "load_function", "main"]


class StoreAddress(NamedTuple):
    """Where a rank finds its job's store: ``TCPStore(*address, ...)`` dials it."""

    host: str
    port: int

#: The name a script's ``__main__`` module is loaded under in a rank process.
MAIN_ALIAS = "__kvsync_main__"


def load_function(module_name: str, qualname: str, file: str) -> Callable[..., Any]:
    """Find ``qualname`` in ``module_name`` (loaded from ``file`` if need be).

    Raises:
        ImportError: the module can be neither imported nor loaded from ``file``.
        AttributeError: the module has no such function.

    Example:
        >>> load_function("os.path", "join", "")("a", "b")
        'a/b'
    """
    module = _load_module(module_name, file)
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{module_name}:{qualname} is not callable")
    return target  # type: ignore[no-any-return]


def _load_module(module_name: str, file: str) -> ModuleType:
    if module_name != "__main__":
        try:
            return importlib.import_module(module_name)
        except ImportError:
            if not file:
                raise
    name = MAIN_ALIAS if module_name == "__main__" else module_name
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load module {module_name!r} from {file!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str]) -> int:
    """Run one rank; returns the process exit code."""
    module_name, qualname, file, rank, world_size, host, port, result = argv
    out = Path(result)
    try:
        fn = load_function(module_name, qualname, file)
        value = fn(int(rank), int(world_size), StoreAddress(host, int(port)))
        out.write_text(json.dumps({"ok": encode(value)}))
    except Exception as exc:
        out.write_text(json.dumps({"error": {
            "type": type(exc).__qualname__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }}))
        return 1
    return 0

