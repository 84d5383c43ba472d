"""torchrun's flags for ``kvsync-run``: spellings, value forms and what each one means here.

A torchrun command line works with ``kvsync-run`` in its place. Every flag is accepted in
both spellings (``--nproc_per_node`` and ``--nproc-per-node``; :func:`spellings`), and:

- ``--nproc-per-node auto|cpu|N``: ``auto`` and ``cpu`` mean this machine's CPU count
  (numpy has no GPUs; ``gpu`` is refused).
- ``--nnodes N`` or ``N:N``; an elastic range ``MIN:MAX`` with ``MIN < MAX`` is refused:
  kvsync-run runs a fixed number of nodes (no node joins or leaves a running job).
- ``--standalone``: one node, its store on a free 127.0.0.1 port.
- ``--rdzv-endpoint HOST:PORT``: the job's store address (``--master-addr``/``--master-port``).
- ``--rdzv-backend c10d|static``: both mean kvsync's store; ``--rdzv-id ID`` is exported as
  ``TORCHELASTIC_RUN_ID``.
- ``--max-restarts N``: when a worker fails (on any node), every node stops its workers and
  starts them again, up to N times, with ``TORCHELASTIC_RESTART_COUNT``; the store and
  parameter servers keep running (every node must give the same N).
- ``--local-ranks-filter 0,2``: only those local ranks' output reaches the console.
- ``--redirects S`` / ``--tee S`` (``S`` is 0 none, 1 stdout, 2 stderr, 3 both, for every
  local rank or per rank as ``0:1,1:2``): redirected streams go only to the log files,
  teed ones to the console and the files (``--log-dir``, else a new temporary directory).
- ``--no-python``: run SCRIPT as a program, not with Python; ``--run-path``: run it with
  ``runpy.run_path``.

Example:
    >>> nnodes("2:2"), std_streams("3"), std_streams("0:1,1:2")
    (2, {None: 3}, {0: 1, 1: 2})
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from kvsync import defaults, env
from kvsync.options import non_negative, port

__all__ = [
    "RUNPY_CODE",
    "add_arguments",
    "console_filter",
    "endpoint",
    "nnodes",
    "nproc_per_node",
    "resolve",
    "spellings",
    "std_streams",
    "torchelastic_environment",
    "worker_command",
]

#: What ``--run-path`` runs: the script through ``runpy.run_path`` as ``__main__``.
RUNPY_CODE = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
_BACKENDS = ("c10d", "static")
#: bits of a --redirects/--tee value
_STREAM_BITS = {"stdout": 1, "stderr": 2}


def spellings(flag: str) -> tuple[str, ...]:
    """A long flag in both of torchrun's spellings (dashes first).

    Example:
        >>> spellings("--nproc-per-node"), spellings("--standalone")
        (('--nproc-per-node', '--nproc_per_node'), ('--standalone',))
    """
    underscored = "--" + flag[2:].replace("-", "_")
    return (flag,) if underscored == flag else (flag, underscored)


def nproc_per_node(text: str) -> int:
    """argparse type of ``--nproc-per-node``: a count, or ``auto``/``cpu`` (the CPU count).

    Example:
        >>> nproc_per_node("4"), nproc_per_node("cpu") == (os.cpu_count() or 1)
        (4, True)
    """
    word = text.strip().lower()
    if word in ("auto", "cpu"):
        return os.cpu_count() or 1
    if word == "gpu":
        raise argparse.ArgumentTypeError(
            "'gpu' needs GPUs, which kvsync (numpy) does not use; give a number, 'cpu' or 'auto'"
        )
    try:
        value = int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of processes, 'cpu' or 'auto': {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def nnodes(text: str) -> int:
    """argparse type of ``--nnodes``: ``N`` or ``N:N``; an elastic ``MIN:MAX`` is refused.

    Example:
        >>> nnodes("3"), nnodes("2:2")
        (3, 2)
        >>> nnodes("1:4")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: elastic node counts (1:4) are not supported: ...
    """
    low, sep, high = text.partition(":")
    try:
        a = int(low)
        b = int(high) if sep else a
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a node count N or N:N: {text!r}") from None
    if a < 1 or b < a:
        raise argparse.ArgumentTypeError(f"not a node count N or N:N with N >= 1: {text!r}")
    if a != b:
        raise argparse.ArgumentTypeError(
            f"elastic node counts ({text}) are not supported: kvsync-run runs a fixed number "
            "of nodes; give --nnodes N or N:N"
        )
    return a


def endpoint(text: str) -> tuple[str, int]:
    """argparse type of ``--rdzv-endpoint``: ``HOST:PORT`` (``[v6addr]:PORT`` for IPv6).

    Example:
        >>> endpoint("10.0.0.1:29400"), endpoint("[::1]:5")
        (('10.0.0.1', 29400), ('::1', 5))
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.strip("[]"), port(port_text)


def std_streams(text: str) -> dict[int | None, int]:
    """argparse type of ``--redirects``/``--tee``: ``S`` for every local rank (key None) or
    ``RANK:S,...``; ``S`` is 0 (none), 1 (stdout), 2 (stderr) or 3 (both)."""
    out: dict[int | None, int] = {}
    try:
        if ":" not in text:
            out[None] = int(text)
        else:
            for item in text.split(","):
                rank, _, value = item.partition(":")
                out[int(rank)] = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not S or RANK:S,... with S in 0-3: {text!r}") from None
    if any(not 0 <= v <= 3 for v in out.values()) or any(r is not None and r < 0 for r in out):
        raise argparse.ArgumentTypeError(f"not S or RANK:S,... with S in 0-3: {text!r}")
    return out


