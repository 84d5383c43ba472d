"""pytest plugin of kvsync: fixtures for a running store server and for N localhost ranks.

Loaded by the ``pytest11`` entry point when kvsync is installed, or explicitly with
``-p kvsync.testing.plugin`` (or ``pytest_plugins = ["kvsync.testing.plugin"]`` in a
root ``conftest.py``).

Fixtures:
    ``kvsync_store_server``: a :class:`~kvsync.server.StoreServer` listening on a free
    127.0.0.1 port, closed after the test.
    ``kvsync_store``: a :class:`~kvsync.store.tcp.TCPStore` client of that server.
    ``kvsync_world_size``: how many ranks ``kvsync_ranks`` runs by default (2; override
    the fixture, or parametrize it: ``@pytest.mark.parametrize("kvsync_world_size", [2, 4])``).
    ``kvsync_ranks``: ``kvsync_ranks(fn, world_size=None, *, mode="process", timeout=30)``
    runs :func:`~kvsync.testing.spawn_ranks` and returns the results in rank order.

Example (a test module)::

    def test_every_rank_sees_the_counter(kvsync_ranks):
        def count(rank, world_size, address):
            with kvsync.TCPStore(*address, world_size=world_size) as store:
                store.add("n", 1)
                store.barrier("b", world_size)
                return int(store.get("n"))
        assert kvsync_ranks(count, mode="thread") == [2, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from kvsync.server import StoreServer
    from kvsync.store.tcp import TCPStore
    from kvsync.testing.spawn import RankFunction

# Strategy: the entry point loads this module into every pytest run of an environment
# with kvsync installed, so it imports nothing of kvsync at start-up; each fixture imports
# what it needs when a test uses it (tests/testing/test_plugin_import.py checks this).

__all__ = ["kvsync_ranks", "kvsync_store", "kvsync_store_server", "kvsync_world_size"]

#: Signature of the ``kvsync_ranks`` fixture's value.
RankRunner = Callable[..., list[Any]]


@pytest.fixture
def kvsync_store_server() -> Iterator[StoreServer]:
    """A store server on a free 127.0.0.1 port for the duration of one test."""
    from kvsync import defaults
    from kvsync.server import StoreServer

    server = StoreServer(defaults.DEFAULT_HOST, 0).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def kvsync_store(kvsync_store_server: StoreServer) -> Iterator[TCPStore]:
    """A client of ``kvsync_store_server`` with a 30-second timeout."""
    from kvsync.store.tcp import TCPStore

    store = TCPStore(kvsync_store_server.host, kvsync_store_server.port, timeout=30)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def kvsync_world_size() -> int:
    """Default number of ranks for ``kvsync_ranks``; override or parametrize it."""
    return 2


@pytest.fixture
def kvsync_ranks(kvsync_world_size: int) -> RankRunner:
    """A function running ``fn(rank, world_size, store_address)`` on N localhost ranks."""

    def run(
        fn: RankFunction,
        world_size: int | None = None,
        *,
        mode: Literal["process", "thread"] = "process",
        timeout: float = 30.0,
    ) -> list[Any]:
        from kvsync.testing.spawn import spawn_ranks

        size = kvsync_world_size if world_size is None else world_size
        return spawn_ranks(fn, size, mode=mode, timeout=timeout)

    return run
