"""``TCPStore``: the Store API over a socket to a kvsync store server.

The master process hosts a :class:`~kvsync.server.StoreServer` on a background thread (or,
with ``server="process"``, in a child process: :mod:`kvsync.server.host`) and talks to it
through a normal client connection like every other rank, so all ranks share one code
path. A master store that is dropped without ``close()``, or still open when its process
exits, keeps the server up for the clients of other processes until they disconnect, at
most ``KVSYNC_STORE_EXIT_GRACE`` seconds (an exit hook closes this process's stores and
waits for their servers).

Where the address comes from when none is given (first match wins):

1. ``KVSYNC_STORE_ADDR``/``KVSYNC_STORE_PORT`` (``kvsync-run`` hosts the store there):
   every rank is a client.
2. ``TORCHELASTIC_USE_AGENT_STORE`` (torchrun): every rank is a client of torch's agent
   store on ``MASTER_ADDR``:``MASTER_PORT``, in torch's protocol
   (:mod:`kvsync.store.address`, which applies all four rules).
3. ``MASTER_ADDR``/``MASTER_PORT``: rank 0 (or a process without ``RANK``) hosts.
4. Nothing: an embedded single-process store on a free loopback port.

A client speaks kvsync's protocol or torch's (a torch store server, such as torchrun's agent
store): :mod:`kvsync.store.dialect` decides, from ``dialect=``, ``KVSYNC_STORE_DIALECT`` or
whether the address is torchrun's agent store.

Joining: when ``world_size`` is given (as ``WORLD_SIZE`` is under a launcher), every
non-master adds 1 to the reserved counter :data:`JOINED_KEY`, and with ``wait_for_workers``
the master waits until ``world_size - 1`` clients have joined (the last one sets
:data:`JOINED_DONE_KEY`, which the master ``wait``\\ s on). Clients of a store without a
fixed ``world_size`` leave no keys behind.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from kvsync import defaults, env, log
from kvsync.client import Client
from kvsync.errors import StoreTimeoutError
from kvsync.progress import interval as progress_interval
from kvsync.protocol import messages as m
from kvsync.store.address import resolve_store_address
from kvsync.store.base import Store, Timeout, to_seconds
from kvsync.store.dialect import choose_dialect, open_client

if TYPE_CHECKING:  # the server layer is imported by a master only (import time)
    from kvsync.server.host import ChildHost, ThreadHost

__all__ = ["JOINED_DONE_KEY", "JOINED_KEY", "TCPStore"]

logger = logging.getLogger(__name__)

#: Reserved counter of clients that joined the store.
JOINED_KEY = "__kvsync/joined"
#: Set once ``world_size - 1`` clients joined.
JOINED_DONE_KEY = "__kvsync/joined/done"
_JOIN_POLL = 0.25  # seconds between counter checks when clients do not know world_size

_registry_lock = threading.Lock()
#: (host, port) -> [server, reference count] for ``multi_tenant`` stores.
_registry: dict[tuple[str, int], list[Any]] = {}
#: Every open TCPStore of this process, closed (servers drained) at exit.
_open_stores: weakref.WeakSet[TCPStore] = weakref.WeakSet()
_exit_hook_pid: int | None = None  # the process whose exit hook is registered
_EXIT_SLACK = 5.0  # seconds the exit hook waits for draining servers beyond their grace


def _acquire_server(
    host: str, port: int, listen_fd: int | None, multi: bool, e: env.Environment, placement: str
) -> ThreadHost | ChildHost:
    with _registry_lock:
        entry = _registry.get((host, port)) if multi and port else None
        if entry is not None:
            entry[1] += 1
            shared: ThreadHost | ChildHost = entry[0]
            return shared
        from kvsync.server.host import host_server  # (a client never loads the server)

        grace = defaults.STORE_EXIT_GRACE_SECONDS
        if e.store_exit_grace is not None:
            grace = e.store_exit_grace
        server = host_server(host, port, placement=placement, grace=grace,
                             listen_fd=listen_fd, secret=e.secret)  # fmt: skip
        if multi:
            _registry[(host, server.port)] = [server, 1]
        _register_exit_hook()
        return server


def _release_server(server: ThreadHost | ChildHost, multi: bool, leave: bool = False) -> None:
    with _registry_lock:
        key = (server.host, server.port)
        entry = _registry.get(key)
        if multi and entry is not None and entry[0] is server:
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _registry[key]
    if leave:
        server.leave()
    else:
        server.close()


def _register_exit_hook() -> None:
    global _exit_hook_pid
    if _exit_hook_pid != os.getpid():  # once per process (a fork registers its own)
        _exit_hook_pid = os.getpid()
        atexit.register(_close_at_exit)


def _close_at_exit() -> None:
    """At interpreter exit: close every store's connection first (this process's own
    clients do not hold a server up), then leave each hosted server to its clients and
    wait for them (see :mod:`kvsync.server.host`)."""
    if _exit_hook_pid != os.getpid():
        return
    from kvsync.server.host import join_leaving  # (loaded: the hook comes with a server)

    stores = list(_open_stores)
    for store in stores:
        store._close_connection()
    grace = 0.0
    for store in stores:
        if store._server is not None:
            grace = max(grace, store._server.grace)
        store._leave()
    join_leaving(grace + _EXIT_SLACK)


def _from_environment(
    e: env.Environment, host: str | None, port: int | None, is_master: bool
) -> tuple[str, int, bool, int | None]:
    """(host, port, is_master, listen_fd) following the module's rules."""
    if host is not None or port is not None:
        host = host if host is not None else (e.master_addr or defaults.DEFAULT_HOST)
        if port is None:
            if e.master_port is None:
                raise ValueError(f"TCPStore({host!r}) needs a port (or MASTER_PORT set)")
            port = e.master_port
        return host, port, is_master, None
    a = resolve_store_address(e)
    return a.host, a.port, bool(a.is_master or is_master), a.listen_fd


