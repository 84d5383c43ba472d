"""kvsync's logging: one ``kvsync.*`` logger hierarchy, its level from a flag or the environment.

Every module logs through ``logging.getLogger(__name__)``, so all of kvsync's records come
from loggers under ``kvsync``. Applications configure logging as usual; in addition, a level
given by ``-v``/``--log-level`` on a command or by ``KVSYNC_LOG_LEVEL`` in the environment
is applied by :func:`configure`: it sets the ``kvsync`` logger's level and, when nothing
would print kvsync's records (no handler on it and none on the root logger), adds one
that writes to stderr. The launcher passes its level to every child it starts (workers and
parameter servers) through ``KVSYNC_LOG_LEVEL``; a store or KVStore created in such a child
applies it (:func:`configure_from_environment`, once per process).

Example:
    >>> parse_level("info"), parse_level("15")
    (20, 15)
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping

from kvsync import env

__all__ = [
    "FORMAT",
    "LEVELS",
    "configure",
    "configure_from_environment",
    "parse_level",
    "verbosity_level",
]

#: Level names accepted by ``--log-level`` and ``KVSYNC_LOG_LEVEL`` (any case), or a number.
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: How the handler :func:`configure` adds formats a record.
FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s"
_ROOT = "kvsync"
_applied = threading.Event()


def parse_level(text: str | int) -> int:
    """A logging level from a name (``"info"``) or a number (``"15"``).

    Raises:
        ValueError: neither a known level name nor an integer; names the choices.

    Example:
        >>> parse_level("loud")
        Traceback (most recent call last):
        ...
        ValueError: log level 'loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL or a number
    """
    if isinstance(text, int):
        return text
    word = text.strip().upper()
    if word in LEVELS:
        return int(getattr(logging, word))
    try:
        return int(word)
    except ValueError:
        raise ValueError(
            f"log level {text!r} is not one of {', '.join(LEVELS)} or a number"
        ) from None


def verbosity_level(verbose: int) -> int | None:
    """The level ``-v`` given ``verbose`` times means: INFO once, DEBUG twice; None for 0.

    Example:
        >>> verbosity_level(0), verbosity_level(1), verbosity_level(3)
        (None, 20, 10)
    """
    if verbose <= 0:
        return None
    return logging.INFO if verbose == 1 else logging.DEBUG


def configure(level: int | str | None) -> None:
    """Set the ``kvsync`` loggers to ``level`` (no-op for None), adding a stderr handler
    when nothing else would print their records.

    Raises:
        ValueError: ``level`` is not a level (see :func:`parse_level`).

    Example:
        >>> configure("WARNING"); logging.getLogger("kvsync").level == logging.WARNING
        True
    """
    if level is None:
        return
    logger = logging.getLogger(_ROOT)
    logger.setLevel(parse_level(level))
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)


def configure_from_environment(environ: Mapping[str, str] | None = None) -> None:
    """Apply ``KVSYNC_LOG_LEVEL`` once per process (later calls do nothing).

    Raises:
        ValueError: the variable is not a level; names it.
    """
    if _applied.is_set() and environ is None:
        return
    level = env.read(environ).log_level
    if environ is None:
        _applied.set()
    if level is not None:
        try:
            configure(level)
        except ValueError as exc:
            raise ValueError(f"environment variable {env.KVSYNC_LOG_LEVEL}: {exc}") from None
