"""Fixtures of the Store contract suite: one entry per Store implementation.

Each :class:`Flavour` names an implementation, how to open it, and whether its ``get`` blocks
(PyTorch flavour) or returns ``b""`` for a missing key (reference flavour). Opening a flavour
is a context manager yielding ``connect()``: every call gives a client Store on the SAME data
(for TCP stores a new connection to one server; for HashStore the same object), and leaving
the context releases everything. Adding an implementation is one line in ``FLAVOURS``, e.g.::

    Flavour("tcp", served(_tcp), blocking_get=False),

Tests ask for ``any_store`` (a store of each flavour), ``connect`` (more clients of the same
data) or ``flavour``; ``@pytest.mark.blocking_get_only`` / ``nonblocking_get_only`` pick the
flavour-specific specs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from kvsync.store import HashStore, PrefixStore, Store

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
    #: The server is torch's (kvsync's client speaking torch's protocol).
    torch_server: bool = False
    #: The longest key the server accepts, in bytes (as its error message names it).
    key_cap: int = 4096


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
        from kvsync.server import StoreServer

        with StoreServer(host="127.0.0.1", port=0).start() as server:
            yield lambda: make_client(server.host, server.port, timeout)

    return open_


def prefixed(inner: Opener, prefix: str = "pfx") -> Opener:
    """The same flavour seen through a PrefixStore."""

    @contextlib.contextmanager
    def open_(timeout: float) -> Iterator[Connect]:
        underlying: list[Store] = []  # a PrefixStore does not close the store it wraps

        def connect_prefixed() -> Store:
            underlying.append(connect())
            return PrefixStore(prefix, underlying[-1])

        with inner(timeout) as connect:
            try:
                yield connect_prefixed
            finally:
                for store in underlying:
                    store.close()

    return open_


def torch_served(make_client: Callable[[str, int, float], Store]) -> Opener:
    """An opener that starts torch's own store server (``torch.distributed.TCPStore``, the
    libuv backend) on a free loopback port; skips the test when torch is not installed."""

    @contextlib.contextmanager
    def open_(timeout: float) -> Iterator[Connect]:
        import datetime

        dist = pytest.importorskip("torch.distributed")
        server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                               timeout=datetime.timedelta(seconds=timeout))  # fmt: skip
        port = server.port
        try:
            yield lambda: make_client("127.0.0.1", port, timeout)
        finally:
            del server  # torch's server stops with its last reference

    return open_


class TorchFlavourHashStore(HashStore):
    """HashStore with PyTorch's blocking ``get``: runs the blocking-get specs in process."""

    _blocking_get = True


def _tcp(host: str, port: int, timeout: float) -> Store:
    from kvsync.store.tcp import TCPStore

    return TCPStore(host, port, timeout=timeout)


def _tcp_master(timeout: float) -> Store:
    from kvsync.store.tcp import TCPStore

    return TCPStore("127.0.0.1", 0, is_master=True, timeout=timeout)


def _torch_compat(host: str, port: int, timeout: float) -> Store:
    from kvsync.compat.torch import TCPStore

    return TCPStore(host, port, timeout=timeout)


def _torch_dialect(host: str, port: int, timeout: float) -> Store:
    from kvsync.store.tcp import TCPStore

    return TCPStore(host, port, timeout=timeout, dialect="torch")


def _torch_dialect_compat(host: str, port: int, timeout: float) -> Store:
    from kvsync.compat.torch import TCPStore

    return TCPStore(host, port, timeout=timeout, dialect="torch")


FLAVOURS: list[Flavour] = [
    Flavour("hash", in_process(lambda t: HashStore(timeout=t)), blocking_get=False),
    Flavour("prefix-hash", prefixed(in_process(lambda t: HashStore(timeout=t))), False),
    Flavour("hash-torch", in_process(lambda t: TorchFlavourHashStore(timeout=t)), True),
    Flavour("tcp", served(_tcp), blocking_get=False),
    Flavour("prefix-tcp", prefixed(served(_tcp)), blocking_get=False),
    Flavour("compat-torch", served(_torch_compat), blocking_get=True),
    # added by transport: the master store itself (its server runs in this process)
    Flavour("tcp-master", in_process(_tcp_master), blocking_get=False),
    # kvsync's client of torch's own server (dialect="torch")
    Flavour("torch-server", torch_served(_torch_dialect), False, torch_server=True, key_cap=8191),
    Flavour(
        "prefix-torch-server",
        prefixed(torch_served(_torch_dialect)),
        False,
        torch_server=True,
        key_cap=8191,
    ),
    Flavour(
        "compat-torch-server",
        torch_served(_torch_dialect_compat),
        True,
        torch_server=True,
        key_cap=8191,
    ),
]


@pytest.fixture(params=FLAVOURS, ids=[f.id for f in FLAVOURS])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    f: Flavour = request.param
    if request.node.get_closest_marker("blocking_get_only") and not f.blocking_get:
        pytest.skip(f"{f.id}: get of a missing key does not block in this flavour")
    if request.node.get_closest_marker("nonblocking_get_only") and f.blocking_get:
        pytest.skip(f"{f.id}: get of a missing key blocks in this flavour")
    only = request.node.get_closest_marker("kvsync_server_only")
    if only and f.torch_server:
        pytest.skip(f"{f.id}: torch's server differs here: {only.args[0]}")
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
    config.addinivalue_line(
        "markers", "kvsync_server_only(reason): a kvsync-server behaviour torch's server lacks"
    )
