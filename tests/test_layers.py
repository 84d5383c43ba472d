"""The layers of DESIGN.md point down: what importing each layer loads, and what it imports.

Each layer is imported in a fresh interpreter, and the test lists what must not be in
``sys.modules`` afterwards: that catches an upward import however indirect (``kv`` ->
``protocol`` -> ``server`` would pass a check of direct imports). A static pass over the
sources adds what a fresh import cannot see: imports inside functions, and import cycles.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvsync

SRC = Path(kvsync.__file__).parent

#: the user-facing entry points at the top of DESIGN.md's diagram
TOP = ("kvsync.cli", "kvsync.bench", "kvsync.launcher", "kvsync.testing")
#: the KVStore layer (numpy semantics)
KV = ("kvsync.kv", "kvsync.optimizer", "kvsync.sparse")
#: what does network I/O (``socket`` imports ``selectors`` and ``select`` itself)
NETWORK = ("socket", "selectors", "select", "ssl", "asyncio")

#: (what a fresh interpreter runs, modules that must not be loaded afterwards). A name
#: forbids itself and its submodules.
CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "errors, env, defaults": (
        "import kvsync.errors, kvsync.env, kvsync.defaults",
        (
            "numpy",
            "kvsync.protocol",
            "kvsync.server",
            "kvsync.client",
            "kvsync.store",
            *KV,
            *TOP,
            *NETWORK,
        ),
    ),
    "protocol": (
        "import kvsync.protocol, kvsync.protocol.wire_keys, kvsync.protocol.handshake",
        ("kvsync.server", "kvsync.client", "kvsync.store", *KV, *TOP, *NETWORK, "subprocess"),
    ),
    "server": (
        "import kvsync.server, kvsync.server.state, kvsync.server.ps",
        ("kvsync.client", "kvsync.store", *KV, *TOP),
    ),
    "client": (
        "import kvsync.client",
        ("kvsync.server", "kvsync.store", *KV, *TOP),
    ),
    "store": (
        "import kvsync.store, kvsync.store.tcp, kvsync.store.sync",
        (*KV, *TOP, "kvsync.server.ps", "numpy"),
    ),
    "torch flavour": (
        "import kvsync.compat.torch",
        (*KV, *TOP, "kvsync.server.ps"),
    ),
    "kv": (
        "import kvsync.kv, kvsync.kv.sharding, kvsync.kv.comm, kvsync.kv.compression",
        ("kvsync.server", "kvsync.client", "kvsync.store", *TOP, *NETWORK),
    ),
    "optimizer and sparse": (
        "import kvsync.optimizer, kvsync.sparse",
        ("kvsync.kv", "kvsync.server", "kvsync.client", "kvsync.store", *TOP, *NETWORK),
    ),
    "dist KVStore": (
        "import kvsync.kv.dist",
        ("kvsync.server.ps", *TOP),
    ),
    "the kvsync command line": (
        "import kvsync.cli; kvsync.cli.build_parser().parse_args(['inspect', '--port', '1'])",
        ("kvsync.bench", "kvsync.launcher", *KV),
    ),
    "kvsync.TCPStore": (
        "import kvsync; kvsync.TCPStore",
        (*KV, *TOP, "kvsync.server.ps", "numpy"),
    ),
}


def loaded_after(code: str) -> list[str]:
    """``sys.modules`` of a fresh interpreter (no site hooks of ours) after ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    modules: list[str] = json.loads(out.stdout.splitlines()[-1])
    return modules


@pytest.mark.timeout(40)
@pytest.mark.parametrize("layer", sorted(CASES))
def test_importing_a_layer_loads_nothing_from_above_it(layer: str) -> None:
    code, forbidden = CASES[layer]
    loaded = set(loaded_after(code))
    if "numpy" not in forbidden:  # what numpy itself loads is not ours to forbid
        loaded -= numpy_own_imports()
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not bad, f"{code!r} loads {bad}"


@pytest.mark.timeout(40)
def test_a_store_client_loads_no_numpy_no_server_and_no_torch_codec() -> None:
    loaded = set(loaded_after("import kvsync; kvsync.TCPStore"))
    unwanted = {
        "numpy",  # until an array travels
        "kvsync.server.loop",  # the server's event loop: a master loads it to host one
        "kvsync.server.host",
        "kvsync.client.torch",  # torch's protocol: a store that speaks it loads it
        "kvsync.protocol.torch_wire",
        "kvsync.server.state",  # the in-process HashStore's request logic
    }
    assert not loaded & unwanted, sorted(loaded & unwanted)


@functools.cache
def numpy_own_imports() -> frozenset[str]:
    """What ``import numpy`` loads by itself in a fresh interpreter (on Python 3.10 numpy 2.2
    loads ``platform`` -> ``subprocess`` -> ``selectors``, which no layer of ours asked for)."""
    return frozenset(loaded_after("import numpy"))


@pytest.mark.timeout(40)
def test_a_dist_type_is_found_on_its_first_create_without_importing_dist() -> None:
    code = (
        "import kvsync.kv\n"
        "from kvsync.errors import InvalidArgumentError\n"
        "assert 'dist_sync' in kvsync.kv.KVStoreBase.known_names()\n"
        "try:\n"
        "    kvsync.kv.create('dist_sync')\n"
        "except InvalidArgumentError as exc:\n"
        "    assert 'DMLC_NUM_SERVER' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('created a dist store with no servers')"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "DMLC_NUM_SERVER")
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    subprocess.run([sys.executable, "-c", code], env=env, timeout=30, check=True)


# --- static: direct imports (also those inside functions) and cycles -------------------------

#: package -> packages none of its modules may import, even inside a function
DIRECT_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "protocol": (
        "kvsync.server",
        "kvsync.client",
        "kvsync.store",
        *KV,
        *TOP,
        *NETWORK,
        "threading",
    ),
    "server": ("kvsync.client", "kvsync.store", *KV, *TOP),
    "client": ("kvsync.server", "kvsync.store", *KV, *TOP),
    "store": (*KV, *TOP),
    "kv": ("kvsync.server", *TOP, *NETWORK, "pickle"),
    "optimizer": (
        "kvsync.kv",
        "kvsync.server",
        "kvsync.client",
        "kvsync.store",
        *TOP,
        *NETWORK,
        "pickle",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Modules ``path`` imports, anywhere but under ``if TYPE_CHECKING``; ``from p import m``
    counts as importing ``p.m`` when that is a module of ``modules``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            names |= subs
            if len(subs) < len(node.names):
                names.add(node.module)
    return names


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


@pytest.mark.parametrize("package", sorted(DIRECT_FORBIDDEN))
def test_no_module_of_a_layer_imports_from_above_it_even_inside_a_function(package: str) -> None:
    forbidden = DIRECT_FORBIDDEN[package]
    offenders = [
        f"{name}: {imported}"
        for name, path in sorted(MODULES.items())
        if name.startswith(f"kvsync.{package}")
        for imported in sorted(imports_of(path, set(MODULES)))
        if any(imported == f or imported.startswith(f + ".") for f in forbidden)
    ]
    assert not offenders, offenders


def test_there_are_no_import_cycles_between_modules() -> None:
    graph = {name: imports_of(path, set(MODULES)) & set(MODULES) for name, path in MODULES.items()}
    # a module importing its own package's __init__ for a sibling name is not a cycle
    graph = {m: {t for t in deps if not m.startswith(t + ".")} for m, deps in graph.items()}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
