"""``kvsync bench kvstore --type dist_sync --workers W --servers S [--vs gloo]``.

Starts a job on this machine (a store, S parameter-server processes and W worker
processes), times push+pull rounds of float32 arrays of each size on every worker, and
reports the round time (the slowest worker's median) and the algorithm bandwidth (bytes
of the array / round time); also keys/s per worker for many small keys per step, and the
bytes each server received (so an even spread over the servers is visible). With
``--vs gloo`` and torch importable, W processes time ``torch.distributed.all_reduce``
(gloo, CPU) of the same sizes in the same run. With ``--hosts 2`` the job runs across
two network namespaces instead (:mod:`kvsync.bench.kvstore_hosts`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from kvsync import env
from kvsync.bench.report import format_table, human_bytes, human_seconds, progress, results_of
from kvsync.launcher.run import SERVER_MODULE

__all__ = [
    "MXNET_PS_REFERENCE",
    "Round",
    "free_port",
    "report",
    "run_children",
    "run_dist",
    "run_job",
    "worker_main",
]

#: MXNet's C++ ps-lite dist_sync, 2 workers, 1 server, 2 cores: seconds per push+pull round.
MXNET_PS_REFERENCE = {16 << 20: 0.249, 64 << 20: 1.344}
_MODULE = "kvsync.bench.kvstore_dist"


def _timed_rounds(kv: Any, key: str, n: int, rounds: int) -> list[float]:
    grad, out = np.ones(n, np.float32), np.empty(n, np.float32)
    kv.init(key, np.zeros(n, np.float32))
    kv.push(key, grad)  # warm-up round: first-touch pages on every side
    kv.pull(key, out=out)
    kv.barrier()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        kv.push(key, grad)
        kv.pull(key, out=out)
        times.append(time.perf_counter() - t0)
    return times


def _worker(kind: str, sizes: list[int], rounds: int, small_keys: int) -> dict[str, Any]:
    from kvsync import kv as kvmod

    kv: Any = kvmod.create(kind)
    result: dict[str, Any] = {"rounds": {}, "server_bytes": {}}
    for n in sizes:
        before = kv.server_stats() if kv.rank == 0 else []
        result["rounds"][str(n)] = _timed_rounds(kv, f"bench/{n}", n, rounds)
        kv.barrier()
        if kv.rank == 0:
            after = kv.server_stats()
            result["server_bytes"][str(n)] = [
                a["bytes_in"] - b["bytes_in"] for a, b in zip(after, before, strict=True)]
    keys = [f"small/{i}" for i in range(small_keys)]
    kv.init(keys, [np.zeros(16, np.float32) for _ in keys])
    grads = [np.ones(16, np.float32) for _ in keys]
    outs = [np.empty(16, np.float32) for _ in keys]
    kv.barrier()
    steps = []
    for _ in range(max(3, rounds)):
        t0 = time.perf_counter()
        kv.push(keys, grads)
        kv.pull(keys, out=outs)
        steps.append(time.perf_counter() - t0)
    result["small_step"] = statistics.median(steps)
    kv.barrier()
    kv.close()
    return result


def _gloo(sizes: list[int], rounds: int) -> dict[str, Any]:
    import torch
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method="env://")
    out: dict[str, Any] = {"rounds": {}}
    for n in sizes:
        t = torch.ones(n, dtype=torch.float32)
        tdist.all_reduce(t)
        tdist.barrier()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            tdist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        out["rounds"][str(n)] = times
    tdist.destroy_process_group()
    return out


def worker_main(argv: list[str]) -> int:
    """Entry of the benchmark's child processes (``python -m kvsync.bench.kvstore_dist``)."""
    role, sizes, rounds = argv[0], [int(s) for s in argv[1].split(",")], int(argv[2])
    if role == "gloo":
        result = _gloo(sizes, rounds)
    else:
        result = _worker(role, sizes, rounds, int(argv[3]))
    print(json.dumps(result), flush=True)
    return 0


