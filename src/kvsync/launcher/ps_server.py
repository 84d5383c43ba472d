"""A parameter-server process: ``python -m kvsync.launcher.ps_server`` (or ``kvsync serve
--role server``).

The process serves the parameter-server logic (:mod:`kvsync.server.ps`) on a free port
of ``--host`` (default ``KVSYNC_NODE_ADDR``, which ``kvsync-run`` sets in a multi-host job,
else loopback) with kvsync's event loop, registers ``host:port`` and its host identity
(:func:`kvsync.kv.shm.host_id`) in the job's store (``MASTER_ADDR`` / ``MASTER_PORT``)
under ``kvsync/ps/server/<i>`` and ``kvsync/ps/host/<i>`` (``i`` from an ``add``
counter), and runs until a worker sends a shutdown, it receives SIGTERM/SIGINT, or the
job's store goes away.

Optimizers are found by registered name; the module named by ``KVSYNC_SERVER_SETUP`` (or
``--server-setup``) is imported first, so it can register custom optimizers
(``kvsync.optimizer.register``) and updaters (:func:`register_updater`), as MXNet servers
import the training script.

Example:
    >>> import numpy as np
    >>> @register_updater("scaled_copy")
    ... def make_scaled_copy(params):
    ...     def update(key, grad, weight):
    ...         weight[...] = params["scale"] * grad
    ...     return update
    >>> ps = make_logic(0)
    >>> "scaled_copy" in UPDATERS
    True
    >>> del UPDATERS["scaled_copy"]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from kvsync import defaults, env
from kvsync.errors import InvalidArgumentError, KVSyncError, UnknownNameError
from kvsync.kv.compression import create_compression
from kvsync.kv.dist_connect import SERVER_COUNT_KEY, SERVER_HOST_KEY, SERVER_KEY, job_store
from kvsync.kv.shm import SharedSegments, host_id, shm_supported
from kvsync.optimizer import from_config, get_updater
from kvsync.options import Parser, add_logging_options, run_command, seconds
from kvsync.progress import interval as progress_interval
from kvsync.server import StoreServer
from kvsync.server.ps import ParameterServerLogic
from kvsync.server.ps_plugins import StatefulUpdater

__all__ = ["UPDATERS", "add_arguments", "main", "make_logic", "register_updater", "run", "serve"]

logger = logging.getLogger(__name__)

#: name -> factory(params) -> updater(key, grad, weight); see :func:`register_updater`.
UPDATERS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def register_updater(
    name: str,
) -> Callable[[Callable[[dict[str, Any]], Any]], Callable[[dict[str, Any]], Any]]:
    """Decorator: register an updater factory under ``name`` for ``set_server_updater``.

    The factory gets the JSON params a worker sent and returns
    ``updater(key, grad, weight)``, which updates ``weight`` in place.

    Raises:
        InvalidArgumentError: ``name`` is empty or already registered.
    """

    def deco(factory: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        if not name or name in UPDATERS:
            raise InvalidArgumentError(f"updater name {name!r} is empty or already registered")
        UPDATERS[name] = factory
        return factory

    return deco


class _PlainUpdater:
    """A registered updater function with the StatefulUpdater shape (no state to save)."""

    def __init__(self, name: str, fn: Callable[[Any, Any, Any], None]) -> None:
        self._name, self._fn = name, fn

    def __call__(self, index: Any, grad: Any, weight: Any) -> None:
        self._fn(index, grad, weight)

    def get_states(self, dump_optimizer: bool = False) -> bytes:
        raise InvalidArgumentError(f"updater {self._name!r} has no optimizer states to save")

    def set_states(self, data: bytes) -> None:
        raise InvalidArgumentError(f"updater {self._name!r} has no optimizer states to load")


def _updater_from_config(cfg: dict[str, Any]) -> StatefulUpdater:
    updater: StatefulUpdater = get_updater(from_config(cfg))
    return updater


def _updater_by_name(name: str, params: dict[str, Any]) -> StatefulUpdater:
    factory = UPDATERS.get(name)
    if factory is None:
        known = ", ".join(sorted(UPDATERS)) or "(none registered)"
        raise UnknownNameError(f"unknown server updater {name!r}; known: {known}")
    return _PlainUpdater(name, factory(params))


def make_logic(index: int, *, stall_seconds: float = defaults.PS_STALL_SECONDS
               ) -> ParameterServerLogic:
    """The parameter-server logic of server ``index`` with kvsync's optimizers, the
    registered updaters and gradient compression plugged in."""
    return ParameterServerLogic(
        index, updater_from_config=_updater_from_config, updater_by_name=_updater_by_name,
        compression_from_params=create_compression, stall_seconds=stall_seconds,
        shared=SharedSegments() if shm_supported() else None,
        progress_seconds=progress_interval())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of a parameter-server process (also ``kvsync serve --role server``)."""
    parser.add_argument("--server-setup", default=None, metavar="MODULE",
                        help="module to import first (custom optimizers/updaters); default "
                        "$KVSYNC_SERVER_SETUP")
    parser.add_argument("--advertise-host", default=None,
                        help="address workers dial (default: the bind address)")
    parser.add_argument("--stall-seconds", type=seconds, default=defaults.PS_STALL_SECONDS,
                        help="declare uneven dist_sync pushes after every worker waited this "
                        "long (default %(default)s)")


