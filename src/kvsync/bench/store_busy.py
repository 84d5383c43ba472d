"""``kvsync bench store``'s busy-master rows: another rank's ``get`` latency while the master
process runs pure-Python work.

A master process (``python -m kvsync.bench.store_busy BACKEND PLACEMENT``) hosts the store,
prints its port and then spins a pure-Python loop (as a rank 0 does in a data-loading loop)
until its stdin closes; the bench process, as another rank, times ``get`` of a 16-byte value
meanwhile, one every ``_GAP`` seconds (as a rank calls its store now and then: back-to-back
requests would keep a thread server holding the GIL between them and starve the master's
loop instead, which hides the delay each lone request meets).

kvsync's master hosts its server on a thread (which must take the GIL from the spinning
loop for every request) and in a child process (``TCPStore(server="process")``);
torch's master serves from a C++ thread, which holds no GIL.

Example:
    >>> PLACEMENTS["kvsync"], PLACEMENTS["torch"]
    (('thread', 'process'), ('C++ thread', 'C++ thread'))
"""

from __future__ import annotations

import contextlib
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kvsync.bench.store_backends import HOST, Backend, close_client

__all__ = ["PLACEMENTS", "busy_master_rows", "master_main"]

#: Where each backend's master serves, one table row pair each (torch has one placement,
#: measured once per kvsync placement so the rows pair up).
PLACEMENTS = {"kvsync": ("thread", "process"), "torch": ("C++ thread", "C++ thread")}
_METRICS = {"thread": "server on a thread", "process": "server in a child process"}
_KEY = "busy/k"
_START_TIMEOUT = 60.0  # seconds a master may take to print its port
_MAX_SPIN = 300.0  # a master spins at most this long, whatever happens to its stdin
_SETTLE = 0.2  # seconds the master spins before the first sample
_GAP = 0.002  # seconds between two samples (not timed)


def _spin(stop: threading.Event) -> int:
    """Pure-Python work (no call that releases the GIL) until ``stop`` or _MAX_SPIN."""
    x = 0
    deadline = time.monotonic() + _MAX_SPIN
    while not stop.is_set() and time.monotonic() < deadline:
        for i in range(10_000):
            x = (x * 31 + i) % 1_000_003
    return x


def _open_master(backend: str, placement: str) -> tuple[Any, int]:
    if backend == "torch":
        import importlib
        from datetime import timedelta

        dist: Any = importlib.import_module("torch.distributed")
        store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=_MAX_SPIN))  # fmt: skip
        return store, int(store.port)
    from kvsync.store.tcp import TCPStore

    kv = TCPStore(HOST, 0, is_master=True, server=placement, timeout=_MAX_SPIN)
    return kv, kv.port


def master_main(argv: Sequence[str]) -> int:
    """The master process: ``BACKEND PLACEMENT``; spins until its stdin closes."""
    store, port = _open_master(argv[0], argv[1])
    store.set(_KEY, b"v" * 16)
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    _spin(stop)
    close_client(store)
    return 0


@contextlib.contextmanager
def _master(backend: str, placement: str) -> Iterator[int]:
    """A busy master process; yields its port; ended through its stdin (or by its PID)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvsync.bench.store_busy", backend, placement],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], _START_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            raise RuntimeError(f"busy master (pid {proc.pid}) did not start: {line!r}")
        yield int(line)
    finally:
        proc.stdin.close()
        try:
            proc.wait(_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()  # by PID: our own child
            proc.wait(_START_TIMEOUT)
        proc.stdout.close()


def _samples(op: Callable[[str], object], key: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        time.sleep(_GAP)
        t0 = time.perf_counter()
        op(key)
        out.append(time.perf_counter() - t0)
    return sorted(out)


def busy_master_rows(backend: Backend, iterations: int, timeout: float) -> list[tuple[str, float]]:
    """(metric, seconds) of get latency, median and p99, for each master placement."""
    kind = "torch" if backend.name == "torch" else "kvsync"
    rows = []
    for metric, placement in zip(_METRICS.values(), PLACEMENTS[kind], strict=True):
        with _master(kind, placement) as port:
            client = backend.connect(HOST, port, timeout)
            try:
                client.get(_KEY)
                time.sleep(_SETTLE)
                samples = _samples(client.get, _KEY, iterations)
            finally:
                close_client(client)
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        rows += [(f"get 16 B median, {metric}", statistics.median(samples)),
                 (f"get 16 B p99, {metric}", p99)]  # fmt: skip
    return rows


if __name__ == "__main__":
    sys.exit(master_main(sys.argv[1:]))
