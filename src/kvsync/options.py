"""What every kvsync command line shares: option types, logging options and error exits.

``kvsync``, ``kvsync-run`` and ``python -m kvsync.launcher.ps_server`` take their ports, counts and
durations through the argparse types here (so ``--port 70000`` is refused everywhere, not
wrapped to 4464 by the socket layer), add ``-v``/``--log-level`` with
:func:`add_logging_options`, and run through :func:`run_command`, which turns an error into
one line on stderr and exit code 1 instead of a traceback (``-vv`` / DEBUG shows it).

Example:
    >>> import argparse
    >>> p = Parser(prog="demo")
    >>> _ = p.add_argument("--port", type=port)
    >>> add_logging_options(p)
    >>> a = p.parse_args(["--port", "29500", "-v"])
    >>> a.port, log_level(a)
    (29500, 20)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from kvsync import env, log
from kvsync.errors import InvalidPortError, KVSyncError

__all__ = [
    "Parser",
    "add_logging_options",
    "log_level",
    "non_negative",
    "port",
    "positive",
    "run_command",
    "seconds",
]

logger = logging.getLogger(__name__)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE (see PROG
    --help)``) and exit code 2, with no usage block; its subcommand parsers are too."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the problem and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def port(text: str) -> int:
    """argparse type: a TCP port, 0-65535 (0: a free one).

    Example:
        >>> port("70000")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: 70000 is not a TCP port (0-65535)
    """
    value = _integer(text)
    try:
        return env.check_port(value)
    except InvalidPortError:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (0-{env.MAX_PORT})") from None


def non_negative(text: str) -> int:
    """argparse type: an integer of at least 0.

    Example:
        >>> non_negative("3")
        3
    """
    return _at_least(text, 0, "must not be negative")


def positive(text: str) -> int:
    """argparse type: an integer of at least 1.

    Example:
        >>> positive("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be at least 1, got '0'
    """
    return _at_least(text, 1, "must be at least 1")


def seconds(text: str) -> float:
    """argparse type: a number of seconds, 0 or more (NaN refused).

    Example:
        >>> seconds("2.5")
        2.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def _at_least(text: str, low: int, rule: str) -> int:
    value = _integer(text)
    if value < low:
        raise argparse.ArgumentTypeError(f"{rule}, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _level(text: str) -> int:
    try:
        return log.parse_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """Add ``-v``/``--verbose`` (INFO, twice: DEBUG) and ``--log-level LEVEL``."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more: -v for INFO, -vv for DEBUG"
    )
    group.add_argument(
        "--log-level",
        type=_level,
        default=None,
        metavar="LEVEL",
        help="level of kvsync's loggers: DEBUG, INFO, WARNING (default), "
        f"ERROR or a number; default ${env.KVSYNC_LOG_LEVEL}",
    )


def log_level(args: argparse.Namespace) -> int | None:
    """The level the parsed options ask for (``--log-level`` wins over ``-v``), or None."""
    explicit: int | None = getattr(args, "log_level", None)
    if explicit is not None:
        return explicit
    return log.verbosity_level(getattr(args, "verbose", 0))


def run_command(
    prog: str, args: argparse.Namespace, command: Callable[[argparse.Namespace], int]
) -> int:
    """Configure logging from ``args`` (else ``KVSYNC_LOG_LEVEL``) and run ``command``;
    an error becomes ``PROG: error: MESSAGE`` on stderr and exit code 1 (130 for Ctrl-C).

    Example:
        >>> def fails(args): raise StoreConnectionError("no store at 127.0.0.1:1")
        >>> from kvsync.errors import StoreConnectionError
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()) as err:
        ...     code = run_command("demo", argparse.Namespace(), fails)
        >>> code, err.getvalue()
        (1, 'demo: error: no store at 127.0.0.1:1\\n')
    """
    try:
        level = log_level(args)
        if level is None:
            log.configure_from_environment()
        else:
            log.configure(level)
        return int(command(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure of a command is one line, never a traceback
        logger.debug("%s failed", prog, exc_info=True)
        plain = isinstance(exc, KVSyncError) and str(exc)
        message = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        sys.stderr.write(f"{prog}: error: {message}\n")
        return 1