class TCPStore(Store):
    """A store shared by every rank of a job, served over TCP.

    Args:
        host_name: the master's address (numeric or name). ``None`` with ``port`` ``None``:
            from the environment (see the module docstring).
        port: the master's port; ``0`` with ``is_master`` binds a free port (see
            :attr:`port`).
        world_size: number of store users (clients + the master); ``None``: not fixed.
        is_master: host the server in this process.
        timeout: seconds or ``timedelta``: connect retries, joining and every operation.
        wait_for_workers: the master waits until ``world_size - 1`` clients joined.
        multi_tenant: stores of this process on the same host:port share one server.
        master_listen_fd: an already bound socket's fd for the master's server to use.
        use_libuv: accepted for compatibility with PyTorch; has no effect.
        server: where a master's server runs: ``"thread"`` (a thread of this process) or
            ``"process"`` (a child process that serves the socket bound here: its event
            loop does not wait for this process's GIL, at about half a second more to
            construct). ``None``: ``KVSYNC_STORE_SERVER``, else ``"thread"``.
        dialect: (keyword) the protocol a client speaks, ``"kvsync"`` or ``"torch"`` (a
            torch store server); default from ``KVSYNC_STORE_DIALECT``, else ``"torch"``
            for torchrun's agent store, else ``"kvsync"`` (:mod:`kvsync.store.dialect`).

    ``MS_RECEIVE_MSG_TIMEOUT`` (seconds), when set, is the reply timeout of each request
    (requests that wait on the server get at least their own timeout); the timeout error
    then says to raise it. ``KVSYNC_SECRET`` enables the HMAC handshake.

    Raises:
        StoreConnectionError: the address cannot be resolved or bound (names host:port),
            or a child-process server did not start.
        ValueError: an unknown ``server``.
        StoreTimeoutError: the master was not reachable, or (master) not every client
            joined in time ("k/n clients joined").

    Example:
        >>> with TCPStore("127.0.0.1", 0, is_master=True, timeout=10) as store:
        ...     store.set("first_key", "first_value")
        ...     store.get("first_key"), store.port > 0
        (b'first_value', True)
    """

    def __init__(
        self,
        host_name: str | None = None,
        port: int | None = None,
        world_size: int | None = None,
        is_master: bool = False,
        timeout: Timeout = defaults.DEFAULT_TIMEOUT,
        wait_for_workers: bool = True,
        multi_tenant: bool = False,
        master_listen_fd: int | None = None,
        use_libuv: bool = True,
        server: str | None = None,
        *,
        dialect: str | None = None,
    ) -> None:
        super().__init__(timeout)
        if server is not None and server not in env.STORE_SERVER_CHOICES:
            raise ValueError(f"server must be one of {env.STORE_SERVER_CHOICES}, got {server!r}")
        e = env.read()
        log.configure_from_environment()  # KVSYNC_LOG_LEVEL from a launcher: once per process
        from_env = host_name is None and port is None
        if from_env and world_size is None:
            world_size = e.world_size
        if world_size is not None and (not isinstance(world_size, int) or world_size < 1):
            raise ValueError(f"world_size must be a positive int or None, got {world_size!r}")
        host, port, is_master, fd = _from_environment(e, host_name, port, bool(is_master))
        wanted = choose_dialect(dialect, e, host, port, is_master=is_master)
        listen_fd = master_listen_fd if master_listen_fd is not None else fd
        self._world_size, self._is_master, self._multi = world_size, is_master, multi_tenant
        self._recv_timeout = e.receive_timeout
        self._server: ThreadHost | ChildHost | None = None
        if is_master:
            placement = server or e.store_server or defaults.STORE_SERVER
            self._server = _acquire_server(host, port, listen_fd, multi_tenant, e, placement)
            port = self._server.port
        _open_stores.add(self)
        self._host, self._port = host, port
        hint = ""
        if self._recv_timeout is not None:
            hint = (
                f" ({env.MS_RECEIVE_MSG_TIMEOUT}={self._recv_timeout:g} s sets this reply"
                f" timeout; raise it if the server needs longer)"
            )
        dial = defaults.DEFAULT_HOST if host in ("", "0.0.0.0", "::") else host
        try:
            self._client = open_client(dial, port, wanted, timeout=self._timeout,
                                       secret=e.secret, timeout_hint=hint)  # fmt: skip
            self._server_barrier = isinstance(self._client, Client)
            if self._recv_timeout is None:  # nothing to adjust: requests go straight out
                self._call = self._client.call  # type: ignore[method-assign]
            if self._blocking_get and self._server_barrier:  # torch's semantics: set does
                # not wait for the server (a get, which waits for its key, cannot miss it)
                self._post = self._client.post  # type: ignore[method-assign,union-attr]
            if e.rank is not None and isinstance(self._client, Client):  # kvsync's server:
                # so that ``kvsync inspect waiters`` and a barrier's progress lines can name
                # the rank (torch's protocol cannot); posted: only a refusal is answered,
                # raised by the next request
                self._rank = e.rank
                self._client.post(m.Identify(e.rank))
            self._join(wait_for_workers)
        except BaseException:
            self.close()
            raise

    def _join(self, wait_for_workers: bool) -> None:
        n = None if self._world_size is None else self._world_size - 1
        if not self._is_master:
            if n is None:
                return
            joined = self.add(JOINED_KEY, 1)
            if n is not None and joined == n:
                self.set(JOINED_DONE_KEY, b"1")
            return
        if not wait_for_workers or not n:
            return
        start = time.monotonic()
        deadline = start + self._timeout
        every = progress_interval()
        next_log = start + every
        for _ in range(1_000_000):
            joined = self.add(JOINED_KEY, 0)
            now = time.monotonic()
            remaining = deadline - now
            if joined >= n:
                return
            if every > 0 and now >= next_log:
                next_log = now + every
                logger.info(
                    "store at %s:%d: %d/%d clients joined after %.0f s (timeout %g s)",
                    self._host,
                    self._port,
                    joined,
                    n,
                    now - start,
                    self._timeout,
                )
            if remaining <= 0:
                raise StoreTimeoutError(
                    f"{joined}/{n} clients joined the store at {self._host}:{self._port}"
                    f" within {self._timeout:g} s (world_size={self._world_size})"
                )
            try:
                self.wait([JOINED_DONE_KEY], timeout=min(remaining, _JOIN_POLL))
            except StoreTimeoutError:
                continue

    # --- Store --------------------------------------------------------------------------

    def _call(self, msg: object, timeout: float) -> object:
        if self._recv_timeout is not None:
            parked = getattr(msg, "timeout_ms", None)
            timeout = self._recv_timeout if parked is None else max(timeout, self._recv_timeout)
        return self._client.call(msg, timeout)

    @property
    def host(self) -> str:
        """The server's address as given (or from the environment)."""
        return self._host

    @property
    def port(self) -> int:
        """The server's port (the bound one when created with ``port=0``)."""
        return self._port

    @property
    def world_size(self) -> int | None:
        """The ``world_size`` given (or from ``WORLD_SIZE``); ``None`` if not fixed."""
        return self._world_size

    @property
    def dialect(self) -> str:
        """The protocol this store speaks to its server: ``"kvsync"`` or ``"torch"``."""
        return "kvsync" if isinstance(self._client, Client) else "torch"

    @property
    def is_master(self) -> bool:
        """Whether this store hosts the server."""
        return self._is_master

    def set_timeout(self, timeout: Timeout) -> None:
        """Change the default timeout (seconds or ``timedelta``) of every operation."""
        super().set_timeout(timeout)
        self._client.timeout = to_seconds(timeout)

    @property
    def server_placement(self) -> str | None:
        """Where this master's server runs, ``"thread"`` or ``"process"``; ``None`` on a
        client (or once closed)."""
        return None if self._server is None else self._server.placement

    def _close_connection(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()

    def _release(self, leave: bool = False) -> None:
        server, self._server = getattr(self, "_server", None), None
        if server is not None:
            _release_server(server, self._multi, leave)

    def close(self) -> None:
        """Close the connection and, on the master, stop the server (once its last tenant
        closes) at once. Idempotent. (A master store dropped without ``close()``, or open
        when its process exits, serves other processes' clients for a grace period.)"""
        if not self._closed:
            self._close_connection()
            self._release()
            _open_stores.discard(self)
        super().close()

    def _leave(self) -> None:
        """Close like :meth:`close`, but leave the server to its connected clients."""
        if not self._closed:
            self._close_connection()
            self._release(leave=True)
            _open_stores.discard(self)
        super().close()

    def __del__(self) -> None:  # an unclosed store releases its connection and server
        with contextlib.suppress(Exception):
            self._leave()

    def _repr_fields(self) -> str:
        return (
            f"host={self._host!r}, port={self._port}, world_size={self._world_size},"
            f" is_master={self._is_master}, "
        )
