"""Parked requests of the store's state machine, indexed for cheap wake-ups and expiry.

Strategy: a parked request (a :class:`Waiter`) is indexed under exactly ONE key at a time
(the first key it still misses, or the queue it pops from), in an insertion-ordered dict so
removal is O(1) and wake-up order is FIFO. Deadlines live in a heap with lazy deletion:
entries of waiters that were answered or dropped stay in the heap until they reach its top
(or until more than half of the heap is dead, when it is rebuilt). Nothing ever scans all
waiters: a wake-up costs the waiters parked on the key that changed, an expiry costs the
expired ones.

Example:
    >>> from kvsync.server.waiters import Waiter, WaiterIndex
    >>> idx = WaiterIndex()
    >>> w = Waiter(conn_id=1, request_id=7, msg=None, parked_at=0.0, deadline=2.0)
    >>> idx.park(w, "k")
    >>> idx.next_deadline()
    2.0
    >>> [x.request_id for x in idx.take("k")]
    [7]
    >>> idx.finish(w)
    >>> idx.next_deadline() is None
    True
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

__all__ = ["Waiter", "WaiterIndex"]


@dataclass(eq=False, slots=True)
class Waiter:
    """One parked request: who asked, what, and until when.

    Attributes:
        conn_id: connection the reply goes to.
        request_id: request id the reply answers.
        msg: the parked request message (Wait, Get, MultiGet or QueuePop).
        parked_at: ``now`` when it was parked (for "timed out after ... s").
        deadline: ``now`` value after which it is answered with a timeout error.
        key: the key it is currently indexed under (``None`` when not indexed).
        done: answered, expired or dropped; its heap entry is dead.
    """

    conn_id: int
    request_id: int
    msg: object
    parked_at: float
    deadline: float
    key: str | None = None
    done: bool = False
    seq: int = field(default=0)


class WaiterIndex:
    """Waiters by key (FIFO per key), by connection, and by deadline (a lazy heap)."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[Waiter, None]] = {}
        self._by_conn: dict[int, dict[Waiter, None]] = {}
        self._heap: list[tuple[float, int, Waiter]] = []
        self._dead = 0
        self._live = 0
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Number of live parked waiters."""
        return self._live

    def park(self, waiter: Waiter, key: str | None) -> None:
        """Index a new waiter under ``key`` (``None``: under no key, for a waiter its owner
        wakes by other means), its connection and its deadline."""
        waiter.seq = next(self._seq)
        self._live += 1
        self._by_conn.setdefault(waiter.conn_id, {})[waiter] = None
        heapq.heappush(self._heap, (waiter.deadline, waiter.seq, waiter))
        if key is not None:
            self.reindex(waiter, key)

    def reindex(self, waiter: Waiter, key: str) -> None:
        """Move a live waiter to be woken by ``key`` instead (it still misses that key)."""
        self._unindex_key(waiter)
        waiter.key = key
        self._by_key.setdefault(key, {})[waiter] = None

    def has_waiters(self, key: str) -> bool:
        """Whether any waiter is indexed under ``key``."""
        return key in self._by_key

    def take(self, key: str) -> list[Waiter]:
        """Remove and return the waiters indexed under ``key``, oldest first.

        They stay live (parked): the caller either finishes them with :meth:`finish` or
        indexes them again with :meth:`reindex`.
        """
        waiters = self._by_key.pop(key, None)
        if not waiters:
            return []
        for w in waiters:
            w.key = None
        return list(waiters)

    def first(self, key: str) -> Waiter | None:
        """The oldest waiter indexed under ``key``, left in place."""
        waiters = self._by_key.get(key)
        return next(iter(waiters)) if waiters else None

    def finish(self, waiter: Waiter) -> None:
        """Forget a waiter that was answered (its heap entry becomes dead)."""
        if waiter.done:
            return
        self._forget(waiter)
        self._dead += 1
        if self._dead > 64 and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].done]
            heapq.heapify(self._heap)
            self._dead = 0

    def drop_connection(self, conn_id: int) -> int:
        """Forget every waiter of ``conn_id``; returns how many there were."""
        waiters = self._by_conn.pop(conn_id, None)
        if not waiters:
            return 0
        for w in list(waiters):
            self.finish(w)
        return len(waiters)

    def live(self) -> list[Waiter]:
        """Every live parked waiter (for inspection; not a hot path)."""
        return [w for waiters in self._by_conn.values() for w in waiters]

    def pop_expired(self, now: float) -> list[Waiter]:
        """Remove and return the live waiters whose deadline is ``<= now``, earliest first."""
        expired: list[Waiter] = []
        while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
            _, _, w = heapq.heappop(self._heap)
            if w.done:
                self._dead -= 1
                continue
            self._forget(w)
            expired.append(w)
        return expired

    def oldest(self) -> Waiter | None:
        """The live waiter parked longest ago (a scan: for rare progress reports)."""
        return min(
            (w for ws in self._by_conn.values() for w in ws),
            key=lambda w: w.parked_at,
            default=None,
        )

    def next_deadline(self) -> float | None:
        """The earliest deadline of a live waiter, or ``None`` when nothing is parked."""
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def _forget(self, waiter: Waiter) -> None:
        waiter.done = True
        self._live -= 1
        self._unindex_key(waiter)
        conn = self._by_conn.get(waiter.conn_id)
        if conn is not None:
            conn.pop(waiter, None)
            if not conn:
                del self._by_conn[waiter.conn_id]

    def _unindex_key(self, waiter: Waiter) -> None:
        if waiter.key is None:
            return
        waiters = self._by_key.get(waiter.key)
        if waiters is not None:
            waiters.pop(waiter, None)
            if not waiters:
                del self._by_key[waiter.key]
        waiter.key = None
