"""The job's store as one launcher sees it: hosted (node rank 0) or dialled (other nodes).

Node rank 0's launcher runs a :class:`kvsync.server.StoreServer` in a thread for the
whole job, so the store outlives any crashing rank; it binds ``--master-addr``, the
address every node dials (or an address given for node 0, e.g. behind NAT).
In a job of several nodes every launcher also holds a client of that store, joins (each
node counts itself in :data:`JOINED_KEY` and publishes its address under
:data:`NODE_KEY`, then waits for the others, saying every few seconds how many have
joined) and coordinates through keys (:class:`StoreCoordinator`): per worker group, a
counter of nodes whose workers all succeeded (node 0 keeps the store, and every node its
servers, until it reaches ``--nnodes``); a failure message (a node that fails writes it;
the others stop their children when they see it, or when the store itself is gone); and,
with ``--max-restarts``, a restart request per group (the first node whose worker fails
writes why; every node sees it, stops its workers and marks them stopped under the
group's key; each starts the new group once all nodes have, so no worker of the old group
is still connected to the parameter servers when the new one connects).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from types import TracebackType

from kvsync import defaults, env
from kvsync.errors import StoreTimeoutError
from kvsync.launcher.coordinator import Coordinator, LocalCoordinator
from kvsync.server import ServerSettings, StoreServer
from kvsync.store.base import Store
from kvsync.store.tcp import TCPStore

__all__ = [
    "DONE_KEY",
    "FAILURE_KEY",
    "JOINED_KEY",
    "MAX_RESTARTS_KEY",
    "NODE_KEY",
    "RESTART_KEY",
    "STOPPED_KEY",
    "JobStore",
    "StoreCoordinator",
]

_log = logging.getLogger(__name__)

#: Counter of nodes whose workers of group ``{}`` (the restart count) all exited with code 0.
DONE_KEY = "kvsync/run/nodes_done/{}"
#: Set by the first node that fails the job: which node and why.
FAILURE_KEY = "kvsync/run/failure"
#: Counter of nodes whose launcher joined the job.
JOINED_KEY = "kvsync/run/nodes_joined"
#: Node ``r``'s address (``--node-addr``), set when it joins.
NODE_KEY = "kvsync/run/node/{}"
#: ``--max-restarts`` of the first node that joined; every node must give the same.
MAX_RESTARTS_KEY = "kvsync/run/max_restarts"
#: Why worker group ``{}`` was started (the first request wins).
RESTART_KEY = "kvsync/run/restart/{}"
#: Set by node ``{1}`` once its workers of the group before group ``{0}`` have exited.
STOPPED_KEY = "kvsync/run/restart/{}/stopped/{}"
#: Seconds a launcher's store operation (not the first connection) may take.
_OP_TIMEOUT = 10.0
#: Seconds between two looks at the join counter.
_JOIN_POLL = 0.1


class StoreCoordinator:
    """A :class:`~kvsync.launcher.agent.Coordinator` over the job store's two keys.

    Args:
        store: a client of the job store.
        nnodes: launchers in the job.
        node_rank: this launcher's node rank (names it in the failure message).
        interval: least seconds between two looks at the store.
    """

    def __init__(self, store: Store, nnodes: int, node_rank: int, interval: float = 0.2):
        self._store = store
        self._nnodes = nnodes
        self._node_rank = node_rank
        self._interval = interval
        self._next_look = 0.0
        self._next_restart_look = 0.0
        self._reported_done = False
        self._restarts: dict[int, str] = {}

    def workers_done(self, restart: int) -> None:
        """Count this node as done with group ``restart``."""
        try:
            self._store.add(DONE_KEY.format(restart), 1)
        except ConnectionError as exc:
            _log.debug("could not count this node done: %s", exc)
        self._reported_done = True

    def job_done(self, restart: int) -> bool:
        """Whether every node counted itself done with group ``restart``.

        Once this node is done, losing the store means node 0 saw the count complete and
        closed it, so that counts as done too.
        """
        try:
            return self._store.add(DONE_KEY.format(restart), 0) >= self._nnodes
        except ConnectionError:
            return self._reported_done

    def request_restart(self, restart: int, reason: str) -> None:
        """Write why group ``restart`` starts, unless another node already did."""
        if restart in self._restarts:
            return
        try:
            current = self._store.compare_set(
                RESTART_KEY.format(restart), "", f"node {self._node_rank}: {reason}"
            )
        except (ConnectionError, TimeoutError) as exc:  # remote_failure() will say so
            _log.debug("could not request restart %d: %s", restart, exc)
            return
        self._restarts[restart] = current.decode(errors="replace")

    def restart_requested(self, restart: int) -> str | None:
        """The request for group ``restart`` (this node's or another's); throttled."""
        if restart in self._restarts:
            return self._restarts[restart]
        now = time.monotonic()
        if now < self._next_restart_look:
            return None
        self._next_restart_look = now + self._interval
        key = RESTART_KEY.format(restart)
        try:
            if not self._store.check([key]):
                return None
            self._restarts[restart] = self._store.get(key).decode(errors="replace")
        except (ConnectionError, TimeoutError):  # remote_failure() will say so
            return None
        return self._restarts[restart]

    def workers_stopped(self, restart: int) -> None:
        """Mark this node's workers of the group before ``restart`` as exited."""
        self._reported_done = False  # the new group has to succeed again
        try:
            self._store.set(STOPPED_KEY.format(restart, self._node_rank), "1")
        except (ConnectionError, TimeoutError) as exc:  # remote_failure() will say so
            _log.debug("could not mark the workers stopped for restart %d: %s", restart, exc)

    def not_stopped(self, restart: int) -> list[int]:
        """The nodes that have not marked their workers before group ``restart`` exited."""
        try:
            return [
                r
                for r in range(self._nnodes)
                if not self._store.check([STOPPED_KEY.format(restart, r)])
            ]
        except (ConnectionError, TimeoutError):  # remote_failure() will say so
            return list(range(self._nnodes))

    def remote_failure(self) -> str | None:
        """The failure another node wrote, or the loss of the store; throttled."""
        now = time.monotonic()
        if now < self._next_look:
            return None
        self._next_look = now + self._interval
        try:
            if self._store.check([FAILURE_KEY]):
                return "job stopped by " + self._store.get(FAILURE_KEY).decode(errors="replace")
        except (ConnectionError, TimeoutError) as exc:
            return None if self._reported_done else f"lost the job store: {exc}"
        return None

    def report_failure(self, message: str) -> None:
        """Write ``message`` for the other nodes (best effort: the store may be gone)."""
        try:
            self._store.compare_set(FAILURE_KEY, "", f"node {self._node_rank}: {message}")
        except (ConnectionError, TimeoutError) as exc:
            _log.debug("could not report the failure to the job store: %s", exc)


