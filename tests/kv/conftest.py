"""Fixtures for the KVStore tests: ``kvstore`` runs a contract test on every store type.

Other store types (the dist types) add a factory to ``KVSTORE_FACTORIES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kvsync import kv
from kvsync.kv.base import KVStoreBase

#: (id, factory) pairs; a factory returns a fresh store and a cleanup callable.
KVSTORE_FACTORIES: list[tuple[str, Callable[[], KVStoreBase]]] = [
    ("local", lambda: kv.create("local")),
    ("device", lambda: kv.create("device")),
]


@pytest.fixture(params=[f for _, f in KVSTORE_FACTORIES], ids=[i for i, _ in KVSTORE_FACTORIES])
def kvstore(request: pytest.FixtureRequest) -> Iterator[KVStoreBase]:
    """A fresh store of each registered test type."""
    store = request.param()
    try:
        yield store
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
