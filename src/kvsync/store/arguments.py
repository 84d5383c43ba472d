"""Argument checks and conversions shared by every Store: keys, values, timeouts.

Example:
    >>> check_keys("a", "wait"), to_buffer("é", "k"), to_ms(1.5)
    (('a',), b'\\xc3\\xa9', 1500)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import timedelta
from typing import TypeAlias

from kvsync.protocol.messages import Buffer

__all__ = [
    "REPLY_GRACE_SECONDS",
    "Timeout",
    "Value",
    "check_key",
    "check_keys",
    "check_world_size",
    "reply_timeout",
    "to_buffer",
    "to_ms",
    "to_seconds",
]

#: What callers may pass as a value: text (stored as UTF-8) or bytes-like.
Value: TypeAlias = "str | bytes | bytearray | memoryview"
#: A timeout: seconds (int or float) or a ``datetime.timedelta``.
Timeout: TypeAlias = "float | timedelta"
#: Most extra seconds a client waits for the reply of a request the server may park for
#: ``timeout``, so that the server's TIMEOUT reply (which names what is missing) wins;
#: see :func:`reply_timeout` (the grace is 3% of the timeout, at least 50 ms).
REPLY_GRACE_SECONDS: float = 1.0
_GRACE_FRACTION = 0.03
_GRACE_MIN = 0.05


def reply_timeout(seconds: float) -> float:
    """How long a client waits for the reply of a request the server parks for
    ``seconds``: a little longer, so the server's own timeout reply arrives first, but
    never more than 3% (or 50 ms) longer, so a frozen server cannot stretch a timeout.

    Example:
        >>> reply_timeout(5.0), reply_timeout(0.1), reply_timeout(300.0)
        (5.15, 0.15000000000000002, 301.0)
    """
    return seconds + min(REPLY_GRACE_SECONDS, max(_GRACE_MIN, _GRACE_FRACTION * seconds))


_MAX_TIMEOUT_MS = 1 << 62


def to_seconds(timeout: object, name: str = "timeout") -> float:
    """Seconds from a number or a ``timedelta``.

    Raises:
        TypeError: ``timeout`` is neither a number nor a ``timedelta``.
        ValueError: it is negative or NaN.

    Example:
        >>> to_seconds(timedelta(minutes=1)), to_seconds(2)
        (60.0, 2.0)
    """
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(
            f"{name} must be seconds (int or float) or a datetime.timedelta, "
            f"got {type(timeout).__name__}"
        )
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {seconds}")
    return seconds


def to_ms(seconds: float) -> int:
    """Whole milliseconds for the wire (rounded up; capped for infinite timeouts).

    Example:
        >>> to_ms(0.0011)
        2
    """
    return (
        min(math.ceil(seconds * 1000.0), _MAX_TIMEOUT_MS)
        if math.isfinite(seconds)
        else (_MAX_TIMEOUT_MS)
    )


def check_key(key: object) -> str:
    """The key itself when it is a ``str``.

    Raises:
        TypeError: ``key`` is not a ``str`` (the reference document's rule).

    Example:
        >>> check_key("a")
        'a'
    """
    if not isinstance(key, str):
        raise TypeError(f"key must be str, got {type(key).__name__}: {key!r:.80}")
    return key


def check_world_size(world_size: object) -> None:
    """Refuse a barrier's ``world_size`` that is not an ``int`` >= 1.

    Raises:
        TypeError: not an ``int`` (``bool`` included).
        ValueError: below 1.

    Example:
        >>> check_world_size(0)
        Traceback (most recent call last):
        ...
        ValueError: world_size must be >= 1, got 0
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool):
        raise TypeError(f"world_size must be int, got {type(world_size).__name__}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")


def check_keys(keys: object, what: str) -> tuple[str, ...]:
    """A tuple of keys from a list of ``str`` (or one ``str``); ``what`` names the caller.

    Raises:
        TypeError: ``keys`` is not an iterable of ``str``.

    Example:
        >>> check_keys(["a", "b"], "wait"), check_keys("a", "wait")
        (('a', 'b'), ('a',))
    """
    if isinstance(keys, str):
        return (keys,)
    if type(keys) is list or type(keys) is tuple:  # the common case: no per-key call
        if all(type(k) is str for k in keys):
            return tuple(keys)
    if not isinstance(keys, Iterable) or isinstance(keys, bytes | bytearray | memoryview):
        raise TypeError(f"{what} expects a list of str keys, got {type(keys).__name__}")
    return tuple(check_key(k) for k in keys)


def to_buffer(value: object, key: str) -> Buffer:
    """A value as bytes for the wire: ``str`` is UTF-8 encoded, buffers pass uncopied.

    Raises:
        TypeError: ``value`` is not ``str``, ``bytes``, ``bytearray`` or ``memoryview``.
        ValueError: a non-contiguous ``memoryview``.

    Example:
        >>> to_buffer("v", "k")
        b'v'
    """
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray):
        return value
    if isinstance(value, memoryview):
        if not value.contiguous:
            raise ValueError(f"value for key {key!r} is a non-contiguous memoryview")
        return value if value.format == "B" and value.ndim == 1 else value.cast("B")
    raise TypeError(
        f"value for key {key!r} must be str, bytes, bytearray or memoryview, "
        f"got {type(value).__name__}"
    )
