"""``kvsync bench``: benchmarks of the store and the KVStore, printed as tables.

Scenarios are modules of this package with ``add_arguments(parser)`` and ``run(args)``;
performance targets live here, never in timed test assertions. Every scenario takes
``--json FILE`` (its tables as JSON) and ``--plot FILE`` (bar charts; needs matplotlib, the
``plot`` extra, and is skipped with a note without it) and reports progress on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvsync.bench.report import results_of
from kvsync.cli import add_commands

__all__ = ["SCENARIOS", "add_arguments", "run"]

#: scenario -> (module, help)
SCENARIOS: dict[str, tuple[str, str]] = {
    "store": ("kvsync.bench.store", "TCPStore latency, throughput, barrier and connect times"),
    "kvstore": ("kvsync.bench.kvstore", "KVStore push/pull/pushpull bandwidth"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per scenario (its module is imported when it is chosen), each
    with ``--json`` and ``--plot``."""
    for sp in add_commands(parser, SCENARIOS, dest="scenario", run_attr="_scenario").values():
        sp.add_argument("--json", type=Path, metavar="FILE", help="also write the tables as JSON")
        sp.add_argument("--plot", type=Path, metavar="FILE",
                        help="also draw the tables as bar charts (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenario, then write ``--json`` / ``--plot``."""
    results = results_of(args)
    code = int(args._scenario(args))
    if getattr(args, "json", None) is not None:
        results.write_json(args.json)
        print(f"tables written to {args.json}", file=sys.stderr)
    if getattr(args, "plot", None) is not None:
        if results.plot(args.plot):
            print(f"plots drawn in {args.plot}", file=sys.stderr)
        else:
            print("--plot skipped: matplotlib is not installed (pip install 'kvsync[plot]')",
                  file=sys.stderr)
    return code
