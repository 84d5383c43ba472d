"""``kvsync-run``: launch a training script on N local ranks (torchrun's command line).

Usage::

    kvsync-run --nproc-per-node 4 [--num-servers 2] train.py --epochs 3
    kvsync-run --nproc-per-node 2 -m mypackage.train
    # two machines (or two launchers on one machine), one job:
    kvsync-run --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 ...
    kvsync-run --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29500 ...

The launcher of node rank 0 hosts the job's store server on ``--master-addr``:
``--master-port`` (port 0, the default for a single node, picks a free one; the chosen
address is printed). In a job of several nodes the parameter servers bind and register
the node's address: ``--node-addr``, else ``KVSYNC_NODE_ADDR``, else this host's address
on the route to ``--master-addr`` (:func:`node_address`), and node 0's store binds
``--master-addr`` (the given node address, if any); a single node keeps loopback. The
launchers wait until every node joined before starting their children.

Each launcher starts ``--num-servers`` parameter servers (``python -m
kvsync.launcher.ps_server``, ``DMLC_ROLE=server``) and ``--nproc-per-node`` workers,
exports the variables of :func:`kvsync.env.worker_environment` plus ``KVSYNC_STORE_ADDR`` /
``KVSYNC_STORE_PORT`` and, as torchrun does, ``TORCHELASTIC_USE_AGENT_STORE=True``
(``MASTER_ADDR``:``MASTER_PORT`` is the launcher's store, which torch's ``env://`` joins as
a client instead of binding it), and supervises them (:mod:`kvsync.launcher.agent`).
Ranks: worker ``RANK = node_rank * nproc_per_node + local_rank``; server ``RANK = node_rank *
num_servers + i``, with ``WORLD_SIZE`` and ``DMLC_NUM_WORKER`` the number of workers and
``DMLC_NUM_SERVER`` the number of servers of the whole job. The exit code is the first
failing child's (``128 + signal`` when it was killed), ``128 + signal`` when the launcher
itself was interrupted, else 0.

Example:
    >>> args = build_parser().parse_args(["--nproc-per-node", "2", "train.py", "--lr", "1"])
    >>> args.nproc_per_node, args.script, args.script_args
    (2, 'train.py', ['--lr', '1'])
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kvsync import defaults, env
from kvsync.launcher import torchrun_args
from kvsync.launcher.agent import ChildSpec, JobResult, Supervisor
from kvsync.launcher.coordinator import Coordinator
from kvsync.launcher.output import OutputRouter
from kvsync.launcher.torchrun_args import nnodes, nproc_per_node, spellings
from kvsync.options import (
    Parser,
    add_logging_options,
    log_level,
    non_negative,
    port,
    run_command,
    seconds,
)

__all__ = ["SERVER_MODULE", "build_parser", "child_specs", "main", "node_address"]

#: The module each parameter-server child runs (``python -m kvsync.launcher.ps_server``).
SERVER_MODULE = "kvsync.launcher.ps_server"
_PREFIX = b"[kvsync-run] "
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def build_parser() -> argparse.ArgumentParser:
    """The ``kvsync-run`` argument parser (torchrun's flags: :mod:`.torchrun_args`)."""
    p = Parser(
        prog="kvsync-run",
        description="Run a training script on several local ranks, torchrun-style, with "
        "kvsync's store server and parameter servers.",
    )
    p.add_argument(*spellings("--nproc-per-node"), type=nproc_per_node, default=1,
                   metavar="N", help="workers started by this launcher: a number, or 'cpu' / "
                   "'auto' for one per CPU (default 1)")
    p.add_argument("--nnodes", type=nnodes, default=1, metavar="M",
                   help="launchers (nodes) in the job: M or M:M (default 1)")
    p.add_argument(*spellings("--node-rank"), type=non_negative, default=0, metavar="R",
                   help="this launcher's node rank; rank 0 hosts the store (default 0)")
    p.add_argument(*spellings("--master-addr"), default=defaults.DEFAULT_HOST, metavar="A",
                   help=f"address of the job's store server (default {defaults.DEFAULT_HOST})")
    p.add_argument(*spellings("--master-port"), type=port, default=0, metavar="P",
                   help="port of the job's store server; 0 (default) picks a free one, "
                   "which only node rank 0 may do")
    p.add_argument(*spellings("--node-addr"), metavar="A",
                   help="address of this node that the other nodes dial (its store and "
                   f"servers bind it); default ${env.KVSYNC_NODE_ADDR}, else this host's "
                   "address on the route to --master-addr (several nodes only)")
    p.add_argument(*spellings("--num-servers"), type=non_negative, default=0, metavar="S",
                   help="parameter-server processes started by this launcher (default 0)")
    p.add_argument(*spellings("--server-setup"), metavar="MODULE",
                   help="module each parameter server imports first (custom updaters)")
    p.add_argument(*spellings("--log-dir"), type=Path, metavar="D",
                   help="also write each child's stdout and stderr to files in D")
    p.add_argument("--grace", type=seconds, default=defaults.SHUTDOWN_GRACE_SECONDS,
                   metavar="SECONDS", help="seconds between SIGTERM and SIGKILL when "
                   f"stopping children (default {defaults.SHUTDOWN_GRACE_SECONDS:g})")
    p.add_argument("-m", "--module", action="store_true",
                   help="run SCRIPT as a module (python -m SCRIPT)")
    torchrun_args.add_arguments(p)
    add_logging_options(p)
    p.add_argument("script", metavar="SCRIPT", help="the training script (or module with -m)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments passed to the script")
    return p


def node_address(args: argparse.Namespace, environment: env.Environment) -> str | None:
    """The address this node's listening sockets bind and register, or ``None`` for a
    single-node job (loopback): ``--node-addr``, ``KVSYNC_NODE_ADDR``, else the local
    address of the route to ``--master-addr`` (no packet sent, no DNS for a number).

    Raises:
        StoreConnectionError: no route to ``--master-addr``, or it cannot be resolved.

    Example:
        >>> a = build_parser().parse_args(["--nnodes", "2", "--master-port", "1", "t.py"])
        >>> node_address(a, env.read({})), node_address(a, env.read({"KVSYNC_NODE_ADDR": "h"}))
        ('127.0.0.1', 'h')
    """
    from kvsync.client.connect import local_address_to

    if args.node_addr or environment.node_addr:
        return str(args.node_addr or environment.node_addr)
    return local_address_to(args.master_addr) if args.nnodes > 1 else None


def child_specs(
    args: argparse.Namespace, master_port: int, *, restart: int = 0,
    roles: tuple[str, ...] = ("server", "worker"),
) -> list[ChildSpec]:
    """The servers then the workers this launcher starts, with their environments
    (``roles`` picks some; ``restart`` is the worker group's restart count).

    Example:
        >>> a = build_parser().parse_args(["--nproc-per-node", "2", "--nnodes", "2",
        ...                                "--node-rank", "1", "--num-servers", "1", "t.py"])
        >>> [(s.role, s.rank, s.env["LOCAL_RANK"]) for s in child_specs(a, 5000)]
        [('server', 1, '0'), ('worker', 2, '0'), ('worker', 3, '1')]
    """
    n, s = args.nproc_per_node, args.num_servers
    common = {env.KVSYNC_STORE_ADDR: args.master_addr, env.KVSYNC_STORE_PORT: str(master_port),
              env.TORCHELASTIC_USE_AGENT_STORE: "True",
              **torchrun_args.torchelastic_environment(args, restart)}
    if args.server_setup:
        common[env.KVSYNC_SERVER_SETUP] = args.server_setup
    if args.node_addr:
        common[env.KVSYNC_NODE_ADDR] = args.node_addr
    level = log_level(args)
    if level is not None:
        common[env.KVSYNC_LOG_LEVEL] = str(level)
    specs = []
    for role, count, argv in (
        ("server", s, [sys.executable, "-u", "-m", SERVER_MODULE]),
        ("worker", n, torchrun_args.worker_command(args)),
    ):
        if role not in roles:
            continue
        for local in range(count):
            rank = args.node_rank * count + local
            variables = env.worker_environment(
                master_addr=args.master_addr, master_port=master_port, rank=rank,
                world_size=n * args.nnodes, local_rank=local, local_world_size=count,
                group_rank=args.node_rank, role=role, num_servers=s * args.nnodes,
            )
            specs.append(ChildSpec(role, rank, argv, {**variables, **common}))
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kvsync-run``; returns the job's exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    torchrun_args.resolve(args, parser.error)
    if args.node_rank >= args.nnodes:
        parser.error(f"--node-rank {args.node_rank} must be below --nnodes {args.nnodes}")
    if args.node_rank > 0 and args.master_port == 0:
        parser.error("--master-port is required on node ranks above 0 (the port node 0 uses)")
    router = OutputRouter(sys.stdout.buffer, sys.stderr.buffer, args.log_dir,
                          console=torchrun_args.console_filter(args))
    if args.log_dir is not None and (any(args.redirects.values()) or any(args.tee.values())):
        _say(router, f"children's output is written to {args.log_dir}")
    # logging from -v/--log-level (else KVSYNC_LOG_LEVEL); any error is one line, exit 1
    return run_command("kvsync-run", args, lambda a: _run(a, router))


def _say(router: OutputRouter, message: str) -> None:
    router.write_line("stderr", _PREFIX + message.encode() + b"\n")


def _run(args: argparse.Namespace, router: OutputRouter) -> int:
    from kvsync.launcher.job_store import JobStore  # imports the server and client

    supervisor: Supervisor | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if supervisor is None:  # still opening the store: nothing started yet
            raise _SignalledError(signum)
        supervisor.request_stop(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        environment = env.read()
        try:
            given = args.node_addr or environment.node_addr
            args.node_addr = node_address(args, environment)
            job_store = JobStore.open(args, environment, lambda text: _say(router, text),
                                      bind=given if args.nnodes > 1 else None)
        except OSError as exc:  # includes kvsync's StoreConnectionError and timeouts
            _say(router, f"cannot open the job store at {args.master_addr}:"
                 f"{args.master_port}: {exc}")
            return 1
        with job_store:
            coordinator: Coordinator = job_store.coordinator()

            def respawn(restart: int, reason: str) -> list[ChildSpec]:
                nodes = " on every node" if args.nnodes > 1 else ""
                _say(router, f"{reason}: restarting the workers{nodes} (restart {restart} of "
                     f"{args.max_restarts}); the store and the parameter servers keep running")
                return child_specs(args, job_store.port, restart=restart, roles=("worker",))

            supervisor = Supervisor(router, grace=args.grace, coordinator=coordinator,
                                    max_restarts=args.max_restarts, respawn=respawn,
                                    say=lambda text: _say(router, text))
            try:
                supervisor.start(child_specs(args, job_store.port))
            except OSError as exc:
                _say(router, f"cannot start a child: {exc}")
                return 1
            result = supervisor.supervise()
    except _SignalledError as exc:
        _say(router, f"received {signal.Signals(exc.signum).name} before the job started")
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _report(router, result)
    return result.exit_code


class _SignalledError(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _report(router: OutputRouter, result: JobResult) -> None:
    for line in result.summary():
        _say(router, line)



if __name__ == "__main__":  # pragma: no cover - ``python -m kvsync.launcher.run``
    sys.exit(main())
