"""The stores ``kvsync bench store`` measures: kvsync's TCPStore and, optionally, PyTorch's.

A :class:`Backend` starts a server on a free loopback port (``serve()``, a context manager
yielding ``(host, port)``) and opens clients on it (``connect(host, port, timeout)``). Both
backends' clients offer ``set``, ``get``, ``add`` and ``wait``, which is all the scenarios
use, so every number is measured the same way on both.

Where the server runs: ``kvsync`` serves from a separate process (``python -m kvsync
serve``), as a job launched by ``kvsync-run`` does (the launcher hosts the store, no rank
does); ``kvsync-thread`` serves from a thread of the bench process, as
``TCPStore(is_master=True)`` does, where the server competes for the GIL with the bench's
own client threads. torch's server is a C++ thread of the bench process (it holds no GIL).

Example:
    >>> sorted(BACKENDS)
    ['kvsync', 'kvsync-thread', 'torch']
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
import threading
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


#: Seconds a ``kvsync serve`` child may take to print its address, and to stop.
_SERVE_TIMEOUT = 60.0


@contextlib.contextmanager
def _kvsync_serve_process(legacy: bool) -> Iterator[tuple[str, int]]:
    """A ``python -m kvsync serve`` child on a free port; ended by its PID afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvsync", "serve", "--host", HOST, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        line = _first_line(proc)
        host, _, port = line.rsplit(" ", 1)[-1].rpartition(":")
        yield host, int(port)
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: kvsync serve exits cleanly
            try:
                proc.wait(timeout=_SERVE_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_SERVE_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()


def _first_line(proc: subprocess.Popen[str]) -> str:
    """The ``listening on HOST:PORT`` line of a ``kvsync serve`` child (bounded wait)."""
    stdout = proc.stdout
    assert stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(_SERVE_TIMEOUT)
    line = result[0].strip() if result else ""
    if "listening on" not in line:
        raise RuntimeError(f"kvsync serve (pid {proc.pid}) did not start: {line!r}")
    return line


@contextlib.contextmanager
def _kvsync_serve_thread(legacy: bool) -> Iterator[tuple[str, int]]:
    from kvsync.server import StoreServer

    server = StoreServer(host=HOST, port=0).start()
    try:
        yield str(server.host), int(server.port)
    finally:
        server.close()


def _kvsync_connect(host: str, port: int, timeout: float) -> Any:
    from kvsync.store.tcp import TCPStore

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
    "kvsync": Backend("kvsync", _kvsync_serve_process, _kvsync_connect),
    "kvsync-thread": Backend("kvsync-thread", _kvsync_serve_thread, _kvsync_connect),
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
