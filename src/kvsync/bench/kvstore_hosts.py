"""``kvsync bench kvstore --type dist_sync --hosts 2``: the dist benchmark across two hosts.

Two network namespaces joined by a veth pair (:class:`kvsync.testing.hosts.HostPair`)
stand in for two machines: one ``kvsync-run`` per namespace (node ranks 0 and 1, the
job's store on the first), each with ``ceil(W/2)`` workers and ``ceil(S/2)`` parameter
servers, so big arrays are split over servers on both hosts and every round crosses the
veth link (no shared memory between the two). Then ``torch.distributed`` gloo
``all_reduce`` of the same sizes runs with one process per worker, placed the same way.
The numbers are the veth link's, a memory copy through the kernel, not a network card's.
Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from typing import IO, Any

from kvsync import env
from kvsync.bench.kvstore_dist import report, run_children
from kvsync.testing.hosts import (
    ADDRESSES,
    DEVICE,
    HostPair,
    launcher_argv,
    unavailable_reason,
)

__all__ = ["run_hosts"]

_MODULE = "kvsync.bench.kvstore_dist"
#: Ports inside the namespaces this benchmark made (nothing else listens there).
_STORE_PORT, _GLOO_PORT = 29611, 29612
#: torch's variable naming the interface gloo uses.
_GLOO_SOCKET_IFNAME = "GLOO_SOCKET_IFNAME"
_TIMEOUT = 900.0
_RESULT_LINE = re.compile(r"\[worker (\d+)\] (\{.*\})")


def _per_host(count: int) -> int:
    return max(1, -(-count // 2))


def _launchers(
    pair: HostPair, args: argparse.Namespace, sizes: list[int], workers: int, servers: int
) -> list[dict[str, Any]]:
    """Run one kvsync-run per namespace; every worker's JSON result, by rank."""
    import json

    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    try:
        for node in range(2):
            argv = launcher_argv(
                node, _STORE_PORT, "--nproc-per-node", str(workers), "--num-servers",
                str(servers), "-m", _MODULE, args.type, ",".join(map(str, sizes)),
                str(args.repeat), str(args.small_keys),
            )  # fmt: skip
            log = tempfile.TemporaryFile()
            procs.append(
                (
                    subprocess.Popen(
                        pair.command(node, argv), stdout=log, stderr=subprocess.STDOUT
                    ),
                    log,
                )
            )
        results: dict[int, dict[str, Any]] = {}
        for proc, out in procs:
            code = proc.wait(_TIMEOUT)
            out.seek(0)
            text = out.read().decode(errors="replace")
            if code != 0:
                raise RuntimeError(f"kvsync-run exited {code}:\n{text[-4000:]}")
            for m in _RESULT_LINE.finditer(text):
                results[int(m.group(1))] = json.loads(m.group(2))
        return [results[r] for r in sorted(results)]
    finally:
        for proc, out in procs:
            if proc.poll() is None:
                proc.terminate()  # the launcher stops its children
                proc.wait(30)
            out.close()


def _gloo(
    pair: HostPair, args: argparse.Namespace, sizes: list[int], workers: int
) -> list[dict[str, Any]] | None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        print("torch is not importable: gloo columns skipped")
        return None
    world = 2 * workers
    common = {
        env.MASTER_ADDR: ADDRESSES[0],
        env.MASTER_PORT: str(_GLOO_PORT),
        env.WORLD_SIZE: str(world),
        _GLOO_SOCKET_IFNAME: DEVICE,
    }
    cmd = [sys.executable, "-m", _MODULE, "gloo", ",".join(map(str, sizes)), str(args.repeat)]
    return run_children(
        [
            (
                pair.command(rank // workers, cmd),
                env.child_environment({**common, env.RANK: str(rank)}),
            )
            for rank in range(world)
        ],
        _TIMEOUT,
    )


def run_hosts(args: argparse.Namespace, sizes: list[int]) -> int:
    """Run the two-host benchmark and print its tables; 1 when namespaces cannot be made."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"--hosts 2 needs two network namespaces: {reason}", file=sys.stderr)
        return 1
    workers, servers = _per_host(args.workers), _per_host(args.servers)
    try:
        with HostPair("kvsbench") as pair:
            dist = _launchers(pair, args, sizes, workers, servers)
            gloo = _gloo(pair, args, sizes, workers)
    except OSError as exc:
        print(f"--hosts 2: cannot make the two network namespaces: {exc}", file=sys.stderr)
        return 1
    report(
        args,
        sizes,
        dist,
        gloo,
        f"2 hosts (network namespaces, veth {ADDRESSES[0]} - "
        f"{ADDRESSES[1]}) x {workers} workers and {servers} servers",
        reference=False,
    )
    return 0
