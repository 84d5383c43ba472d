"""``kvsync bench``: benchmarks of the store and the KVStore, printed as tables.

Scenarios are modules of this package with ``add_arguments(parser)`` and ``run(args)``;
performance targets live here, never in timed test assertions.
"""

from __future__ import annotations

import argparse

from kvsync.cli import add_commands

__all__ = ["SCENARIOS", "add_arguments", "run"]

#: scenario -> (module, help)
SCENARIOS: dict[str, tuple[str, str]] = {
    "store": ("kvsync.bench.store", "TCPStore latency, throughput, barrier and connect times"),
    "kvstore": ("kvsync.bench.kvstore", "KVStore push/pull/pushpull bandwidth"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per scenario (its module is imported when it is chosen)."""
    add_commands(parser, SCENARIOS, dest="scenario", run_attr="_scenario")


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenario."""
    return int(args._scenario(args))
