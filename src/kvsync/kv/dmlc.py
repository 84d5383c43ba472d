"""MXNet's launch model: processes started the way ``tools/launch.py`` starts them.

MXNet's launcher starts every process of a job with the same command and tells each its
role in ``DMLC_ROLE`` (``scheduler``, ``server`` or ``worker``), the scheduler's address
in ``DMLC_PS_ROOT_URI``/``DMLC_PS_ROOT_PORT`` and the job's size in ``DMLC_NUM_WORKER``
and ``DMLC_NUM_SERVER``; there is no ``RANK``. ``import mxnet`` in a server or scheduler
process serves that role and exits when the job ends. Here the same happens in
``kvsync.kv.create("dist_sync")`` (any dist type):

- ``scheduler``: hosts the job's store at ``DMLC_PS_ROOT_URI:DMLC_PS_ROOT_PORT``, waits
  until every worker is done (a worker counts itself done when its store closes or its
  process exits), closes the store, and exits with status 0.
- ``server``: becomes one parameter server (``python -m kvsync.launcher.ps_server``, by
  ``os.execve``), which registers in that store and exits, status 0, when the store goes
  away.
- ``worker``: takes its rank from a counter in the store, in order of arrival (as ps-lite
  assigns ranks), unless ``RANK`` is set.

Example:
    >>> from kvsync import env
    >>> store_address(env.read({"DMLC_PS_ROOT_URI": "10.0.0.1", "DMLC_PS_ROOT_PORT": "9000"}))
    ('10.0.0.1', 9000)
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from kvsync import defaults, env
from kvsync.errors import InvalidArgumentError
from kvsync.store.tcp import TCPStore

__all__ = [
    "PS_SERVER_MODULE",
    "SERVING_ROLES",
    "WORKER_DONE_KEY",
    "WORKER_RANK_KEY",
    "report_done_at_exit",
    "run_role",
    "store_address",
    "worker_rank",
]

logger = logging.getLogger(__name__)

#: Counter from which a worker without RANK takes its rank.
WORKER_RANK_KEY = "kvsync/dmlc/worker_rank"
#: Counter of workers that are done; the scheduler ends the job when it reaches the count.
WORKER_DONE_KEY = "kvsync/dmlc/workers_done"
#: The parameter-server program a ``server`` process becomes (``os.execve``): the launcher's.
PS_SERVER_MODULE = "kvsync.launcher.ps_server"
#: Roles that serve instead of training.
SERVING_ROLES = ("scheduler", "server")


def store_address(e: env.Environment) -> tuple[str, int] | None:
    """The job's store: ``MASTER_ADDR``/``MASTER_PORT``, else MXNet's scheduler address."""
    if e.master_addr is not None and e.master_port is not None:
        return e.master_addr, e.master_port
    if e.dmlc_ps_root_uri is not None and e.dmlc_ps_root_port is not None:
        return e.dmlc_ps_root_uri, e.dmlc_ps_root_port
    return None


def run_role(e: env.Environment, timeout: float) -> NoReturn:
    """Serve the process's ``DMLC_ROLE`` (scheduler or server) and exit the process.

    Raises:
        InvalidArgumentError: the scheduler's address or the worker count is missing.
    """
    address = store_address(e)
    if address is None:
        raise InvalidArgumentError(
            f"DMLC_ROLE={e.dmlc_role} needs DMLC_PS_ROOT_URI and DMLC_PS_ROOT_PORT (the "
            "scheduler's address), as MXNet's tools/launch.py sets them"
        )
    if e.dmlc_role == "scheduler":
        _schedule(address, e, timeout)
    else:  # become the parameter-server program, which exits when the job's store goes
        host, port = address
        environ = env.child_environment({env.MASTER_ADDR: host, env.MASTER_PORT: str(port)})
        os.execve(sys.executable, [sys.executable, "-m", PS_SERVER_MODULE], environ)
    logger.info("%s: the job ended; exiting", e.dmlc_role)
    sys.exit(0)


def _schedule(address: tuple[str, int], e: env.Environment, timeout: float) -> None:
    if not e.dmlc_num_worker:
        raise InvalidArgumentError("DMLC_ROLE=scheduler needs DMLC_NUM_WORKER >= 1")
    host, port = address
    with TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timeout) as store:
        logger.info(
            "scheduler: the job's store listens on %s:%d for %d workers",
            host,
            port,
            e.dmlc_num_worker,
        )
        # workers may train for days: wait in rounds of ``timeout``, bounded in count
        for _ in range(1 << 40):
            if store.add(WORKER_DONE_KEY, 0) >= e.dmlc_num_worker:
                break
            time.sleep(0.2)
        time.sleep(defaults.SERVER_DEATH_DETECT_SECONDS / 4)  # let the last replies leave


def worker_rank(store: TCPStore, e: env.Environment) -> int:
    """``RANK`` if set, else the next rank from the store's counter."""
    if e.rank is not None:
        return e.rank
    return store.add(WORKER_RANK_KEY, 1) - 1


def report_done_at_exit(store_addr: tuple[str, int], close: Callable[[], None]) -> None:
    """At process exit, ``close`` this worker's KVStore (sending what is queued) and count the
    worker done (MXNet scripts never close their stores)."""

    def report() -> None:
        try:
            close()
        except Exception:  # the job is ending anyway; the scheduler must still hear of us
            logger.debug("closing the KVStore at exit failed", exc_info=True)
        try:
            with TCPStore(*store_addr, is_master=False, wait_for_workers=False, timeout=5) as store:
                store.add(WORKER_DONE_KEY, 1)
        except (OSError, TimeoutError):  # the scheduler is gone already: nothing to tell
            logger.debug("could not report this worker done", exc_info=True)

    atexit.register(report)
