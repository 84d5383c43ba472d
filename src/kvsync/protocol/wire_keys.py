"""Keys with a meaning on the wire: KVStore keys, and the keys a barrier uses.

KVStore keys are ``int`` or ``str``; on the wire they are one ``str``: ``"i<n>"`` or
``"s<name>"``, so the two kinds never collide and the server hands the updater the
original key. :func:`packable` says when arrays travel as one.

A barrier named ``key`` is a counter, :func:`barrier_counter`, that every arrival adds 1
to, and one done flag per generation of ``world_size`` arrivals
(:class:`BarrierArrival`): the arrival completing a generation sets its flag, the others
wait for it. The server's ``Barrier`` request and the add/set/wait barrier of
:mod:`kvsync.store.sync` use these same keys, so callers of either meet.

Workers, servers and stores all speak this vocabulary, so it lives here, below them.

Example:
    >>> wire_key(3), wire_key("w"), key_of_wire("i3"), key_of_wire("sw")
    ('i3', 'sw', 3, 'w')
    >>> barrier_counter("b"), BarrierArrival.of("b", count=5, world_size=2)
    ('b/arrived', BarrierArrival(generation=2, flag='b/done/2', last=False))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from kvsync import defaults
from kvsync.errors import KeyTypeError

if TYPE_CHECKING:  # the store imports this module; numpy comes with the arrays
    import numpy as np

__all__ = ["BarrierArrival", "Key", "barrier_counter", "key_of_wire", "packable", "wire_key"]

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
        >>> import numpy as np
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


def barrier_counter(key: str) -> str:
    """The counter every arrival at barrier ``key`` adds 1 to.

    Example:
        >>> barrier_counter("epoch")
        'epoch/arrived'
    """
    return f"{key}/arrived"


class BarrierArrival(NamedTuple):
    """Where the arrival that brought barrier ``key``'s counter to ``count`` stands (a
    named tuple: the server makes one for every arrival).

    Attributes:
        generation: which round of ``world_size`` arrivals it belongs to (from 0).
        flag: that generation's done flag, ``<key>/done/<generation>``.
        last: it completes its generation, so it sets ``flag``; the others wait for it.
    """

    generation: int
    flag: str
    last: bool

    @classmethod
    def of(cls, key: str, count: int, world_size: int) -> BarrierArrival:
        """The arrival with counter value ``count`` (``>= 1``) at a barrier of
        ``world_size`` (``>= 1``).

        Example:
            >>> BarrierArrival.of("b", count=4, world_size=2)
            BarrierArrival(generation=1, flag='b/done/1', last=True)
        """
        generation = (count - 1) // world_size
        return cls(generation, f"{key}/done/{generation}", count % world_size == 0)
