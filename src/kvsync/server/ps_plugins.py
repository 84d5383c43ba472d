"""What the server process plugs into the parameter-server logic, and their JSON settings.

:class:`~kvsync.server.ps.ParameterServerLogic` imports no optimizer, compression or
shared-memory code (those live in the KVStore layer above); the process that runs it
(:mod:`kvsync.launcher.ps_server`) injects objects of these shapes. Their settings arrive as
JSON text in a request (:func:`json_object`).

Example:
    >>> json_object('{"type": "2bit"}', "params")
    {'type': '2bit'}
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np

from kvsync.errors import ErrorCode
from kvsync.server.router import RejectError

__all__ = ["Compression", "SharedMemory", "StatefulUpdater", "json_object"]


class StatefulUpdater(Protocol):
    """What the server needs from an updater: apply a gradient in place, and save and load
    its states (:class:`kvsync.optimizer.Updater` is one)."""

    def __call__(self, index: Any, grad: np.ndarray, weight: np.ndarray) -> None: ...

    def get_states(self, dump_optimizer: bool = False) -> bytes: ...

    def set_states(self, data: bytes) -> None: ...


class SharedMemory(Protocol):
    """Memory shared with workers on this host (``kvsync.kv.shm.SharedSegments``)."""

    def create(self, nbytes: int) -> tuple[str, np.ndarray]: ...

    def attach(self, path: str, nbytes: int) -> np.ndarray: ...


class Compression(Protocol):
    """What the server needs from a gradient compression (``kvsync.kv.compression``)."""

    def decompress(self, packed: np.ndarray, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...


def json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object.

    Raises:
        RejectError: KVSTORE_USAGE naming ``what``.
    """
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise RejectError(ErrorCode.KVSTORE_USAGE, f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RejectError(ErrorCode.KVSTORE_USAGE, f"{what} is not a JSON object")
    return obj
