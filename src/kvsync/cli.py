"""The ``kvsync`` command line: ``kvsync serve``, ``kvsync inspect``, ``kvsync bench``.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; this module only builds the parser from the table below and
dispatches, importing a subcommand's module only when it is used.

Example:
    >>> sorted(COMMANDS)
    ['bench', 'inspect', 'serve']
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

#: subcommand -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("kvsync.launcher.serve", "run a standalone store (or parameter) server"),
    "inspect": ("kvsync.store.inspect", "show the keys and values held by a running store"),
    "bench": ("kvsync.bench", "measure the store and the KVStore"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``kvsync`` argument parser with every subcommand's options."""
    parser = argparse.ArgumentParser(prog="kvsync", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kvsync`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
