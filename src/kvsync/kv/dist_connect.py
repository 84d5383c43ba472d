"""How a worker finds the parameter servers of its job and connects to them.

Servers register ``host:port`` in the job's store (``MASTER_ADDR``:``MASTER_PORT``, the
store ``kvsync-run`` hosts) under :data:`SERVER_KEY` ``.format(i)``, ``i`` taken from an
``add`` on :data:`SERVER_COUNT_KEY`. A worker reads its rank and the job's worker count
from ``RANK``/``WORLD_SIZE`` (or ``DMLC_NUM_WORKER``), the server count from
``DMLC_NUM_SERVER``, waits until that many servers have registered, and opens one
pipelined :class:`~kvsync.client.Client` per server. When every server listens on a
loopback address, big slices move through shared memory (``KVSYNC_PS_SHM=0`` turns it off).

Example:
    >>> SERVER_KEY.format(0)
    'kvsync/ps/server/0'
"""

from __future__ import annotations

from collections.abc import Mapping

from kvsync import defaults, env
from kvsync.client.connect import is_loopback
from kvsync.errors import InvalidArgumentError, StoreConnectionError
from kvsync.kv.dist import DistKVStore
from kvsync.store.tcp import TCPStore

__all__ = ["SERVER_COUNT_KEY", "SERVER_KEY", "connect", "job_store", "server_addresses"]

#: Store key under which server ``i`` publishes ``host:port``.
SERVER_KEY = "kvsync/ps/server/{}"
#: Store counter from which each server takes its index.
SERVER_COUNT_KEY = "kvsync/ps/servers"


def job_store(e: env.Environment, timeout: float) -> TCPStore:
    """A client of the job's store, from ``MASTER_ADDR``/``MASTER_PORT``.

    Raises:
        InvalidArgumentError: the variables are not set (not started by a launcher).
    """
    if e.master_addr is None or e.master_port is None:
        raise InvalidArgumentError(
            "a dist KVStore needs the job's store in MASTER_ADDR and MASTER_PORT: start the "
            "job with kvsync-run --num-servers N, or set them (and RANK, WORLD_SIZE, "
            "DMLC_NUM_SERVER) by hand")
    return TCPStore(e.master_addr, e.master_port, is_master=False, timeout=timeout,
                    wait_for_workers=False)


def server_addresses(store: TCPStore, num_servers: int, timeout: float) -> list[tuple[str, int]]:
    """Wait until ``num_servers`` servers registered; their ``(host, port)`` by index.

    Raises:
        StoreTimeoutError: fewer servers registered within ``timeout`` seconds.
    """
    keys = [SERVER_KEY.format(i) for i in range(num_servers)]
    store.wait(keys, timeout)
    out = []
    for key, raw in zip(keys, store.multi_get(keys), strict=True):
        host, _, port = bytes(raw).decode().rpartition(":")
        if not host or not port.isdigit():
            raise StoreConnectionError(f"server address {raw!r} under {key!r} is not host:port")
        out.append((host, int(port)))
    return out


def connect(name: str, *, environ: Mapping[str, str] | None = None,
            timeout: float = defaults.DEFAULT_TIMEOUT) -> DistKVStore:
    """Build the dist KVStore ``name`` of this worker from the environment.

    Raises:
        InvalidArgumentError: rank, worker count or server count missing from the
            environment. StoreTimeoutError: the servers did not register in time.
    """
    from kvsync.client import Client

    e = env.read(environ)
    num_workers = e.world_size or e.dmlc_num_worker
    if e.rank is None or not num_workers or not e.dmlc_num_server:
        raise InvalidArgumentError(
            f"a dist KVStore needs RANK, WORLD_SIZE and DMLC_NUM_SERVER >= 1 in the environment "
            f"(got RANK={e.rank}, WORLD_SIZE={num_workers}, DMLC_NUM_SERVER={e.dmlc_num_server})"
            "; start the job with kvsync-run --num-servers N")
    with job_store(e, timeout) as store:
        addresses = server_addresses(store, e.dmlc_num_server, timeout)
    links = []
    try:
        for host, port in addresses:
            links.append(Client(host, port, timeout=timeout, secret=e.secret))
        local = all(is_loopback(host) for host, _ in addresses)
        return DistKVStore(name, rank=e.rank, num_workers=num_workers, links=links,
                           bound=e.bigarray_bound or defaults.BIGARRAY_BOUND, timeout=timeout,
                           shm=local and e.ps_shm)
    except BaseException:
        for link in links:
            link.close()
        raise
