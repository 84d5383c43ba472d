"""Where a ``TCPStore()`` built from the environment finds its store server.

``kvsync.TCPStore()`` with no address calls :func:`resolve_store_address` with the
environment snapshot. The rules, first match wins:

1. ``KVSYNC_STORE_ADDR`` and ``KVSYNC_STORE_PORT`` are set (``kvsync-run`` sets them): a
   launcher hosts the store there; every rank is a client.
2. ``TORCHELASTIC_USE_AGENT_STORE`` is true (``torchrun``): torch's agent store, a torch
   store server in the launcher process, listens on ``MASTER_ADDR``:``MASTER_PORT``. Every
   rank is a client of it, speaking torch's protocol (:mod:`kvsync.store.dialect`), as
   torch's own ranks do: no rank hosts anything, so ranks may exit in any order.
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

from typing import NamedTuple

from kvsync import defaults, env

__all__ = ["StoreAddress", "resolve_store_address"]


class StoreAddress(NamedTuple):
    """Where to reach (or host) the store.

    Attributes:
        host: address to dial (or to bind, when ``is_master``).
        port: port to dial or bind; ``0`` means "bind a free port".
        is_master: whether this process hosts the store server.
        listen_fd: an already listening socket the master must serve on, to pass on as
            ``TCPStore(master_listen_fd=...)``; ``None`` otherwise.
    """

    host: str
    port: int
    is_master: bool
    listen_fd: int | None = None


def resolve_store_address(environment: env.Environment) -> StoreAddress:
    """Apply the module's rules to an environment snapshot.

    Args:
        environment: usually ``kvsync.env.read()``.

    Raises:
        ValueError: ``TORCHELASTIC_USE_AGENT_STORE`` is set without ``MASTER_ADDR`` or
            ``MASTER_PORT``.

    Example:
        >>> from kvsync import env
        >>> resolve_store_address(env.read({"TORCHELASTIC_USE_AGENT_STORE": "True",
        ...     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "0"}))
        StoreAddress(host='127.0.0.1', port=29500, is_master=False, listen_fd=None)
    """
    e = environment
    if e.store_addr is not None and e.store_port is not None:
        return StoreAddress(e.store_addr, e.store_port, False)
    if e.use_agent_store:
        if e.master_addr is None or e.master_port is None:
            raise ValueError(
                f"{env.TORCHELASTIC_USE_AGENT_STORE} is set but {env.MASTER_ADDR} or "
                f"{env.MASTER_PORT} is missing: not started by torchrun?"
            )
        return StoreAddress(e.master_addr, e.master_port, False)
    if e.master_addr is not None and e.master_port is not None:
        return StoreAddress(e.master_addr, e.master_port, e.rank in (None, 0))
    return StoreAddress(defaults.DEFAULT_HOST, 0, True)
