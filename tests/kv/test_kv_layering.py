"""The kv layer stays socket-free and imports only downward (STYLE habit 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import kvsync

_SRC = Path(kvsync.__file__).parent
#: socket-level modules, pickle, and the layers above kv (DESIGN.md)
_FORBIDDEN = {
    "socket",
    "selectors",
    "pickle",
    "kvsync.cli",
    "kvsync.bench",
    "kvsync.launcher",
    "kvsync.testing",
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_kv_modules_import_no_socket_no_pickle_and_no_upper_layer() -> None:
    files = [*sorted((_SRC / "kv").glob("*.py")), _SRC / "sparse.py"]
    assert len(files) >= 7
    for path in files:
        bad = {
            m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in _FORBIDDEN)
        }
        assert not bad, f"{path.name} imports {sorted(bad)}"
