"""The kv layer stays socket-free and imports only downward (STYLE habit 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import kvsync

_SRC = Path(kvsync.__file__).parent
_FORBIDDEN = {"socket", "selectors", "pickle", "kvsync.server", "kvsync.client", "kvsync.store"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_kv_and_sparse_modules_import_no_socket_pickle_or_upper_layers() -> None:
    files = [*sorted((_SRC / "kv").glob("*.py")), _SRC / "sparse.py"]
    assert len(files) >= 7
    for path in files:
        if path.name == "dist.py":  # the distributed store talks to servers by design
            continue
        bad = {m for m in _imports(path) if m.split(".")[0] in _FORBIDDEN or m in _FORBIDDEN}
        bad |= {m for m in _imports(path) if any(m.startswith(f + ".") for f in _FORBIDDEN)}
        assert not bad, f"{path.name} imports {sorted(bad)}"
