"""The wire form of KVStore keys, and when arrays travel packed.

KVStore keys are ``int`` or ``str``; on the wire they are one ``str``: ``"i<n>"`` or
``"s<name>"``, so the two kinds never collide and the server hands the updater the
original key. Workers (:mod:`kvsync.kv`) and servers (:mod:`kvsync.server`) both speak
this vocabulary, so it lives here, below both.

Example:
    >>> wire_key(3), wire_key("w"), key_of_wire("i3"), key_of_wire("sw")
    ('i3', 'sw', 3, 'w')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

from kvsync import defaults
from kvsync.errors import KeyTypeError

__all__ = ["Key", "key_of_wire", "packable", "wire_key"]

#: A KVStore key as users write it.
Key: TypeAlias = "int | str"


def wire_key(key: Key) -> str:
    """The wire form of a KVStore key.

    Raises:
        KeyTypeError: ``key`` is neither int nor str (bool is refused too).

    Example:
        >>> wire_key(-1)
        'i-1'
    """
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise KeyTypeError(f"KVStore keys are int or str, not {type(key).__name__}")
    return f"i{key}" if isinstance(key, int) else f"s{key}"


def key_of_wire(wire: str) -> Key:
    """The KVStore key of a wire key (the inverse of :func:`wire_key`).

    Raises:
        KeyTypeError: ``wire`` is not a wire key.

    Example:
        >>> key_of_wire("s")
        ''
    """
    if wire[:1] == "s":
        return wire[1:]
    if wire[:1] == "i":
        try:
            return int(wire[1:])
        except ValueError:
            pass
    raise KeyTypeError(f"{wire!r} is not a wire key ('i<int>' or 's<str>')")


def packable(values: Sequence[np.ndarray | None]) -> bool:
    """Whether arrays travel as one concatenated array (PSPushPacked / PSPackedReply):
    at least :data:`~kvsync.defaults.PS_PACK_MIN_KEYS` of one dtype, at most
    :data:`~kvsync.defaults.PS_PACK_MAX_BYTES` in all.

    Example:
        >>> packable([np.zeros(2)] * 8), packable([np.zeros(2)] * 7)
        (True, False)
    """
    if len(values) < defaults.PS_PACK_MIN_KEYS or values[0] is None:
        return False
    dtype = values[0].dtype
    total = 0
    for v in values:
        if v is None or v.dtype != dtype:
            return False
        total += v.nbytes
    return total <= defaults.PS_PACK_MAX_BYTES
