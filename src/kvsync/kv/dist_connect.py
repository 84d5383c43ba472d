"""How a worker finds the parameter servers of its job and connects to them.

Servers register ``host:port`` in the job's store (``MASTER_ADDR``:``MASTER_PORT``, the
store ``kvsync-run`` hosts) under :data:`SERVER_KEY` ``.format(i)``, and the identity of
their host (:func:`kvsync.kv.shm.host_id`) under :data:`SERVER_HOST_KEY`, ``i`` taken
from an ``add`` on :data:`SERVER_COUNT_KEY`. A worker reads its rank and the job's worker
count from ``RANK``/``WORLD_SIZE`` (or ``DMLC_NUM_WORKER``), the server count from
``DMLC_NUM_SERVER``, waits until that many servers have registered, and opens one
pipelined :class:`~kvsync.client.Client` per server (:func:`connect`, which
:class:`~kvsync.kv.dist.DistKVStore` calls; this module knows nothing of the KVStore),
logging each failed attempt (a
server on another host that registered an address this host cannot reach is named, with
what it registered, when the timeout ends). Big slices move through shared memory with
the servers whose host identity is this worker's own (``KVSYNC_PS_SHM=0`` turns it off),
whatever address they registered; servers on other hosts get them over the socket.

Example:
    >>> SERVER_KEY.format(0)
    'kvsync/ps/server/0'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from kvsync import defaults, env
from kvsync.client import Client
from kvsync.client.connect import is_loopback
from kvsync.errors import InvalidArgumentError, StoreConnectionError, StoreTimeoutError
from kvsync.kv import dmlc
from kvsync.kv.shm import host_id
from kvsync.store.tcp import TCPStore

__all__ = [
    "SERVER_COUNT_KEY",
    "SERVER_HOST_KEY",
    "SERVER_KEY",
    "RegisteredServer",
    "ServerLinks",
    "connect",
    "job_store",
    "server_addresses",
]

#: Store key under which server ``i`` publishes ``host:port``.
SERVER_KEY = "kvsync/ps/server/{}"
#: Store key under which server ``i`` publishes its host identity (who may share memory).
SERVER_HOST_KEY = "kvsync/ps/host/{}"
#: Store counter from which each server takes its index.
SERVER_COUNT_KEY = "kvsync/ps/servers"


def job_store(e: env.Environment, timeout: float) -> TCPStore:
    """A client of the job's store, from ``MASTER_ADDR``/``MASTER_PORT``.

    Raises:
        InvalidArgumentError: the variables are not set (not started by a launcher).
    """
    address = dmlc.store_address(e)
    if address is None:
        raise InvalidArgumentError(
            "a dist KVStore needs the job's store in MASTER_ADDR and MASTER_PORT (or MXNet's "
            "DMLC_PS_ROOT_URI and DMLC_PS_ROOT_PORT): start the job with kvsync-run "
            "--num-servers N, or set them (and RANK, WORLD_SIZE, DMLC_NUM_SERVER) by hand")
    return TCPStore(*address, is_master=False, timeout=timeout, wait_for_workers=False)


@dataclass(frozen=True)
class RegisteredServer:
    """What parameter server ``index`` registered in the job's store.

    Example:
        >>> RegisteredServer(0, "10.0.0.2", 4000, "h/b/net-1").describe()
        "parameter server 0 (registered '10.0.0.2:4000' from host 'h/b/net-1')"
    """

    index: int
    host: str
    port: int
    host_id: str

    def describe(self) -> str:
        """How messages name the server and what it registered."""
        return (f"parameter server {self.index} (registered '{self.host}:{self.port}' "
                f"from host {self.host_id!r})")


def server_addresses(store: TCPStore, num_servers: int,
                     timeout: float) -> list[RegisteredServer]:
    """Wait until ``num_servers`` servers registered; what each registered, by index.

    Raises:
        StoreTimeoutError: fewer servers registered within ``timeout`` seconds.
        StoreConnectionError: a registered address is not ``host:port``.
    """
    keys = [SERVER_KEY.format(i) for i in range(num_servers)]
    host_keys = [SERVER_HOST_KEY.format(i) for i in range(num_servers)]
    store.wait(keys, timeout)  # each server sets its host key first
    values = store.multi_get(keys + host_keys)
    out = []
    for i, (key, raw) in enumerate(zip(keys, values[:num_servers], strict=True)):
        host, _, port = bytes(raw).decode().rpartition(":")
        if not host or not port.isdigit():
            raise StoreConnectionError(f"server address {raw!r} under {key!r} is not host:port")
        out.append(RegisteredServer(i, host, int(port), bytes(values[num_servers + i]).decode()))
    return out


def _dial(server: RegisteredServer, timeout: float, secret: str | None) -> Client:
    """A link to ``server``; each failed attempt logged, the server named on failure."""
    try:
        return Client(
            server.host,
            server.port,
            timeout=timeout,
            secret=secret,
            retry_log_level=logging.WARNING,
            peer_name="parameter server",
        )
    except (StoreTimeoutError, StoreConnectionError) as exc:
        hint = ""
        if is_loopback(server.host) and server.host_id != host_id():
            hint = ("; it runs on another host but registered a loopback address: give its "
                    f"launcher --node-addr (or {env.KVSYNC_NODE_ADDR}) an address this host "
                    "reaches")
        raise type(exc)(f"cannot reach {server.describe()}: tried {server.host}:{server.port} "
                        f"for {timeout:g} s ({exc}){hint}") from exc


@dataclass(frozen=True)
class ServerLinks:
    """What a worker learnt from its environment and one open link per server.

    Attributes:
        rank: this worker's rank; num_workers: the job's worker count.
        links: one pipelined client per server, in server index order (the caller closes
            them).
        bound: arrays with more elements are split over all servers.
        shm: per server, whether it runs on this worker's host and shared memory is on.
        report_to: MXNet's launch model (a worker without RANK): the store to count this
            worker done in when its process exits (see :mod:`kvsync.kv.dmlc`).
    """

    rank: int
    num_workers: int
    links: list[Client]
    bound: int
    shm: list[bool]
    report_to: tuple[str, int] | None = None

    def close(self) -> None:
        """Close every link."""
        for link in self.links:
            link.close()


def connect(*, environ: Mapping[str, str] | None = None,
            timeout: float = defaults.DEFAULT_TIMEOUT) -> ServerLinks:
    """Find this worker's servers from the environment and open a link to each.

    Raises:
        InvalidArgumentError: rank, worker count or server count missing from the
            environment. StoreTimeoutError: the servers did not register in time.
    """
    e = env.read(environ)
    if e.dmlc_role in dmlc.SERVING_ROLES:
        dmlc.run_role(e, timeout)  # MXNet's launch model: serve the role, then exit
    num_workers = e.world_size or e.dmlc_num_worker
    dmlc_worker = e.rank is None and e.dmlc_role == "worker"
    if (e.rank is None and not dmlc_worker) or not num_workers or not e.dmlc_num_server:
        raise InvalidArgumentError(
            f"a dist KVStore needs RANK, WORLD_SIZE and DMLC_NUM_SERVER >= 1 in the environment "
            f"(got RANK={e.rank}, WORLD_SIZE={num_workers}, DMLC_NUM_SERVER={e.dmlc_num_server})"
            "; start the job with kvsync-run --num-servers N, or set MXNet's DMLC_ROLE, "
            "DMLC_NUM_WORKER, DMLC_NUM_SERVER and DMLC_PS_ROOT_URI/PORT")
    with job_store(e, timeout) as store:
        rank = dmlc.worker_rank(store, e)
        addresses = server_addresses(store, e.dmlc_num_server, timeout)
    links: list[Client] = []
    try:
        links.extend(_dial(server, timeout, e.secret) for server in addresses)
    except BaseException:
        for link in links:
            link.close()
        raise
    here = host_id()
    shared = [e.ps_shm and server.host_id == here for server in addresses]
    # MXNet's launch model: the scheduler ends the job when every worker reported done
    report_to = dmlc.store_address(e) if dmlc_worker else None
    return ServerLinks(rank=rank, num_workers=num_workers, links=links,
                       bound=e.bigarray_bound or defaults.BIGARRAY_BOUND, shm=shared,
                       report_to=report_to)
