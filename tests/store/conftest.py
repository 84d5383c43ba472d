"""Fixtures of the Store contract suite: one entry per Store implementation.

Each :class:`Flavour` names an implementation, how to open it, and whether its ``get`` blocks
(PyTorch flavour) or returns ``b""`` for a missing key (reference flavour). Opening a flavour
is a context manager yielding ``connect()``: every call gives a client Store on the SAME data
(for TCP stores a new connection to one server; for HashStore the same object), and leaving
the context releases everything. Adding an implementation is one line in ``FLAVOURS``, e.g.::

    Flavour("tcp", served(lambda host, port, timeout: kvsync.TCPStore(host, port,
            timeout=timeout)), blocking_get=False),

Tests ask for ``any_store`` (a store of each flavour), ``connect`` (more clients of the same
data) or ``flavour``; ``@pytest.mark.blocking_get_only`` / ``nonblocking_get_only`` pick the
flavour-specific specs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kvsync.compat.torch import TCPStore as TorchTCPStore
from kvsync.store import HashStore, PrefixStore, Store
from kvsync.store.tcp import TCPStore

#: How long contract tests let any operation take by default (seconds).
TEST_TIMEOUT = 10.0

Connect = Callable[[], Store]
Opener = Callable[[float], contextlib.AbstractContextManager[Connect]]


@dataclass(frozen=True)
class Flavour:
    """One Store implementation under test."""

    id: str
    open: Opener
    blocking_get: bool


@contextlib.contextmanager
def _shared(store: Store) -> Iterator[Connect]:
    try:
        yield lambda: store
    finally:
        store.close()


def in_process(make: Callable[[float], Store]) -> Opener:
    """An opener for a store living in this process (every client is the same object)."""
    return lambda timeout: _shared(make(timeout))


def served(make_client: Callable[[str, int, float], Store]) -> Opener:
    """An opener that starts a ``kvsync.server.StoreServer`` on a free loopback port and
    connects clients with ``make_client(host, port, timeout)``."""

    @contextlib.contextmanager
    def open_(timeout: float) -> Iterator[Connect]:
        from kvsync.server import StoreServer  # type: ignore[attr-defined]

        with StoreServer(host="127.0.0.1", port=0).start() as server:
            yield lambda: make_client(server.host, server.port, timeout)

    return open_


def prefixed(inner: Opener, prefix: str = "pfx") -> Opener:
    """The same flavour seen through a PrefixStore."""

    @contextlib.contextmanager
    def open_(timeout: float) -> Iterator[Connect]:
        with inner(timeout) as connect:
            yield lambda: PrefixStore(prefix, connect())

    return open_


class TorchFlavourHashStore(HashStore):
    """HashStore with PyTorch's blocking ``get``: runs the blocking-get specs in process."""

    _blocking_get = True


@contextlib.contextmanager
def _prefixed_tcp(timeout: float) -> Iterator[Connect]:
    """PrefixStores over TCPStore clients; closes the clients (a PrefixStore does not)."""
    inner: list[Store] = []

    def make(host: str, port: int, t: float) -> Store:
        inner.append(TCPStore(host, port, timeout=t))
        return inner[-1]

    try:
        with prefixed(served(make))(timeout) as connect:
            yield connect
    finally:
        for store in inner:
            store.close()


FLAVOURS: list[Flavour] = [
    Flavour("hash", in_process(lambda t: HashStore(timeout=t)), blocking_get=False),
    Flavour("prefix-hash", prefixed(in_process(lambda t: HashStore(timeout=t))), False),
    Flavour("hash-torch", in_process(lambda t: TorchFlavourHashStore(timeout=t)), True),
    # TCPStore (added by transport): clients of a StoreServer, the master itself, the torch
    # flavour and a PrefixStore over TCP.
    Flavour("tcp", served(lambda host, port, t: TCPStore(host, port, timeout=t)), False),
    Flavour(
        "tcp-master",
        in_process(lambda t: TCPStore("127.0.0.1", 0, is_master=True, timeout=t)),
        blocking_get=False,
    ),
    Flavour("tcp-torch", served(lambda host, port, t: TorchTCPStore(host, port, timeout=t)), True),
    Flavour("prefix-tcp", _prefixed_tcp, blocking_get=False),
]


@pytest.fixture(params=FLAVOURS, ids=[f.id for f in FLAVOURS])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    f: Flavour = request.param
    if request.node.get_closest_marker("blocking_get_only") and not f.blocking_get:
        pytest.skip(f"{f.id}: get of a missing key does not block in this flavour")
    if request.node.get_closest_marker("nonblocking_get_only") and f.blocking_get:
        pytest.skip(f"{f.id}: get of a missing key blocks in this flavour")
    return f


@pytest.fixture
def connect(flavour: Flavour) -> Iterator[Connect]:
    """``connect()`` -> a new client Store on one fresh store of the flavour."""
    clients: list[Store] = []
    with flavour.open(TEST_TIMEOUT) as raw_connect:

        def connect() -> Store:
            clients.append(raw_connect())
            return clients[-1]

        yield connect
        for c in clients:
            c.close()


@pytest.fixture
def any_store(connect: Connect) -> Store:
    """A fresh, empty store of each flavour."""
    return connect()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "blocking_get_only: needs a flavour whose get blocks")
    config.addinivalue_line("markers", "nonblocking_get_only: needs get of missing -> b''")
