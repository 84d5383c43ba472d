"""The ``kvsync`` command line: ``kvsync serve``, ``kvsync inspect``, ``kvsync bench``.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; this module only builds the parser from the table below and
dispatches. A subcommand's module is imported when its parser is used
(:class:`LazyCommandParser`), so ``kvsync serve`` never loads the benchmarks and
``kvsync --help`` loads none.

Example:
    >>> sorted(COMMANDS)
    ['bench', 'inspect', 'serve']
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kvsync import __version__
from kvsync.options import Parser, add_logging_options, run_command

__all__ = ["COMMANDS", "LazyCommandParser", "add_commands", "build_parser", "main"]

#: subcommand -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("kvsync.launcher.serve", "run a standalone store (or parameter) server"),
    "inspect": ("kvsync.store.inspect", "show the keys and values held by a running store"),
    "bench": ("kvsync.bench", "measure the store and the KVStore"),
}


class LazyCommandParser(Parser):
    """A subcommand's parser whose options come from its module, imported the first time
    the parser parses (that is, when the subcommand is on the command line). A top-level
    command (``run_attr`` ``"_run"``) also gets ``-v``/``--log-level``; errors are one line.

    Args:
        module: the module providing ``add_arguments(parser)`` and ``run(args)``; empty
            for a plain parser.
        run_attr: the namespace attribute that receives the module's ``run``.

    Example:
        >>> p = argparse.ArgumentParser(prog="kvsync")
        >>> _ = add_commands(p, {"inspect": ("kvsync.store.inspect", "show keys")})
        >>> args = p.parse_args(["inspect", "--port", "7000"])
        >>> args.port, args._run.__module__
        (7000, 'kvsync.store.inspect')
    """

    def __init__(self, *args: Any, module: str = "", run_attr: str = "_run", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._module, self._run_attr = module, run_attr

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Load the subcommand's options (once), then parse as usual."""
        self.load()
        return super().parse_known_args(args, namespace)

    def load(self) -> None:
        """Import the subcommand's module and add its options (once)."""
        if self._module:
            module = importlib.import_module(self._module)
            self._module = ""
            module.add_arguments(self)
            if self._run_attr == "_run":
                add_logging_options(self)
            self.set_defaults(**{self._run_attr: module.run})


def add_commands(
    parser: argparse.ArgumentParser,
    table: Mapping[str, tuple[str, str]],
    *,
    dest: str = "command",
    run_attr: str = "_run",
) -> dict[str, LazyCommandParser]:
    """Add one lazily loaded subcommand per ``table`` entry (``name -> (module, help)``):
    its name lands in the namespace attribute ``dest``, its module's ``run`` in
    ``run_attr``. Returns the subcommands' parsers by name."""
    sub = parser.add_subparsers(
        dest=dest, required=True, metavar=dest.upper(), parser_class=LazyCommandParser
    )
    return {
        name: sub.add_parser(
            name, help=help_text, description=help_text, module=module_name, run_attr=run_attr
        )
        for name, (module_name, help_text) in table.items()
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``kvsync`` argument parser (a subcommand's options load when it is parsed)."""
    parser = Parser(prog="kvsync", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"kvsync {__version__}")
    add_commands(parser, COMMANDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kvsync`` console script; returns the exit code (1 with one
    line on stderr when the command fails, 2 for bad arguments)."""
    args = build_parser().parse_args(argv)
    return run_command(f"kvsync {args.command}", args, args._run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
