"""``kvsync bench store``: latency, throughput, bandwidth, barrier, connect and cold-start times.

Every scenario runs on a fresh server on a free loopback port: by default kvsync's runs in
a separate ``kvsync serve`` process (how ``kvsync-run`` deploys it), with
``--kvsync-server thread`` on a thread of the bench process (how ``TCPStore(is_master=True)``
hosts it). With ``--vs torch`` the same scenarios, with the same sizes, counts and client
processes, run against ``torch.distributed.TCPStore`` (its legacy server for the bandwidth
rows, as its default server refuses values over 8 MiB) and a ``kvsync/torch`` ratio column
is added; notes under the table say how each side's numbers come about. The busy-master
rows (:mod:`kvsync.bench.store_busy`) time a get while the master process runs Python
work, with kvsync's server on a thread and in a child process. ``--quick``
shrinks every size so a test can run the whole bench in seconds.
Multi-client throughput uses child PROCESSES (``python -m kvsync.bench.store worker ...``),
and so does the cold start (``... cold ...``: fresh processes whose threads each make their
process's first stores); each child is ended by PID if it overruns its deadline.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_arguments(p)
    >>> p.parse_args(["--quick", "--scenario", "latency"]).scenario
    ['latency']
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvsync.bench.report import (
    format_table,
    human_bytes,
    human_seconds,
    progress,
    results_of,
)
from kvsync.bench.store_backends import (
    BACKENDS,
    Backend,
    close_client,
    read_line,
    torch_missing_reason,
)
from kvsync.bench.store_busy import busy_master_rows
from kvsync.store.sync import barrier

__all__ = ["SCENARIO_NAMES", "Params", "add_arguments", "run"]

SCENARIO_NAMES = (
    "latency", "busy-master", "throughput", "bandwidth", "barrier", "connect", "cold",
)  # fmt: skip
#: Every client operation of the bench has this deadline (seconds).
OP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Params:
    """Sizes of one bench run (``--quick`` or the issue's full sizes)."""

    latency_iterations: int = 2000
    busy_iterations: int = 500
    clients: tuple[int, ...] = (1, 2, 4, 8)
    pairs_per_client: int = 5000
    sizes_mib: tuple[float, ...] = (1, 16, 64, 256)
    ranks: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
    connections: int = 2000
    cold_ranks: int = 512
    cold_processes: int = 4


QUICK = Params(
    latency_iterations=100,
    busy_iterations=30,
    clients=(1, 2),
    pairs_per_client=100,
    sizes_mib=(1,),
    ranks=(8, 16),
    connections=100,
    cold_ranks=8,
    cold_processes=2,
)


@dataclass(frozen=True)
class Row:
    """One measured number: ``kind`` is 'time' (lower is better) or 'rate' / 'MB/s'."""

    scenario: str
    metric: str
    value: float
    kind: str


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvsync bench store``."""
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIO_NAMES,
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--vs", choices=["torch"], help="also measure torch's TCPStore")
    parser.add_argument(
        "--kvsync-server",
        choices=["process", "thread"],
        default="process",
        help="where kvsync's server runs: a separate 'kvsync serve' process (default) or a"
        " thread of the bench process",
    )
    parser.add_argument("--iterations", type=int, help="latency samples per operation")
    parser.add_argument("--busy-iterations", type=int, help="get samples per busy master")
    parser.add_argument("--clients", type=_ints, help="client processes, e.g. 1,2,4,8")
    parser.add_argument("--pairs", type=int, help="set+get pairs per client process")
    parser.add_argument("--sizes-mib", type=_floats, help="value sizes in MiB, e.g. 1,64")
    parser.add_argument("--ranks", type=_ints, help="barrier sizes, e.g. 8,64,512")
    parser.add_argument("--connections", type=int, help="connections to open")
    parser.add_argument("--cold-ranks", type=int, help="ranks of the cold-start rendezvous")


def _params(args: argparse.Namespace) -> Params:
    base = QUICK if args.quick else Params()
    return Params(
        latency_iterations=args.iterations or base.latency_iterations,
        busy_iterations=args.busy_iterations or base.busy_iterations,
        clients=args.clients or base.clients,
        pairs_per_client=args.pairs or base.pairs_per_client,
        sizes_mib=args.sizes_mib or base.sizes_mib,
        ranks=args.ranks or base.ranks,
        connections=args.connections or base.connections,
        cold_ranks=args.cold_ranks or base.cold_ranks,
        cold_processes=base.cold_processes,
    )


# --- scenarios ----------------------------------------------------------------------------


def bench_latency(backend: Backend, p: Params) -> list[Row]:
    """Median and p99 latency of set/get/add with 16-byte values, one client."""
    value = b"v" * 16
    with backend.serve(False) as (host, port):
        client = backend.connect(host, port, OP_TIMEOUT)
        try:
            client.set("lat", value)
            ops: dict[str, Callable[[], object]] = {
                "set": lambda: client.set("lat", value),
                "get": lambda: client.get("lat"),
                "add": lambda: client.add("lat_n", 1),
            }
            rows = []
            for name, op in ops.items():
                samples = []
                for _ in range(p.latency_iterations):
                    t0 = time.perf_counter()
                    op()
                    samples.append(time.perf_counter() - t0)
                samples.sort()
                p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
                rows.append(
                    Row("latency", f"{name} 16 B median", statistics.median(samples), "time")
                )
                rows.append(Row("latency", f"{name} 16 B p99", p99, "time"))
            return rows
        finally:
            close_client(client)


def bench_busy_master(backend: Backend, p: Params) -> list[Row]:
    """Median and p99 latency of another rank's get while the master process spins a
    pure-Python loop, for each place the master's server runs (see store_busy)."""
    return [
        Row("busy-master", metric, seconds, "time")
        for metric, seconds in busy_master_rows(backend, p.busy_iterations, OP_TIMEOUT)
    ]


def bench_throughput(backend: Backend, p: Params) -> list[Row]:
    """ops/s (each set and each get counts) of set+get pairs from N client processes, and
    for the most clients the user CPU the client processes spent per operation."""
    rows = []
    with backend.serve(False) as (host, port):
        control = backend.connect(host, port, OP_TIMEOUT)
        try:
            user_per_op: dict[int, float] = {}
            for n in p.clients:
                ops_per_s, user_per_op[n] = _run_workers(
                    backend, control, host, port, n, p.pairs_per_client
                )
                rows.append(
                    Row("throughput", f"set+get ops/s, {n} client processes", ops_per_s, "rate")
                )
            most = max(p.clients)
            metric = f"client user CPU per op, {most} clients"
            rows.append(Row("throughput", metric, user_per_op[most], "time"))
        finally:
            close_client(control)
    return rows


def _run_workers(
    backend: Backend, control: Any, host: str, port: int, n: int, pairs: int
) -> tuple[float, float]:
    """(ops/s of all ``n`` workers, their user CPU seconds per operation)."""
    tag = f"tp{n}"
    cmd = [sys.executable, "-m", "kvsync.bench.store", "worker", backend.name, host, str(port)]
    procs = [
        subprocess.Popen(
            [*cmd, tag, str(i), str(pairs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for i in range(n)
    ]
    try:
        # OP_TIMEOUT: workers of torch import it, eight at once take over a minute on a busy box
        control.wait([f"{tag}/ready/{i}" for i in range(n)], _timedelta(OP_TIMEOUT))
        control.set(f"{tag}/go", b"1")
        elapsed, total, user = 0.0, 0, 0.0
        for proc in procs:
            out, err = proc.communicate(timeout=OP_TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"bench worker pid {proc.pid} failed: {err.strip()[-500:]}")
            ops, seconds, user_seconds = out.split()
            total += int(ops)
            elapsed = max(elapsed, float(seconds))
            user += float(user_seconds)
        return total / elapsed, user / total
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # by PID, only our own children
                proc.wait(timeout=10)


def _timedelta(seconds: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=seconds)


def worker_main(argv: Sequence[str]) -> int:
    """A throughput client process: ``worker BACKEND HOST PORT TAG INDEX PAIRS``."""
    backend, host, port, tag, index, pairs = argv
    client = BACKENDS[backend].connect(host, int(port), OP_TIMEOUT)
    key, value = f"{tag}/k{index}", b"v" * 16
    client.set(key, value)
    client.set(f"{tag}/ready/{index}", b"1")
    client.wait([f"{tag}/go"], _timedelta(OP_TIMEOUT))
    user0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime, time.perf_counter()
    for _ in range(int(pairs)):
        client.set(key, value)
        client.get(key)
    elapsed = time.perf_counter() - t0
    user = resource.getrusage(resource.RUSAGE_SELF).ru_utime - user0
    close_client(client)
    sys.stdout.write(f"{2 * int(pairs)} {elapsed} {user}\n")
    return 0


def bench_bandwidth(backend: Backend, p: Params) -> list[Row]:
    """MB/s of one set plus one get of a large value (best of a few rounds)."""
    rows = []
    with backend.serve(True) as (host, port):
        client = backend.connect(host, port, OP_TIMEOUT)
        try:
            for mib in p.sizes_mib:
                size = int(mib * (1 << 20))
                value = bytes(size)
                best = float("inf")
                for _ in range(1 if size >= (256 << 20) else 3):
                    t0 = time.perf_counter()
                    client.set("big", value)
                    got = client.get("big")
                    best = min(best, time.perf_counter() - t0)
                    if len(got) != size:
                        raise RuntimeError(f"got {len(got)} bytes back, sent {size}")
                    del got
                del value
                client.set("big", b"")
                rows.append(
                    Row("bandwidth", f"set+get {human_bytes(size)}", 2 * size / 1e6 / best, "MB/s")
                )
        finally:
            close_client(client)
    return rows


def _barrier(client: Any, key: str, world_size: int) -> None:
    """The store's own ``barrier(key, world_size, timeout)`` (one request on kvsync and on
    torch 2.13); for a torch without ``Store.barrier``, the add/set/wait barrier of
    :func:`kvsync.store.sync.barrier` (which needs only those three methods)."""
    own = getattr(client, "barrier", None)
    if own is not None:
        own(key, world_size, _timedelta(OP_TIMEOUT))
    else:
        barrier(client, key, world_size, _timedelta(OP_TIMEOUT))


def bench_barrier(backend: Backend, p: Params) -> list[Row]:
    """Time for N ranks (threads, one connection each) to pass a barrier; median of 3."""
    rows = []
    _raise_fd_limit(2 * max(p.ranks) + 64)
    with backend.serve(False) as (host, port):
        for n in p.ranks:
            clients = [backend.connect(host, port, OP_TIMEOUT) for _ in range(n)]
            try:
                times = [_time_barrier(clients, f"bar{n}") for _ in range(3)]
            finally:
                for c in clients:
                    close_client(c)
            rows.append(
                Row("barrier", f"{n} ranks pass a barrier", statistics.median(times), "time")
            )
    return rows


def _time_barrier(clients: list[Any], key: str) -> float:
    n = len(clients)
    start = threading.Barrier(n + 1, timeout=OP_TIMEOUT)
    finished = [0.0] * n
    errors: list[BaseException] = []

    def rank(i: int) -> None:
        try:
            start.wait()
            _barrier(clients[i], key, n)
            finished[i] = time.perf_counter()
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=rank, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=OP_TIMEOUT)
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"barrier of {n} ranks failed: {errors[:1]}")
    return max(finished) - t0


def bench_connect(backend: Backend, p: Params) -> list[Row]:
    """Time to open ``connections`` client connections one after another."""
    _raise_fd_limit(2 * p.connections + 64)
    with backend.serve(False) as (host, port):
        clients: list[Any] = []
        try:
            t0 = time.perf_counter()
            clients.extend(backend.connect(host, port, OP_TIMEOUT) for _ in range(p.connections))
            elapsed = time.perf_counter() - t0
        finally:
            for c in clients:
                close_client(c)
    return [Row("connect", f"open {p.connections} connections", elapsed, "time")]


def bench_cold(backend: Backend, p: Params) -> list[Row]:
    """A job's first rendezvous: ``cold_ranks`` ranks, threads of ``cold_processes`` fresh
    processes, each make their process's first store, ``add`` 1 to a counter and wait for
    the key the last arrival sets; the time from the go signal until every rank is through
    (the store module is imported before it). Median of 3, fresh processes each time."""
    with backend.serve(False) as (host, port):
        times = [_cold_rendezvous(backend, host, port, p, f"cold{i}") for i in range(3)]
    metric = f"{p.cold_ranks} ranks in {p.cold_processes} fresh processes meet"
    return [Row("cold", metric, statistics.median(times), "time")]


def _cold_rendezvous(backend: Backend, host: str, port: int, p: Params, key: str) -> float:
    per, extra = divmod(p.cold_ranks, p.cold_processes)
    shares = [per + (i < extra) for i in range(p.cold_processes)]
    cmd = [sys.executable, "-m", "kvsync.bench.store", "cold", backend.name, host, str(port)]
    procs = [
        subprocess.Popen(
            [*cmd, key, str(n), str(p.cold_ranks)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for n in shares
    ]
    try:
        for proc in procs:  # each has imported the store module and started its threads
            if read_line(proc, OP_TIMEOUT) != "ready":
                raise RuntimeError(f"cold-start process pid {proc.pid} did not get ready")
        t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        finished = []
        for proc in procs:
            out, err = proc.communicate(timeout=OP_TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"cold-start process pid {proc.pid} failed: {err[-500:]}")
            finished.append(float(out.split()[-1]))
        return max(finished) - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()  # by PID, only our own children
                proc.wait(timeout=10)


def cold_main(argv: Sequence[str]) -> int:
    """A cold-start process: ``cold BACKEND HOST PORT KEY THREADS WORLD``; prints when its
    last rank got through (``time.monotonic()``)."""
    name, host, port, key, threads, world = argv
    backend = BACKENDS[name]
    importlib.import_module(backend.module)  # imports are not what the row measures
    go = threading.Event()
    finished: list[float] = []
    errors: list[BaseException] = []
    stores: list[Any] = []

    def rank() -> None:
        try:
            go.wait(OP_TIMEOUT)
            store = backend.connect(host, int(port), OP_TIMEOUT)
            stores.append(store)
            if int(store.add(f"{key}/arrived", 1)) == int(world):
                store.set(f"{key}/done", b"1")
            store.wait([f"{key}/done"], _timedelta(OP_TIMEOUT))
            finished.append(time.monotonic())
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=rank, daemon=True) for _ in range(int(threads))]
    for t in pool:
        t.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    go.set()
    for t in pool:
        t.join(OP_TIMEOUT)
    for store in stores:
        close_client(store)
    if errors or len(finished) != int(threads):
        sys.stderr.write(f"{len(finished)}/{threads} ranks got through: {errors[:1]!r}\n")
        return 1
    sys.stdout.write(f"{max(finished)}\n")
    return 0


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


SCENARIOS: dict[str, Callable[[Backend, Params], list[Row]]] = {
    "latency": bench_latency,
    "busy-master": bench_busy_master,
    "throughput": bench_throughput,
    "bandwidth": bench_bandwidth,
    "barrier": bench_barrier,
    "connect": bench_connect,
    "cold": bench_cold,
}


def bench_torch_client(name: str, backend: Backend, p: Params) -> list[Row]:
    """The rows of scenario ``name`` that torch's own client is measured on (get and add
    latency, the most clients' ops/s, the largest value's bandwidth), run on ``backend``
    and labelled 'torch client'."""
    sizes = (64.0,) if 64 in p.sizes_mib else (max(p.sizes_mib),)
    few = dataclasses.replace(p, clients=(max(p.clients),), sizes_mib=sizes)
    keep: Callable[[str], bool] = {
        "latency": lambda m: m in ("get 16 B median", "add 16 B median"),
        "throughput": lambda m: "ops/s" in m,
        "bandwidth": lambda m: True,
    }[name]
    rows = SCENARIOS[name](backend, few)
    return [dataclasses.replace(r, scenario="torch client") for r in rows if keep(r.metric)]


#: Scenarios that also get 'torch client' rows with ``--vs torch``.
TORCH_CLIENT_SCENARIOS = ("latency", "throughput", "bandwidth")


# --- report -------------------------------------------------------------------------------


def _fmt(row: Row) -> str:
    if row.kind == "time":
        return human_seconds(row.value)
    if row.kind == "rate":
        return f"{row.value:,.0f}"
    return f"{row.value:,.0f} MB/s"


def _table(ours: list[Row], theirs: list[Row] | None) -> str:
    if theirs is None:
        return format_table(
            ["scenario", "metric", "kvsync"], [[r.scenario, r.metric, _fmt(r)] for r in ours]
        )
    rows = []
    for a, b in zip(ours, theirs, strict=True):
        better = "lower" if a.kind == "time" else "higher"
        rows.append([a.scenario, a.metric, _fmt(a), _fmt(b), f"{a.value / b.value:.2f}x", better])
    return format_table(["scenario", "metric", "kvsync", "torch", "kvsync/torch", "better"], rows)


#: Printed under the table: how the numbers come about (read them with these in mind).
NOTES = {
    "process": "kvsync server: a separate process (python -m kvsync serve).",
    "thread": "kvsync server: a thread of the bench process (shares the GIL with the bench's"
    " client threads).",
    "torch": "torch server: a C++ thread of the bench process (no GIL). torch's set does not"
    " wait for a reply (its latency is the time to write the request); its get is a wait"
    " plus a get (two round trips); kvsync's set and get wait for their reply (one round"
    " trip each).",
    "busy-master": "busy-master rows: the master is a separate process spinning a"
    " pure-Python loop while the bench process, as another rank, times a get every 2 ms;"
    " kvsync's"
    " master serves from a thread or a child process (TCPStore(server=...)) whatever"
    " --kvsync-server says, torch's from its C++ thread (measured once per row pair).",
    "common": "Barrier rows call each store's own barrier(key, world_size, timeout): one"
    " request per rank on both (torch 2.13). Barrier and connect rows run their clients as"
    " threads of the bench process; throughput rows use separate client processes, and"
    " 'client user CPU per op' is their user-mode CPU time (kernel time excluded) over the"
    " operations they made. The cold row starts fresh processes, which import the store"
    " module and start their rank threads before the clock starts; it then includes"
    " everything else a job's first rendezvous does (first connections and handshakes,"
    " environment reads, the add and the wait).",
    "torch client": "'torch client' rows: torch's own TCPStore client, against kvsync's server"
    " (a separate process, serving torch's protocol on its port) in the kvsync column and"
    " against torch's server alone in a separate process in the torch column.",
}


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenarios and print one table; returns the exit code."""
    params = _params(args)
    names = args.scenario or list(SCENARIO_NAMES)
    placement = getattr(args, "kvsync_server", "process")
    ours_backend = BACKENDS["kvsync" if placement == "process" else "kvsync-thread"]
    compare = args.vs == "torch"
    if compare:
        reason = torch_missing_reason()
        if reason is not None:
            print(f"--vs torch skipped: {reason}; measuring kvsync only", file=sys.stderr)
            compare = False
    ours: list[Row] = []
    theirs: list[Row] = []
    for i, name in enumerate(names, 1):
        progress(f"store {name} ({i}/{len(names)}): kvsync")
        ours += SCENARIOS[name](ours_backend, params)
        if compare:
            progress(f"store {name} ({i}/{len(names)}): torch")
            theirs += SCENARIOS[name](BACKENDS["torch"], params)
    crossed = [n for n in names if n in TORCH_CLIENT_SCENARIOS] if compare else []
    for name in crossed:
        ours += bench_torch_client(name, BACKENDS["torch-on-kvsync"], params)
        theirs += bench_torch_client(name, BACKENDS["torch-process"], params)
    print(_table(ours, theirs if compare else None))
    results = results_of(args)
    for who, rows in (("kvsync", ours), ("torch", theirs)):
        for kind, unit in (("time", "seconds"), ("rate", "ops/s"), ("MB/s", "MB/s")):
            of_kind = [r for r in rows if r.kind == kind]
            if of_kind:
                results.add(f"{who} store ({unit})", of_kind, y="value",
                            label=("scenario", "metric"))
    notes = [NOTES[placement], *([NOTES["torch"]] if compare else []), NOTES["common"]]
    if "busy-master" in names:
        notes.append(NOTES["busy-master"])
    notes += [NOTES["torch client"]] if crossed else []
    print("\n".join(f"note: {n}" for n in notes))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    if sys.argv[1:2] == ["cold"]:
        sys.exit(cold_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(prog="python -m kvsync.bench.store")
    add_arguments(parser)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run(parser.parse_args()))
