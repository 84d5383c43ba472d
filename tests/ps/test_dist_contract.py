"""The KVStore contract suite (tests/kv/test_kv_contract.py) run against dist_sync and
dist_async: one worker on a parameter server in this process, over real sockets."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvsync.client import Client
from kvsync.kv.base import KVStoreBase
from kvsync.kv.dist import DistKVStore
from kvsync.launcher.ps_server import make_logic
from kvsync.server import StoreServer

_CONTRACT = Path(__file__).resolve().parents[1] / "kv" / "test_kv_contract.py"
#: contract tests that do not apply to dist types, and why
_NOT_FOR_DIST = {
    # dist stores never ship code to the servers: a Python updater function cannot run
    # there (set_optimizer or a server-registered updater instead; tested in this dir)
    "test_updater_receives_key_merged_and_stored_and_updates_in_place",
}

_spec = importlib.util.spec_from_file_location("kv_contract_for_dist", _CONTRACT)
assert _spec is not None and _spec.loader is not None
_contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_contract)
globals().update({name: getattr(_contract, name) for name in dir(_contract)
                  if name.startswith("test_") and name not in _NOT_FOR_DIST})


@pytest.fixture(params=["dist_sync", "dist_async"])
def kvstore(request: pytest.FixtureRequest) -> Iterator[KVStoreBase]:
    """A one-worker dist store and its server, both closed afterwards."""
    with StoreServer(logic=make_logic(0)).start() as server:
        store = DistKVStore(request.param, rank=0, num_workers=1, timeout=20,
                            links=[Client("127.0.0.1", server.port, timeout=20)])
        try:
            yield store
        finally:
            store.close()
