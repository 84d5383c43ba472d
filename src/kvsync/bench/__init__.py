"""``kvsync bench``: benchmarks of the store and the KVStore, printed as tables.

Scenarios are modules of this package with ``add_arguments(parser)`` and ``run(args)``;
performance targets live here, never in timed test assertions.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["SCENARIOS", "add_arguments", "run"]

#: scenario -> (module, help)
SCENARIOS: dict[str, tuple[str, str]] = {
    "store": ("kvsync.bench.store", "TCPStore latency, throughput, barrier and connect times"),
    "kvstore": ("kvsync.bench.kvstore", "KVStore push/pull/pushpull bandwidth"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per scenario."""
    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, (module_name, help_text) in SCENARIOS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sp)
        sp.set_defaults(_scenario=module.run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenario."""
    return int(args._scenario(args))
