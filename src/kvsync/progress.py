"""No silent long waits: a blocking call that lasts logs what it still waits for.

A wait that may take long is made in slices of :func:`interval` seconds (default
``kvsync.defaults.PROGRESS_LOG_SECONDS``, 10; ``KVSYNC_PROGRESS_SECONDS`` changes it and 0
turns the lines off). When a slice times out, the server's account of what is still
missing (``wait for keys ['b'] timed out after 10.00 s; still missing: ['b']``) is logged
at INFO, and the wait goes on until its own timeout; only the last slice's timeout is
raised, with the whole time waited appended. Only idempotent requests are sliced (``wait``
is; a barrier's arrival is not).

Example:
    >>> calls = []
    >>> def attempt(seconds):
    ...     calls.append(seconds)
    ...     if len(calls) < 3:
    ...         raise StoreTimeoutError("still missing: ['b']")
    ...     return "done"
    >>> in_slices(attempt, total=25.0, every=10.0, what="wait for ['b']")
    'done'
    >>> calls  # two slices timed out (and were logged), the third returned
    [10.0, 10.0, 10.0]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from kvsync import defaults, env
from kvsync.errors import StoreTimeoutError

__all__ = ["in_slices", "interval"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_interval: list[float] = []  # read once per process


def interval() -> float:
    """Seconds between "still waiting" lines: ``KVSYNC_PROGRESS_SECONDS`` or the default.

    Raises:
        ValueError: the variable is not a number.
    """
    if not _interval:
        configured = env.read().progress_seconds
        _interval.append(defaults.PROGRESS_LOG_SECONDS if configured is None else configured)
    return _interval[0]


def in_slices(attempt: Callable[[float], _T], *, total: float, every: float, what: str) -> _T:
    """Run ``attempt(seconds)`` in slices of ``every`` seconds until it returns or ``total``
    seconds passed, logging each slice's timeout at INFO.

    Raises:
        StoreTimeoutError: the last slice timed out; its message plus the time in all.
    """
    if every <= 0 or total <= every:
        return attempt(total)
    start = time.monotonic()
    last: StoreTimeoutError | None = None
    for _ in range(int(total / every) + 2):  # bounded: one slice per ``every`` seconds
        left = total - (time.monotonic() - start)
        try:
            return attempt(max(min(every, left), 0.0))
        except StoreTimeoutError as exc:
            last = exc
            waited = time.monotonic() - start
            if waited >= total - 1e-3:
                break
            logger.info("%s: still waiting after %.0f s of %g s: %s", what, waited, total, exc)
    waited = time.monotonic() - start
    raise StoreTimeoutError(f"{last} ({what}: {waited:.1f} s in all)") from None