class JobStore:
    """The job store of one launcher; use :meth:`open`, then as a context manager."""

    def __init__(
        self, args: argparse.Namespace, server: StoreServer | None, client: Store | None
    ) -> None:
        self._args = args
        self._server = server
        self._client = client
        self.port: int = server.port if server is not None else args.master_port

    @classmethod
    def open(
        cls,
        args: argparse.Namespace,
        environment: env.Environment,
        say: Callable[[str], None] = _log.info,
        *,
        bind: str | None = None,
        join_timeout: float = defaults.NODE_JOIN_TIMEOUT_SECONDS,
        notice: float = defaults.NODE_WAIT_NOTICE_SECONDS,
    ) -> JobStore:
        """Host the store (node rank 0, on ``bind``, default ``--master-addr``) and, for
        several nodes, connect a client to it and wait until every node joined; ``say``
        gets a progress line every ``notice`` seconds of waiting.

        Raises:
            OSError: the address cannot be bound, or the store cannot be reached.
            StoreTimeoutError: the store or some node was not there within ``join_timeout``.
        """
        server = None
        if args.node_rank == 0:
            server = StoreServer(
                bind or args.master_addr,
                args.master_port,
                secret=environment.secret,
                settings=ServerSettings.from_environment(environment),
            ).start()
            say(f"store server listening on {server.host}:{server.port} (node 0 of {args.nnodes})")
        client = None
        try:
            if args.nnodes > 1:
                deadline = time.monotonic() + join_timeout
                port = server.port if server is not None else args.master_port
                client = _dial(args.master_addr, port, deadline, notice, say)
                client.set_timeout(_OP_TIMEOUT)
                _join(client, args, deadline, notice, say)
        except BaseException:
            if client is not None:
                client.close()
            if server is not None:
                server.close()
            raise
        return cls(args, server, client)

    def coordinator(self) -> Coordinator:
        """How the supervisor learns about the other nodes."""
        if self._client is None:
            return LocalCoordinator()
        return StoreCoordinator(self._client, self._args.nnodes, self._args.node_rank)

    def close(self) -> None:
        """Close the client and stop the hosted server."""
        if self._client is not None:
            self._client.close()
        if self._server is not None:
            self._server.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _dial(
    host: str, port: int, deadline: float, notice: float, say: Callable[[str], None]
) -> TCPStore:
    """A client of node 0's store, saying every ``notice`` seconds that it is waiting."""
    start = time.monotonic()
    for _ in range(1 << 20):  # bounded by the deadline
        remaining = deadline - time.monotonic()
        try:
            return TCPStore(
                host,
                port,
                is_master=False,
                wait_for_workers=False,
                timeout=max(0.001, min(notice, remaining)),
            )
        except StoreTimeoutError as exc:
            if time.monotonic() >= deadline:
                raise StoreTimeoutError(
                    f"node 0's job store at {host}:{port} did not answer within "
                    f"{deadline - start:.0f} s: {exc}"
                ) from exc
            say(
                f"waiting for the job store at {host}:{port} (node 0's launcher) for "
                f"{time.monotonic() - start:.0f} s"
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _join(
    store: Store,
    args: argparse.Namespace,
    deadline: float,
    notice: float,
    say: Callable[[str], None],
) -> None:
    """Count this node in and wait until all ``--nnodes`` did, saying how many have.

    Raises:
        ValueError: this node's ``--max-restarts`` differs from the first node's.
    """
    mine = str(args.max_restarts)
    agreed = store.compare_set(MAX_RESTARTS_KEY, "", mine).decode(errors="replace")
    if agreed != mine:
        raise ValueError(
            f"node {args.node_rank} has --max-restarts {mine} but another node of the job "
            f"has {agreed}: every node needs the same --max-restarts"
        )
    store.set(NODE_KEY.format(args.node_rank), args.node_addr or "")
    joined = store.add(JOINED_KEY, 1)
    start = next_notice = time.monotonic()
    next_notice += notice
    for _ in range(1 << 40):  # bounded by the deadline
        if joined >= args.nnodes:
            say(f"all {args.nnodes} nodes joined; this is node {args.node_rank}")
            return
        now = time.monotonic()
        if now >= deadline or now >= next_notice:
            missing = [r for r in range(args.nnodes) if not store.check(NODE_KEY.format(r))]
            status = (
                f"{joined} of {args.nnodes} nodes joined after {now - start:.0f} s; "
                f"waiting for node rank(s) {', '.join(map(str, missing))}"
            )
            if now >= deadline:
                raise StoreTimeoutError(f"{status}: giving up")
            say(status)
            next_notice = now + notice
        time.sleep(_JOIN_POLL)
        joined = store.add(JOINED_KEY, 0)
