"""Where a ``TCPStore()`` built from the environment finds kvsync's store server.

``kvsync.TCPStore()`` with no address calls :func:`resolve_store_address` with the
environment snapshot. The rules, first match wins:

1. ``KVSYNC_STORE_ADDR`` and ``KVSYNC_STORE_PORT`` are set (``kvsync-run`` sets them): a
   launcher hosts the store there; every rank is a client.
2. ``TORCHELASTIC_USE_AGENT_STORE`` is true (``torchrun``): ``MASTER_PORT`` is taken by
   torch's own agent store, which speaks torch's protocol, so kvsync must not use it. Rank 0
   opens a listening socket on a free port of its node's address (loopback when
   ``MASTER_ADDR`` is a loopback address, else ``KVSYNC_NODE_ADDR`` or this host's
   address on the route to ``MASTER_ADDR``, which other hosts can dial, no DNS), becomes
   the master on it, and publishes that ``host:port`` in torch's agent store under
   ``kvsync/store/<restart>/<n>``; the other ranks read it from there (waiting up to the
   timeout). ``<restart>`` is ``TORCHELASTIC_RESTART_COUNT`` so a restarted job never
   reads a stale address, and ``<n>`` counts the stores each process built this way, so
   the k-th ``TCPStore()`` of every rank meets the k-th of rank 0 (SPMD scripts build
   them in the same order).
   This needs torch, which ``torchrun`` implies. As with torch's own ``TCPStore``, the
   store lives in rank 0's process: rank 0 must close it last (for instance by waiting for
   a key each other rank sets when it is done). Under ``kvsync-run`` the launcher hosts
   it, so no rank is special.
3. ``MASTER_ADDR`` and ``MASTER_PORT`` are set (torch's ``env://`` convention): rank 0 (or
   a process without ``RANK``) hosts the store there, the others are clients.
4. Nothing is set: one process alone; host an embedded store on a free loopback port.

Example:
    >>> from kvsync import env
    >>> resolve_store_address(env.read({"KVSYNC_STORE_ADDR": "10.0.0.1",
    ...                                 "KVSYNC_STORE_PORT": "7000", "RANK": "0"}))
    StoreAddress(host='10.0.0.1', port=7000, is_master=False, listen_fd=None)
    >>> resolve_store_address(env.read({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
    ...                                 "RANK": "1"})).is_master
    False
    >>> resolve_store_address(env.read({}))
    StoreAddress(host='127.0.0.1', port=0, is_master=True, listen_fd=None)
"""

from __future__ import annotations

import datetime
import importlib
import itertools
import logging
import socket
import threading
from typing import Any, NamedTuple

from kvsync import defaults, env
from kvsync.client.connect import is_loopback, local_address_to
from kvsync.errors import StoreConnectionError, StoreTimeoutError

__all__ = ["KEY_PREFIX", "StoreAddress", "agent_store_key", "resolve_store_address"]

_log = logging.getLogger(__name__)

#: Keys kvsync writes in torch's agent store start with this.
KEY_PREFIX = "kvsync/store"

#: How many stores this process resolved through each agent store, per rank.
_counters: dict[tuple[str, int, int, int], itertools.count[int]] = {}
_counter_lock = threading.Lock()


class StoreAddress(NamedTuple):
    """Where to reach (or host) the store.

    Attributes:
        host: address to dial (or to bind, when ``is_master``).
        port: port to dial or bind; ``0`` means "bind a free port".
        is_master: whether this process hosts the store server.
        listen_fd: an already listening socket the master must serve on (torchrun's rank 0),
            to pass on as ``TCPStore(master_listen_fd=...)``; ``None`` otherwise.
    """

    host: str
    port: int
    is_master: bool
    listen_fd: int | None = None


def agent_store_key(restart_count: int, n: int) -> str:
    """The key under which rank 0 publishes its ``n``-th store address in torch's store.

    Example:
        >>> agent_store_key(0, 1)
        'kvsync/store/0/1'
    """
    return f"{KEY_PREFIX}/{restart_count}/{n}"


def resolve_store_address(
    environment: env.Environment, *, timeout: float = defaults.DEFAULT_TIMEOUT
) -> StoreAddress:
    """Apply the module's rules to an environment snapshot.

    Args:
        environment: usually ``kvsync.env.read()``.
        timeout: seconds a torchrun rank waits for rank 0's published address.

    Raises:
        StoreTimeoutError: under torchrun, rank 0 did not publish its address in time.
        StoreConnectionError: under torchrun, torch's agent store could not be reached or
            torch is not importable.
        ValueError: ``TORCHELASTIC_USE_AGENT_STORE`` is set without ``MASTER_ADDR``,
            ``MASTER_PORT`` or ``RANK``.

    Example:
        >>> from kvsync import env
        >>> resolve_store_address(env.read({"MASTER_ADDR": "h", "MASTER_PORT": "1"}))
        StoreAddress(host='h', port=1, is_master=True, listen_fd=None)
    """
    e = environment
    if e.store_addr is not None and e.store_port is not None:
        return StoreAddress(e.store_addr, e.store_port, False)
    if e.use_agent_store:
        return _through_agent_store(e, timeout)
    if e.master_addr is not None and e.master_port is not None:
        return StoreAddress(e.master_addr, e.master_port, e.rank in (None, 0))
    return StoreAddress(defaults.DEFAULT_HOST, 0, True)


def _through_agent_store(e: env.Environment, timeout: float) -> StoreAddress:
    if e.master_addr is None or e.master_port is None or e.rank is None:
        raise ValueError(
            f"{env.TORCHELASTIC_USE_AGENT_STORE} is set but {env.MASTER_ADDR}, "
            f"{env.MASTER_PORT} or {env.RANK} is missing: not started by torchrun?"
        )
    restart = e.restart_count or 0
    with _counter_lock:
        counter = _counters.setdefault((e.master_addr, e.master_port, restart, e.rank),
                                       itertools.count())
        n = next(counter)
    key = agent_store_key(restart, n)
    agent = _agent_store(e.master_addr, e.master_port, timeout)
    if e.rank == 0:
        if is_loopback(e.master_addr):
            host = defaults.DEFAULT_HOST
        else:
            host = e.node_addr or local_address_to(e.master_addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, 0), family=family, backlog=defaults.LISTEN_BACKLOG)
        port = sock.getsockname()[1]
        agent.set(key, f"{host}:{port}")
        _log.debug("published kvsync store %s:%d under %r", host, port, key)
        return StoreAddress(host, port, True, sock.detach())
    try:
        raw = agent.get(key)
    except Exception as exc:  # torch raises its own DistStoreError / RuntimeError types
        raise StoreTimeoutError(
            f"waited {timeout:g} s for rank 0 to publish kvsync's store address under "
            f"{key!r} in torch's agent store at {e.master_addr}:{e.master_port}: {exc}"
        ) from exc
    host, _, port_text = bytes(raw).decode().rpartition(":")
    return StoreAddress(host, int(port_text), False)


def _agent_store(host: str, port: int, timeout: float) -> Any:
    try:
        dist: Any = importlib.import_module("torch.distributed")
    except ImportError as exc:
        raise StoreConnectionError(
            f"{env.TORCHELASTIC_USE_AGENT_STORE} is set but torch is not importable, so "
            f"torch's agent store at {host}:{port} cannot be read: {exc}"
        ) from exc
    try:
        return dist.TCPStore(
            host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout),
            wait_for_workers=False,
        )
    except Exception as exc:  # torch raises RuntimeError / DistNetworkError
        raise StoreConnectionError(
            f"cannot reach torch's agent store at {host}:{port}: {exc}"
        ) from exc
