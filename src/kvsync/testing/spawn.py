"""Run a function on N localhost ranks with a fresh store: :func:`spawn_ranks`.

Strategy: the calling process hosts a :class:`~kvsync.server.StoreServer` on a free
loopback port for the run. ``mode="thread"`` runs the ranks as threads of this process;
``mode="process"`` starts one Python process per rank (``python -m kvsync.testing``,
running :mod:`kvsync.testing.child`), which imports the function by module and qualified name (so it
must be defined at module level, as with multiprocessing's spawn) and returns its result
as JSON (:mod:`kvsync.testing.results`; nothing is pickled). Rank processes also get the
environment ``kvsync-run`` exports, so ``kvsync.TCPStore()`` with no arguments works in
them. The first rank to fail (first in time) stops the run: the other processes are
killed, or, for threads, the store is closed so that ranks blocked on it fail fast; then
:class:`~kvsync.errors.RankFailedError` names that rank and carries its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from kvsync import defaults, env
from kvsync.errors import RankFailedError, StoreTimeoutError
from kvsync.server import StoreServer
from kvsync.testing.child import StoreAddress
from kvsync.testing.results import decode

__all__ = ["RankFunction", "spawn_ranks"]

#: ``fn(rank, world_size, store_address) -> result``
RankFunction = Callable[[int, int, StoreAddress], Any]

_POLL_SECONDS = 0.01
_JOIN_AFTER_FAILURE_SECONDS = 5.0


def spawn_ranks(
    fn: RankFunction,
    world_size: int,
    *,
    mode: Literal["process", "thread"] = "process",
    timeout: float = 60.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, store_address)`` on ``world_size`` localhost ranks.

    Args:
        fn: the rank's work; for ``mode="process"`` a module-level function.
        world_size: how many ranks (at least 1).
        mode: ``"process"`` (one Python process per rank) or ``"thread"``.
        timeout: seconds the whole run may take.

    Returns:
        The ranks' return values in rank order (for processes: decoded from JSON, see
        :mod:`kvsync.testing.results`).

    Raises:
        RankFailedError: a rank raised; names the first one and carries its traceback
            (for threads, the original exception is its ``__cause__``).
        StoreTimeoutError: ranks were still running after ``timeout``; names them.
        TypeError: ``fn`` cannot be imported by a process (a lambda or a local function).
        ValueError: ``world_size`` below 1 or an unknown ``mode``.

    Example:
        >>> from kvsync.store.tcp import TCPStore
        >>> def hello(rank, world_size, address):
        ...     with TCPStore(*address, world_size=world_size, timeout=10) as store:
        ...         return store.add("hello", 1) >= 1
        >>> spawn_ranks(hello, 2, mode="thread", timeout=20)
        [True, True]
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    runners = {"process": _run_processes, "thread": _run_threads}
    if mode not in runners:
        raise ValueError(f"mode must be 'process' or 'thread', got {mode!r}")
    if mode == "process":
        _check_importable(fn)
    server = StoreServer(defaults.DEFAULT_HOST, 0).start()
    try:
        address = StoreAddress(defaults.DEFAULT_HOST, server.port)
        return runners[mode](fn, world_size, address, timeout, server)
    finally:
        server.close()


def _check_importable(fn: RankFunction) -> None:
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<" in qualname or not getattr(fn, "__module__", None):
        raise TypeError(
            f"spawn_ranks(mode='process') needs a module-level function, got {fn!r}: "
            "define it at the top level of a module, or use mode='thread'"
        )


def _failure(rank: int, world_size: int, kind: str, message: str, tb: str) -> RankFailedError:
    text = f"rank {rank} of {world_size} failed: {kind}: {message}"
    if tb:
        text += "\n" + tb.rstrip()
    return RankFailedError(text, rank=rank, traceback_text=tb)


def _timeout(world_size: int, running: list[int], timeout: float) -> StoreTimeoutError:
    return StoreTimeoutError(
        f"spawn_ranks: rank(s) {running} of {world_size} still running after {timeout:g} s"
    )


def _run_threads(
    fn: RankFunction, world_size: int, address: StoreAddress, timeout: float,
    server: StoreServer,
) -> list[Any]:
    results: list[Any] = [None] * world_size
    failures: list[tuple[int, BaseException, str]] = []
    lock = threading.Lock()
    failed = threading.Event()

    def run(rank: int) -> None:
        try:
            results[rank] = fn(rank, world_size, address)
        except BaseException as exc:
            with lock:
                failures.append((rank, exc, traceback.format_exc()))
            failed.set()

    threads = [threading.Thread(target=run, args=(r,), name=f"kvsync-rank-{r}", daemon=True)
               for r in range(world_size)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while any(t.is_alive() for t in threads) and not failed.is_set():
        if time.monotonic() >= deadline:
            server.close()
            raise _timeout(world_size, [r for r, t in enumerate(threads) if t.is_alive()],
                           timeout)
        failed.wait(_POLL_SECONDS * 5)
    if failures:
        server.close()  # ranks blocked on the store fail fast instead of waiting it out
        for t in threads:
            t.join(_JOIN_AFTER_FAILURE_SECONDS)
        rank, exc, tb = failures[0]
        raise _failure(rank, world_size, type(exc).__qualname__, str(exc), tb) from exc
    return results


def _run_processes(
    fn: RankFunction, world_size: int, address: StoreAddress, timeout: float,
    server: StoreServer,
) -> list[Any]:
    main = sys.modules.get("__main__")
    module_file = getattr(sys.modules.get(fn.__module__, main), "__file__", None) or ""
    child_env = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with tempfile.TemporaryDirectory(prefix="kvsync-ranks-") as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for rank in range(world_size):
                variables = env.worker_environment(
                    master_addr=address.host, master_port=address.port, rank=rank,
                    world_size=world_size, local_rank=rank, local_world_size=world_size,
                    group_rank=0,
                )
                variables[env.KVSYNC_STORE_ADDR] = address.host
                variables[env.KVSYNC_STORE_PORT] = str(address.port)
                argv = [sys.executable, "-m", "kvsync.testing", fn.__module__,
                        fn.__qualname__, module_file, str(rank), str(world_size),
                        address.host, str(address.port), str(Path(tmp) / f"{rank}.json")]
                procs.append(subprocess.Popen(
                    argv, env=env.child_environment({**variables, **child_env}),
                    stdin=subprocess.DEVNULL, start_new_session=True,
                ))
            order = _wait_processes(procs, timeout, world_size)
        finally:
            _kill(procs)
        return _collect(order, Path(tmp), world_size)


def _wait_processes(
    procs: list[subprocess.Popen[bytes]], timeout: float, world_size: int
) -> list[tuple[int, int]]:
    """Wait until all exit or one fails; returns (rank, returncode) in order of exit."""
    deadline = time.monotonic() + timeout
    order: list[tuple[int, int]] = []
    pending = set(range(len(procs)))
    while pending:
        for rank in sorted(pending):
            code = procs[rank].poll()
            if code is not None:
                pending.discard(rank)
                order.append((rank, code))
                if code != 0:
                    return order
        if pending and time.monotonic() >= deadline:
            raise _timeout(world_size, sorted(pending), timeout)
        time.sleep(_POLL_SECONDS)
    return order


def _kill(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10.0)


def _collect(order: list[tuple[int, int]], tmp: Path, world_size: int) -> list[Any]:
    failed = [(rank, code) for rank, code in order if code != 0]
    if failed:
        rank, code = failed[0]
        path = tmp / f"{rank}.json"
        if not path.exists():
            raise _failure(rank, world_size, "exit", f"process ended with code {code} "
                           "without a result (os._exit, a signal or SystemExit?)", "")
        err = json.loads(path.read_text())["error"]
        raise _failure(rank, world_size, err["type"], err["message"], err["traceback"])
    return [decode(json.loads((tmp / f"{r}.json").read_text())["ok"])
            for r in range(world_size)]