def serve(*, host: str | None = None, advertise_host: str | None = None,
          setup: str | None = None, stall_seconds: float = defaults.PS_STALL_SECONDS,
          environ: Mapping[str, str] | None = None, stop: threading.Event | None = None,
          poll: float = 0.5) -> int:
    """Run one parameter server of the job described by ``environ``; returns 0 when told
    to stop (a worker's shutdown, ``stop`` set) or when the job's store went away.
    ``host`` defaults to ``KVSYNC_NODE_ADDR``, else loopback.

    Raises:
        InvalidArgumentError: MASTER_ADDR/MASTER_PORT missing.
        ModuleNotFoundError: the setup module cannot be imported.
    """
    e = env.read(environ)
    setup = setup or e.server_setup
    if setup:
        importlib.import_module(setup)
    stop = stop or threading.Event()
    with job_store(e, defaults.DEFAULT_TIMEOUT) as store:
        index = store.add(SERVER_COUNT_KEY, 1) - 1
        logic = make_logic(index, stall_seconds=stall_seconds)
        bind = host or e.node_addr or defaults.DEFAULT_HOST
        with StoreServer(bind, 0, logic=logic, secret=e.secret).start() as server:
            address = f"{advertise_host or server.host}:{server.port}"
            store.set(SERVER_HOST_KEY.format(index), host_id())
            store.set(SERVER_KEY.format(index), address)
            logger.info("parameter server %d listening on %s", index, address)
            for _ in range(1 << 40):  # bounded by the stop conditions below
                if stop.wait(poll) or logic.shutdown_requested:
                    break
                try:
                    store.check(SERVER_KEY.format(index))
                except (KVSyncError, OSError):
                    logger.info("server %d: the job's store is gone; exiting", index)
                    break
    return 0


def run(args: argparse.Namespace) -> int:
    """Serve until stopped (SIGTERM/SIGINT, a shutdown message, or the job ending)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return serve(host=getattr(args, "host", None),
                     advertise_host=args.advertise_host, setup=args.server_setup,
                     stall_seconds=args.stall_seconds, stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """``python -m kvsync.launcher.ps_server``: one parameter server of the job in the
    environment."""
    parser = Parser(prog="python -m kvsync.launcher.ps_server",
                    description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="address to bind (default "
                        f"${env.KVSYNC_NODE_ADDR}, else {defaults.DEFAULT_HOST})")
    add_arguments(parser)
    add_logging_options(parser)
    return run_command("kvsync parameter server", parser.parse_args(argv), run)


if __name__ == "__main__":  # pragma: no cover - the launcher's server command
    sys.exit(main())