def free_port() -> int:
    """A port the OS says is free on 127.0.0.1 (for a child job's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_children(cmds: list[tuple[list[str], dict[str, str]]],
                 timeout: float) -> list[dict[str, Any]]:
    """Run the benchmark's child processes (argv, environment) together; the JSON each
    printed last, in order.

    Raises:
        RuntimeError: a child exited with a non-zero code.
    """
    procs = [subprocess.Popen(c, env=e, stdout=subprocess.PIPE, text=True) for c, e in cmds]
    out = []
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            stdout, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0:
                raise RuntimeError(f"benchmark child {p.args!r} exited {p.returncode}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def run_job(args: argparse.Namespace, cmd: list[str]) -> list[dict[str, Any]]:
    """Run ``cmd`` as the ``args.workers`` workers of a job with ``args.servers`` parameter
    servers and a store on this host; the JSON each worker printed last."""
    from kvsync.server import StoreServer

    with StoreServer().start() as store:

        def environment(role: str, rank: int, count: int) -> dict[str, str]:
            """What kvsync-run would export to this child (one node, job store here)."""
            return env.child_environment(env.worker_environment(
                master_addr="127.0.0.1", master_port=store.port, rank=rank,
                world_size=args.workers, local_rank=rank, local_world_size=count,
                group_rank=0, role=role, num_servers=args.servers,
            ))  # fmt: skip

        servers = [subprocess.Popen([sys.executable, "-m", SERVER_MODULE],
                                    env=environment("server", s, args.servers))
                   for s in range(args.servers)]
        try:
            return run_children([(cmd, environment("worker", r, args.workers))
                                  for r in range(args.workers)], timeout=600)
        finally:
            for p in servers:
                p.terminate()
                p.wait(timeout=10)


def _gloo_results(args: argparse.Namespace, sizes: list[int]) -> list[dict[str, Any]] | None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        print("--vs gloo: torch is not importable; gloo columns skipped")
        return None
    common = {env.MASTER_ADDR: "127.0.0.1", env.MASTER_PORT: str(free_port()),
              env.WORLD_SIZE: str(args.workers)}
    cmd = [sys.executable, "-m", _MODULE, "gloo", ",".join(map(str, sizes)), str(args.repeat)]
    return run_children([(cmd, env.child_environment({**common, env.RANK: str(r)}))
                          for r in range(args.workers)], 600)


def _round(results: list[dict[str, Any]], n: int) -> float:
    """A round ends when the slowest worker is done: max over workers of their median."""
    return float(max(statistics.median(r["rounds"][str(n)]) for r in results))


@dataclasses.dataclass
class Round:
    """One size's push+pull round: its median time and algorithm bandwidth."""

    elements: int
    seconds: float
    gbps: float


def run_dist(args: argparse.Namespace, sizes: list[int]) -> int:
    """Run the benchmark on this host and print its tables; returns 0."""
    progress(f"kvstore {args.type}: {args.workers} workers, {args.servers} servers, "
             f"{len(sizes)} sizes")
    cmd = [sys.executable, "-m", _MODULE, args.type, ",".join(map(str, sizes)),
           str(args.repeat), str(args.small_keys)]  # fmt: skip
    dist = run_job(args, cmd)
    if args.vs == "gloo":
        progress("torch gloo all_reduce, the same sizes")
    gloo = _gloo_results(args, sizes) if args.vs == "gloo" else None
    report(args, sizes, dist, gloo,
           f"{args.workers} workers, {args.servers} servers", reference=True)
    return 0


def report(args: argparse.Namespace, sizes: list[int], dist: list[dict[str, Any]],
           gloo: list[dict[str, Any]] | None, layout: str, *, reference: bool) -> None:
    """Print the round-time table (beside gloo and, with ``reference``, MXNet), the small
    keys' rate and the bytes each server received."""
    print(f"KVStore {args.type!r}: {layout}, float32; "
          "one round = push + pull; algorithm bandwidth = array bytes / round time")
    headers = ["elements", "bytes", "round", "GB/s"]
    if reference and any(n in MXNET_PS_REFERENCE for n in sizes):
        headers += ["MXNet ps-lite", "x MXNet"]
    if gloo is not None:
        headers += ["gloo all_reduce", "gloo GB/s", "x gloo"]
    rows = []
    rounds = []
    for n in sizes:
        t = _round(dist, n)
        rounds.append(Round(n, t, 4 * n / t / 1e9))
        row: list[object] = [f"{n:,}", human_bytes(4 * n), human_seconds(t),
                             f"{4 * n / t / 1e9:.2f}"]
        if "MXNet ps-lite" in headers:
            ref = MXNET_PS_REFERENCE.get(n)
            row += ["-", "-"] if ref is None else [human_seconds(ref), f"{ref / t:.2f}"]
        if gloo is not None:
            g = _round(gloo, n)
            row += [human_seconds(g), f"{4 * n / g / 1e9:.2f}", f"{g / t:.2f}"]
        rows.append(row)
    print(format_table(headers, rows))
    results_of(args).add(f"KVStore {args.type!r}: push+pull round", rounds, y="seconds",
                         label=("elements",))
    step = max(r["small_step"] for r in dist)
    print(f"{args.small_keys} small keys (16 float32) per step, push+pull: "
          f"{human_seconds(step)} per step = {args.small_keys / step:,.0f} keys/s per worker")
    print("bytes pushed to each server (init, warm-up and timed rounds of each size):")
    srv = dist[0]["server_bytes"]
    servers = len(srv[str(sizes[0])])
    print(format_table(["elements", *[f"server {i}" for i in range(servers)]],
                       [[f"{n:,}", *[human_bytes(b) for b in srv[str(n)]]] for n in sizes]))


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
