"""The stores ``kvsync bench store`` measures: kvsync's TCPStore and, optionally, PyTorch's.

A :class:`Backend` starts a server on a free loopback port (``serve()``, a context manager
yielding ``(host, port)``) and opens clients on it (``connect(host, port, timeout)``). Both
backends' clients offer ``set``, ``get``, ``add`` and ``wait``, which is all the scenarios
use, so every number is measured the same way on both.

Example:
    >>> sorted(BACKENDS)
    ['kvsync', 'torch']
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

__all__ = ["BACKENDS", "Backend", "close_client", "torch_missing_reason"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Backend:
    """How to serve and reach one store implementation.

    Attributes:
        name: shown in the table header.
        serve: ``serve(legacy)`` -> context manager yielding ``(host, port)``; ``legacy``
            asks torch for its legacy (non-libuv) server, which takes values over 8 MiB.
        connect: ``connect(host, port, timeout_seconds)`` -> a client store.
    """

    name: str
    serve: Callable[[bool], contextlib.AbstractContextManager[tuple[str, int]]]
    connect: Callable[[str, int, float], Any]


@contextlib.contextmanager
def _kvsync_serve(legacy: bool) -> Iterator[tuple[str, int]]:
    from kvsync.server import StoreServer  # type: ignore[attr-defined,unused-ignore]

    server = StoreServer(host=HOST, port=0).start()
    try:
        yield str(server.host), int(server.port)
    finally:
        server.close()


def _kvsync_connect(host: str, port: int, timeout: float) -> Any:
    from kvsync.store.tcp import TCPStore  # type: ignore[import-not-found,unused-ignore]

    return TCPStore(host, port, is_master=False, timeout=timeout)


@contextlib.contextmanager
def _torch_serve(legacy: bool) -> Iterator[tuple[str, int]]:
    dist: Any = importlib.import_module("torch.distributed")
    master = dist.TCPStore(
        HOST,
        0,
        is_master=True,
        wait_for_workers=False,
        use_libuv=not legacy,
        timeout=timedelta(seconds=120),
    )
    try:
        yield HOST, int(master.port)
    finally:
        del master


def _torch_connect(host: str, port: int, timeout: float) -> Any:
    dist: Any = importlib.import_module("torch.distributed")
    return dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))


BACKENDS: dict[str, Backend] = {
    "kvsync": Backend("kvsync", _kvsync_serve, _kvsync_connect),
    "torch": Backend("torch", _torch_serve, _torch_connect),
}


def close_client(client: Any) -> None:
    """Close a client if its class can (torch's TCPStore has no ``close``)."""
    close = getattr(client, "close", None)
    if callable(close):
        close()


def torch_missing_reason() -> str | None:
    """``None`` if ``torch.distributed.TCPStore`` can be used, else why not.

    Example:
        >>> reason = torch_missing_reason()
        >>> reason is None or isinstance(reason, str)
        True
    """
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch)"
    try:
        dist: Any = importlib.import_module("torch.distributed")
    except Exception as exc:  # a broken install: report it, do not crash the bench
        return f"torch.distributed cannot be imported: {exc}"
    if not dist.is_available() or not hasattr(dist, "TCPStore"):
        return "this torch build has no torch.distributed.TCPStore"
    return None