def _rank_list(text: str) -> set[int]:
    try:
        ranks = {int(r) for r in text.split(",") if r.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ranks: {text!r}") from None
    if not ranks or min(ranks) < 0:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ranks: {text!r}")
    return ranks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add torchrun's flags that have no older ``kvsync-run`` equivalent."""
    g = parser.add_argument_group("torchrun compatibility")
    g.add_argument(
        "--standalone", action="store_true", help="one node, its store on a free 127.0.0.1 port"
    )
    g.add_argument(
        *spellings("--rdzv-endpoint"),
        type=endpoint,
        metavar="HOST:PORT",
        help="the job's store address (same as --master-addr/--master-port)",
    )
    g.add_argument(
        *spellings("--rdzv-backend"),
        default="static",
        metavar="NAME",
        help="c10d or static: both are kvsync's store (default static)",
    )
    g.add_argument(
        *spellings("--rdzv-id"),
        default="none",
        metavar="ID",
        help="job id, exported as TORCHELASTIC_RUN_ID (default none)",
    )
    g.add_argument(
        *spellings("--max-restarts"),
        type=non_negative,
        default=0,
        metavar="N",
        help="restart the workers up to N times when one fails; the store and "
        "parameter servers keep running (default 0)",
    )
    g.add_argument(
        *spellings("--local-ranks-filter"),
        type=_rank_list,
        metavar="R,R",
        help="only these local ranks' output reaches the console",
    )
    g.add_argument(
        "-r",
        *spellings("--redirects"),
        type=std_streams,
        metavar="S",
        default={None: 0},
        help="streams written only to the log files: 0 none, "
        "1 stdout, 2 stderr, 3 both; or per local rank, 0:1,1:2",
    )
    g.add_argument(
        "-t",
        "--tee",
        type=std_streams,
        metavar="S",
        default={None: 0},
        help="streams written to the console and the log files (as --redirects)",
    )
    g.add_argument(
        *spellings("--no-python"),
        action="store_true",
        help="run SCRIPT as a program, not with python",
    )
    g.add_argument(
        *spellings("--run-path"), action="store_true", help="run SCRIPT with runpy.run_path"
    )


def resolve(args: argparse.Namespace, error: Callable[[str], object]) -> None:
    """Check torchrun's flags together and fold them into kvsync-run's own; ``error``
    (``parser.error``) reports a conflict."""
    if args.rdzv_backend not in _BACKENDS:
        error(
            f"--rdzv-backend {args.rdzv_backend!r} is not supported; kvsync-run's store "
            f"serves as {' or '.join(_BACKENDS)}"
        )
    if args.standalone:
        if args.nnodes != 1 or args.rdzv_endpoint is not None:
            error("--standalone is one node: it takes neither --nnodes above 1 nor --rdzv-endpoint")
        args.master_addr, args.master_port = defaults.DEFAULT_HOST, 0
    if args.rdzv_endpoint is not None:
        host, port_number = args.rdzv_endpoint
        given = (args.master_addr, args.master_port)
        if given not in ((defaults.DEFAULT_HOST, 0), (host, port_number)):
            error(
                f"--rdzv-endpoint {host}:{port_number} and --master-addr/--master-port "
                f"{given[0]}:{given[1]} name different stores"
            )
        args.master_addr, args.master_port = host, port_number
    modes = [
        name
        for name, on in (
            ("-m", args.module),
            ("--no-python", args.no_python),
            ("--run-path", args.run_path),
        )
        if on
    ]
    if len(modes) > 1:
        error(f"{' and '.join(modes)} exclude each other")
    wants_files = any(args.redirects.values()) or any(args.tee.values())
    if wants_files and args.log_dir is None:
        args.log_dir = Path(tempfile.mkdtemp(prefix="kvsync-run-logs-"))


def worker_command(args: argparse.Namespace) -> list[str]:
    """The command line of a worker: python on SCRIPT (or ``-m``, ``--run-path``), or
    SCRIPT itself with ``--no-python``.

    Example:
        >>> a = argparse.Namespace(script="t.py", script_args=["-x"], module=False,
        ...                        no_python=True, run_path=False)
        >>> worker_command(a)
        ['t.py', '-x']
    """
    if args.no_python:
        return [args.script, *args.script_args]
    py = [sys.executable, "-u"]
    if args.module:
        return [*py, "-m", args.script, *args.script_args]
    if args.run_path:
        return [*py, "-c", RUNPY_CODE, args.script, *args.script_args]
    return [*py, args.script, *args.script_args]


def torchelastic_environment(args: argparse.Namespace, restart: int) -> dict[str, str]:
    """The variables torchrun's agent exports that kvsync-run exports too.

    Example:
        >>> a = argparse.Namespace(max_restarts=3, rdzv_id="job7")
        >>> torchelastic_environment(a, 1)["TORCHELASTIC_RESTART_COUNT"]
        '1'
    """
    return {
        env.TORCHELASTIC_RESTART_COUNT: str(restart),
        env.TORCHELASTIC_MAX_RESTARTS: str(args.max_restarts),
        env.TORCHELASTIC_RUN_ID: str(args.rdzv_id),
    }


def _streams_of(table: dict[int | None, int], local_rank: int) -> int:
    return table.get(local_rank, table.get(None, 0))


def console_filter(
    args: argparse.Namespace,
) -> Callable[[str, int, str], bool]:
    """Whether a line of ``(role, global rank, stream)`` is shown on the console: not for a
    redirected stream, nor for a worker outside ``--local-ranks-filter``."""
    per_node = args.nproc_per_node
    shown = args.local_ranks_filter

    def show(role: str, rank: int, stream: str) -> bool:
        if role != "worker":
            return True
        local = rank - args.node_rank * per_node
        if shown is not None and local not in shown:
            return False
        return not _streams_of(args.redirects, local) & _STREAM_BITS[stream]

    return show
