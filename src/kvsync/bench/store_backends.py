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
``torch-on-kvsync`` is torch's own client against kvsync's server (in a separate process),
which serves torch's protocol on the same port; ``torch-process`` is torch's client against
torch's server alone in a separate process, the fair comparison for it.

Example:
    >>> sorted(BACKENDS)
    ['kvsync', 'kvsync-thread', 'torch', 'torch-on-kvsync', 'torch-process']
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

__all__ = ["BACKENDS", "Backend", "close_client", "read_line", "torch_missing_reason"]

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Backend:
    """How to serve and reach one store implementation.

    Attributes:
        name: shown in the table header.
        serve: ``serve(legacy)`` -> context manager yielding ``(host, port)``; ``legacy``
            asks torch for its legacy (non-libuv) server, which takes values over 8 MiB.
        connect: ``connect(host, port, timeout_seconds)`` -> a client store.
        module: the module of the client class (a cold-start process imports it before
            the clock starts).
    """

    name: str
    serve: Callable[[bool], contextlib.AbstractContextManager[tuple[str, int]]]
    connect: Callable[[str, int, float], Any]
    module: str


#: Seconds a ``kvsync serve`` child may take to print its address, and to stop.
_SERVE_TIMEOUT = 60.0


def _kvsync_serve_process(legacy: bool) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """A ``python -m kvsync serve`` child on a free port; ended by its PID afterwards."""
    return _serve_process([sys.executable, "-m", "kvsync", "serve", "--host", HOST, "--port", "0"])


def _torch_serve_process(legacy: bool) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """torch's server alone in a child process (``python -m kvsync.bench.store_backends``)."""
    cmd = [sys.executable, "-m", "kvsync.bench.store_backends", "torch-serve"]
    return _serve_process(cmd + (["legacy"] if legacy else []))


@contextlib.contextmanager
def _serve_process(cmd: list[str]) -> Iterator[tuple[str, int]]:
    """A server child that prints ``listening on HOST:PORT``; ended by its PID afterwards."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )  # stdin: the child sees EOF when the bench is gone
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
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of a child's stdout, stripped, waiting at most ``timeout`` seconds (``""``
    when none came)."""
    stdout = proc.stdout
    assert stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0].strip() if got else ""


def _first_line(proc: subprocess.Popen[str]) -> str:
    """The ``listening on HOST:PORT`` line of a ``kvsync serve`` child (bounded wait)."""
    line = read_line(proc, _SERVE_TIMEOUT)
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
    "kvsync": Backend("kvsync", _kvsync_serve_process, _kvsync_connect, "kvsync.store.tcp"),
    "kvsync-thread": Backend(
        "kvsync-thread", _kvsync_serve_thread, _kvsync_connect, "kvsync.store.tcp"
    ),
    "torch": Backend("torch", _torch_serve, _torch_connect, "torch.distributed"),
    "torch-on-kvsync": Backend(
        "torch-on-kvsync", _kvsync_serve_process, _torch_connect, "torch.distributed"
    ),
    "torch-process": Backend(
        "torch-process", _torch_serve_process, _torch_connect, "torch.distributed"
    ),
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


def _torch_serve_main(argv: list[str]) -> int:
    """``torch-serve [legacy]``: host torch's server, print its address, serve until killed."""
    dist: Any = importlib.import_module("torch.distributed")
    master = dist.TCPStore(
        HOST, 0, is_master=True, wait_for_workers=False, use_libuv="legacy" not in argv,
        timeout=timedelta(seconds=120),
    )  # fmt: skip
    sys.stdout.write(f"torch store listening on {HOST}:{master.port}\n")
    sys.stdout.flush()
    sys.stdin.read()  # EOF when the bench is gone (it also ends us by PID)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["torch-serve"]:
        sys.exit(_torch_serve_main(sys.argv[2:]))
