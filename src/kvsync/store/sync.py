"""Coordination helpers built only from the Store API, so they work on every Store.

Strategy (as in ``torch.distributed.elastic``): a barrier is one counter and one flag key per
generation (the keys of :mod:`kvsync.protocol.wire_keys`). Every caller ``add``\\ s 1 to the
counter; the count tells it which generation it belongs to and whether it is the last to
arrive, in which case it ``set``\\ s the generation's flag and returns; everyone else
``wait``\\ s for that flag. Because generations have their own flags, the same barrier key
can be reused any number of times (it leaves one small flag key per generation in the
store). After a barrier timed out its counter is out of step: use a new key.
:meth:`Store.barrier <kvsync.store.Store.barrier>` is the same barrier done by the server in
one request per caller (the ``Barrier`` message); callers of either meet on one key.

Example:
    >>> import threading
    >>> from kvsync.store import HashStore
    >>> store = HashStore()
    >>> ts = [threading.Thread(target=barrier, args=(store, "b", 3)) for _ in range(3)]
    >>> for t in ts: t.start()
    >>> for t in ts: t.join()
    >>> store.get("b/arrived")
    b'3'
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kvsync.errors import StoreTimeoutError
from kvsync.protocol.wire_keys import BarrierArrival, barrier_counter
from kvsync.store.arguments import check_world_size

if TYPE_CHECKING:
    from kvsync.store.base import Store, Timeout

__all__ = ["barrier", "rendezvous"]


def barrier(store: Store, key: str, world_size: int, timeout: Timeout | None = None) -> None:
    """Block until ``world_size`` callers have reached the barrier ``key`` (reusable).

    Args:
        store: any Store.
        key: names the barrier; its keys are ``<key>/arrived`` and ``<key>/done/<gen>``
            (see :mod:`kvsync.protocol.wire_keys`).
        world_size: how many callers must arrive.
        timeout: seconds or ``timedelta``; default: the store's timeout.

    Raises:
        TypeError: ``key`` is not ``str`` or ``world_size`` not an ``int``.
        ValueError: ``world_size`` < 1.
        StoreTimeoutError: not everyone arrived in time; the message says how many did,
            e.g. "3/8 ranks reached barrier 'b' after 2.00 s".

    Example:
        >>> from kvsync.store import HashStore
        >>> s = HashStore()
        >>> barrier(s, "b", 1); barrier(s, "b", 1)
        >>> barrier(s, "b2", 2, timeout=0.01)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kvsync.errors.StoreTimeoutError: 1/2 ranks reached barrier 'b2' after ...
    """
    if not isinstance(key, str):
        raise TypeError(f"barrier key must be str, got {type(key).__name__}")
    check_world_size(world_size)
    start = time.monotonic()
    counter = barrier_counter(key)
    arrival = BarrierArrival.of(key, store.add(counter, 1), world_size)
    if arrival.last:  # the last to arrive releases the others; no need to wait
        store.set(arrival.flag, b"1")
        return
    try:
        store.wait([arrival.flag], timeout)
    except StoreTimeoutError as exc:
        arrived = store.add(counter, 0) - arrival.generation * world_size
        raise StoreTimeoutError(
            f"{min(arrived, world_size)}/{world_size} ranks reached barrier {key!r} "
            f"after {time.monotonic() - start:.2f} s"
        ) from exc


def rendezvous(
    store: Store,
    key: str,
    rank: int,
    world_size: int,
    value: str | bytes,
    timeout: Timeout | None = None,
) -> list[bytes]:
    """Every rank publishes ``value``; returns all ranks' values in rank order.

    One-shot per ``key`` (ranks set ``<key>/<rank>`` and wait for all of them).

    Raises:
        ValueError: ``rank`` is not in ``range(world_size)``.
        StoreTimeoutError: some ranks did not publish in time; the message names them.

    Example:
        >>> from kvsync.store import HashStore
        >>> rendezvous(HashStore(), "addr", 0, 1, "10.0.0.1:1234")
        [b'10.0.0.1:1234']
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in range(world_size={world_size})")
    keys = [f"{key}/{r}" for r in range(world_size)]
    store.set(keys[rank], value)
    start = time.monotonic()
    try:
        store.wait(keys, timeout)
    except StoreTimeoutError as exc:
        missing = [r for r, k in enumerate(keys) if not store.check([k])]
        raise StoreTimeoutError(
            f"rendezvous {key!r}: ranks {missing} did not publish within "
            f"{time.monotonic() - start:.2f} s ({world_size - len(missing)}/{world_size} did)"
        ) from exc
    return store.multi_get(keys)
