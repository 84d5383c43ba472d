"""A parameter-server process: ``python -m kvsync.kv.server`` (or ``kvsync serve --role server``).

The process serves the parameter-server logic (:mod:`kvsync.server.ps`) on a free port
with kvsync's event loop, registers ``host:port`` in the job's store (``MASTER_ADDR`` /
``MASTER_PORT``) under ``kvsync/ps/server/<i>`` (``i`` from an ``add`` counter), and runs
until a worker sends a shutdown, it receives SIGTERM/SIGINT, or the job's store goes away.

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
    >>> sorted(UPDATERS)
    ['scaled_copy']
    >>> del UPDATERS["scaled_copy"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvsync import defaults
from kvsync.errors import InvalidArgumentError, UnknownNameError
from kvsync.server.ps import ParameterServerLogic, Updater

__all__ = ["UPDATERS", "make_logic", "register_updater"]

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
    """A registered updater function with the Updater shape (no state to save)."""

    def __init__(self, name: str, fn: Callable[[Any, Any, Any], None]) -> None:
        self._name, self._fn = name, fn

    def __call__(self, index: Any, grad: Any, weight: Any) -> None:
        self._fn(index, grad, weight)

    def get_states(self, dump_optimizer: bool = False) -> bytes:
        raise InvalidArgumentError(f"updater {self._name!r} has no optimizer states to save")

    def set_states(self, data: bytes) -> None:
        raise InvalidArgumentError(f"updater {self._name!r} has no optimizer states to load")


def _updater_from_config(cfg: dict[str, Any]) -> Updater:
    from kvsync.optimizer import Optimizer, get_updater

    updater: Updater = get_updater(Optimizer.from_config(cfg))
    return updater


def _updater_by_name(name: str, params: dict[str, Any]) -> Updater:
    factory = UPDATERS.get(name)
    if factory is None:
        known = ", ".join(sorted(UPDATERS)) or "(none registered)"
        raise UnknownNameError(f"unknown server updater {name!r}; known: {known}")
    return _PlainUpdater(name, factory(params))


def _compression(params: dict[str, Any]) -> Any:
    from kvsync.kv.compression import create_compression

    return create_compression(params)


def make_logic(index: int, *, stall_seconds: float = defaults.PS_STALL_SECONDS
               ) -> ParameterServerLogic:
    """The parameter-server logic of server ``index`` with kvsync's optimizers, the
    registered updaters and gradient compression plugged in."""
    return ParameterServerLogic(
        index, updater_from_config=_updater_from_config, updater_by_name=_updater_by_name,
        compression_from_params=_compression, stall_seconds=stall_seconds)
