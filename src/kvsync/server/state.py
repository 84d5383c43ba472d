"""The store's decisions as a pure state machine: a request goes in, replies come out.

:class:`StoreState` holds the keys, values and queues and answers the Store API messages of
:mod:`kvsync.protocol.messages`. It does no I/O and reads no clock: the caller passes
``now`` (``time.monotonic()`` seconds). Blocking requests (``Wait``, blocking ``Get`` /
``MultiGet``, blocking ``QueuePop``) are parked (see :mod:`kvsync.server.waiters`) and
answered later, from the ``handle()`` call that satisfies them (possibly for another
connection) or from ``expire()`` once their deadline passed. The event loop of
:mod:`kvsync.server` and the in-process :class:`kvsync.store.HashStore` drive the same
object. :class:`Router` dispatches by message type to several such logics.

Semantics follow the reference document where it speaks (a missing key reads as ``b""``
unless the read blocks; ``delete_key`` says whether it deleted) and PyTorch's ``TCPStore``
otherwise. A key holds either a value or a non-empty queue; a queue that is popped empty
disappears. Values may be ``memoryview`` slices of received frames: they are kept as given,
never copied, and never mutated (``append`` builds new bytes).

Example:
    >>> from kvsync.server.state import StoreState
    >>> from kvsync.protocol.messages import Get, Set, Wait
    >>> st = StoreState()
    >>> st.handle(1, 10, Wait(keys=("a",), timeout_ms=5000), now=0.0)
    []
    >>> [(o.conn_id, o.request_id, o.reply) for o in st.handle(2, 20, Set("a", b"x"), now=1.0)]
    [(2, 20, OkReply()), (1, 10, OkReply())]
    >>> bytes(st.handle(2, 21, Get("a", block=False, timeout_ms=0), now=1.0)[0].reply.value)
    b'x'
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from kvsync import defaults
from kvsync.errors import ErrorCode
from kvsync.protocol.messages import (
    Add,
    Append,
    Barrier,
    Buffer,
    Check,
    CompareSet,
    DeleteKey,
    ErrorReply,
    Get,
    IntReply,
    KeysReply,
    ListKeys,
    MultiGet,
    MultiSet,
    NumKeys,
    OkReply,
    Ping,
    QueueLen,
    QueuePop,
    QueuePush,
    Set,
    ValueReply,
    ValuesReply,
    Wait,
)
from kvsync.protocol.torch_requests import CancelWaits, CountBarrier
from kvsync.protocol.wire_keys import BarrierArrival, barrier_counter
from kvsync.server.router import Outgoing, RejectError, Router, ServerLogic
from kvsync.server.waiters import Waiter, WaiterIndex

__all__ = ["Outgoing", "Router", "ServerLogic", "StoreState"]

logger = logging.getLogger(__name__)

#: ``add`` refuses values longer than this many bytes without parsing (or copying) them.
_MAX_INT_TEXT = 4000
_OK = OkReply()  # immutable: one instance answers every request that has no result


def _nbytes(value: Buffer) -> int:
    return value.nbytes if isinstance(value, memoryview) else len(value)


def _wrong_kind(key: str, holds: str, wanted: str) -> RejectError:
    return RejectError(ErrorCode.INVALID_ARGUMENT, f"key {key!r} holds a {holds}, not a {wanted}")


def _check_timeout(timeout_ms: int) -> None:
    if timeout_ms < 0:
        raise RejectError(ErrorCode.INVALID_ARGUMENT, f"timeout_ms is {timeout_ms}, must be >= 0")


class _BarrierWait(NamedTuple):
    """A parked :class:`Barrier`: waits, like a ``Wait``, for its generation's done flag
    (a named tuple: one is made for every arrival but the last)."""

    barrier: Barrier
    keys: tuple[str]  # the generation's done flag (BarrierArrival.flag)
    generation: int


def _preview(value: Buffer, limit: int = 32) -> str:
    head = bytes(value[:limit]) if _nbytes(value) > limit else bytes(value)
    return repr(head) + ("..." if _nbytes(value) > limit else "")


class StoreState:
    """Keys, values, queues and parked requests of one store (see the module docstring).

    Args:
        max_key_bytes: longest key accepted, in UTF-8 bytes.
        max_value_bytes: largest value accepted (also the cap on an ``append`` result).

    Example:
        >>> from kvsync.protocol.messages import Add
        >>> st = StoreState()
        >>> st.handle(1, 1, Add("n", 5), now=0.0)[0].reply
        IntReply(value=5)
        >>> st.handle(1, 2, Add("n", -2), now=0.0)[0].reply
        IntReply(value=3)
    """

    #: The request types this logic answers (for building a :class:`Router`).
    MESSAGE_TYPES: tuple[type, ...] = (
        Set, Get, Add, CompareSet, Wait, Check, DeleteKey, NumKeys, MultiGet, MultiSet,
        Append, ListKeys, QueuePush, QueuePop, QueueLen, Ping, Barrier, CancelWaits,
        CountBarrier,
    )  # fmt: skip

    def __init__(
        self,
        *,
        max_key_bytes: int = defaults.MAX_KEY_BYTES,
        max_value_bytes: int = defaults.MAX_VALUE_BYTES,
        progress_seconds: float = defaults.PROGRESS_LOG_SECONDS,
    ) -> None:
        self.max_key_bytes = max_key_bytes
        self.max_value_bytes = max_value_bytes
        self._progress_every = progress_seconds  # log the longest wait this often (0: never)
        self._last_progress = 0.0
        self._progress_at: float | None = None  # when to look at the progress line next
        self._values: dict[str, Buffer] = {}
        self._queues: dict[str, deque[Buffer]] = {}
        self._waiters = WaiterIndex()  # Wait, blocking Get/MultiGet: by first missing key
        self._pops = WaiterIndex()  # blocking QueuePop: by queue key
        #: torch BARRIER waiters (parked in _waiters under no key) by counter key: a heap
        #: by world size, so an arrival answers those it completes without a scan
        self._counts: dict[str, list[tuple[int, int, Waiter]]] = {}
        #: the ranks (``-1``: unknown) of a parked barrier generation's arrivals, by its
        #: done flag; forgotten once the generation completes or nobody waits for it
        self._arrivals: dict[str, list[int]] = {}
        self._out: list[Outgoing] = []
        self._handlers: dict[type, Callable[[int, int, object, float], object | None]] = {
            Set: self._set,
            Get: self._get,
            Add: self._add,
            CompareSet: self._compare_set,
            Wait: self._wait,
            Check: self._check,
            DeleteKey: self._delete_key,
            NumKeys: self._num_keys,
            MultiGet: self._multi_get,
            MultiSet: self._multi_set,
            Append: self._append,
            ListKeys: self._list_keys,
            QueuePush: self._queue_push,
            QueuePop: self._queue_pop,
            QueueLen: self._queue_len,
            Ping: self._ping,
            Barrier: self._barrier,
            CancelWaits: self._cancel_waits,
            CountBarrier: self._count_barrier,
        }

    # --- ServerLogic ------------------------------------------------------------------

    def handle(self, conn_id: int, request_id: int, msg: object, now: float) -> list[Outgoing]:
        """Apply one request. Returns its reply (unless parked) first, then wake-ups.

        Raises:
            Nothing: bad requests are answered with an :class:`ErrorReply`.
        """
        handler = self._handlers.get(type(msg))
        if handler is None:
            text = f"the store does not handle {type(msg).__name__} messages"
            return [Outgoing(conn_id, request_id, ErrorReply(ErrorCode.UNKNOWN_OPCODE, text))]
        if self._out:  # left over by a handler that failed: never sent
            self._out = []
        try:
            reply = handler(conn_id, request_id, msg, now)
        except RejectError as exc:
            reply = exc.reply()
        wakeups = self._out
        if not wakeups:  # the usual: just the reply (tuple.__new__: Outgoing(...) made in C)
            return [] if reply is None else [tuple.__new__(Outgoing, (conn_id, request_id, reply))]
        self._out = []
        if reply is not None:
            wakeups.insert(0, Outgoing(conn_id, request_id, reply))
        return wakeups

    def expire(self, now: float) -> list[Outgoing]:
        """Answer parked requests past their deadline with TIMEOUT errors naming what is
        missing and how long they waited."""
        expired = [*self._waiters.pop_expired(now), *self._pops.pop_expired(now)]
        out = [Outgoing(w.conn_id, w.request_id, self._timeout_reply(w, now)) for w in expired]
        if expired and self._arrivals:
            self._forget_arrivals()
        if self._progress_at is not None and now >= self._progress_at:
            self._progress(now)
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of a parked request (or of its next "still waiting" log
        line), ``None`` when nothing is parked. (Constant time: the loop asks every turn.)"""
        if not self._waiters and not self._pops:  # the usual: nothing parked
            self._progress_at = None  # the next park schedules it again
            return None
        times = (self._waiters.next_deadline(), self._pops.next_deadline(), self._progress_at)
        return min((t for t in times if t is not None), default=None)

    def _progress(self, now: float) -> None:
        """Log the "still waiting" line if it is due, naming the longest-waiting request, and
        schedule the next look (a scan of the parked requests: once per line at most)."""
        oldest = min((w for w in (self._waiters.oldest(), self._pops.oldest()) if w),
                     key=lambda w: w.parked_at, default=None)  # fmt: skip
        if oldest is None:
            self._progress_at = None  # the next park schedules it again
            return
        due = max(oldest.parked_at, self._last_progress) + self._progress_every
        if now >= due:
            self._last_progress = now
            logger.info("%d request(s) parked; the longest waiting: %s", self.parked,
                        self._wait_text(oldest, now, timed_out=False))  # fmt: skip
            due = now + self._progress_every
        self._progress_at = due

    def drop_connection(self, conn_id: int) -> None:
        """Forget the parked requests of ``conn_id``."""
        n = self._waiters.drop_connection(conn_id) + self._pops.drop_connection(conn_id)
        if n and self._arrivals:
            self._forget_arrivals()
        if n:
            logger.debug("dropped %d parked request(s) of connection %d", n, conn_id)

    @property
    def parked(self) -> int:
        """How many requests are parked right now."""
        return len(self._waiters) + len(self._pops)

    def waiting(self, now: float) -> list[dict[str, Any]]:
        """The parked requests, longest waiting first: connection, request id, operation,
        the keys (or barrier, or queue) it waits for, seconds waited and its timeout.

        Example:
            >>> from kvsync.protocol.messages import Wait
            >>> st = StoreState(); _ = st.handle(4, 1, Wait(("a",), 5000), now=0.0)
            >>> [(w["op"], w["keys"], w["waited_s"], w["timeout_s"]) for w in st.waiting(2.0)]
            [('wait', ['a'], 2.0, 5.0)]
        """
        out = [
            {
                "conn": w.conn_id,
                "request": w.request_id,
                **self._waits_for(w.msg),
                "waited_s": round(now - w.parked_at, 3),
                "timeout_s": round(w.deadline - w.parked_at, 3),
            }
            for w in [*self._waiters.live(), *self._pops.live()]
        ]
        return sorted(out, key=lambda d: -d["waited_s"])

    def _waits_for(self, msg: object) -> dict[str, Any]:
        """What a parked request waits for: its operation and keys still missing."""
        if isinstance(msg, QueuePop | Get):
            return {"op": "queue_pop" if isinstance(msg, QueuePop) else "get", "keys": [msg.key]}
        if isinstance(msg, _BarrierWait):
            b = msg.barrier
            return {
                "op": "barrier",
                "keys": [b.key],
                "world_size": b.world_size,
                "missing_ranks": self._missing_ranks(msg),
            }
        if isinstance(msg, CountBarrier):  # torch's protocol does not say who arrived
            return {"op": "barrier", "keys": [msg.key], "world_size": msg.world_size,
                    "missing_ranks": None}  # fmt: skip
        keys: tuple[str, ...] = msg.keys  # type: ignore[attr-defined]
        missing = [k for k in keys if not self._exists(k)]
        return {"op": "wait" if isinstance(msg, Wait) else "multi_get", "keys": missing}

    # --- checks and helpers -------------------------------------------------------------

    def _check_key(self, key: str) -> None:
        if len(key) * 4 > self.max_key_bytes and len(key.encode()) > self.max_key_bytes:
            shown = repr(key) if len(key) <= 64 else f"{key[:64]!r}..."
            raise RejectError(
                ErrorCode.LIMIT_EXCEEDED,
                f"key {shown} is {len(key.encode())} bytes, over the limit of "
                f"{self.max_key_bytes} bytes",
            )

    def _check_keys(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._check_key(key)

    def _check_value(self, key: str, size: int) -> None:
        if size > self.max_value_bytes:
            raise RejectError(
                ErrorCode.LIMIT_EXCEEDED,
                f"value for key {key!r} is {size} bytes, over the limit of "
                f"{self.max_value_bytes} bytes",
            )

    def _exists(self, key: str) -> bool:
        return key in self._values or key in self._queues

    def _value_of(self, key: str) -> Buffer | None:
        if key in self._queues:
            raise _wrong_kind(key, "queue", "value")
        return self._values.get(key)

    def _store(self, key: str, value: Buffer) -> None:
        """Set a value (replacing a queue) and wake what waited for the key."""
        if self._queues:
            self._queues.pop(key, None)
        self._values[key] = value
        if self._waiters.has_waiters(key):
            self._wake_keys(key)
        if key in self._counts:
            self._wake_counts(key)

    def _first_missing(self, keys: tuple[str, ...]) -> str | None:
        """The first of ``keys`` that does not exist, ``None`` if all do (a loop, not a
        generator: this runs for every parked or woken request)."""
        for k in keys:
            if not self._exists(k):
                return k
        return None

    def _wake_counts(self, key: str) -> None:
        """Answer the torch BARRIER waiters of counter ``key`` whose world size its value
        reached (a value that is not a decimal integer keeps them waiting)."""
        heap = self._counts[key]
        try:
            count = self._counter(key)
        except RejectError:
            return
        while heap and (heap[0][2].done or heap[0][0] <= count):
            w = heapq.heappop(heap)[2]
            if not w.done:  # (else timed out or its connection closed meanwhile)
                self._waiters.finish(w)
                self._out.append(Outgoing(w.conn_id, w.request_id, _OK))
        if not heap:
            del self._counts[key]

    def _wake_keys(self, key: str) -> None:
        out, waiters = self._out, self._waiters
        for w in waiters.take(key):
            msg = w.msg
            if type(msg) is _BarrierWait:  # its one key, the flag, was set: generation done
                self._arrivals.pop(msg.keys[0], None)
                reply: object = _OK
            else:
                keys = (msg.key,) if isinstance(msg, Get) else msg.keys  # type: ignore[attr-defined]
                missing = self._first_missing(keys)
                if missing is not None:
                    waiters.reindex(w, missing)
                    continue
                reply = self._answer(msg)
            waiters.finish(w)
            out.append(tuple.__new__(Outgoing, (w.conn_id, w.request_id, reply)))

    def _answer(self, msg: object) -> object:
        """The reply of a satisfied Wait / Get / MultiGet."""
        try:
            if isinstance(msg, Get):
                return ValueReply(self._value_of(msg.key) or b"")
            if isinstance(msg, MultiGet):
                return ValuesReply(tuple(self._value_of(k) or b"" for k in msg.keys))
        except RejectError as exc:  # a key came into existence as a queue
            return exc.reply()
        return _OK

    def _park(self, index: WaiterIndex, conn_id: int, request_id: int, msg: object,
              key: str | None, timeout_ms: int, now: float) -> Waiter:  # fmt: skip
        w = Waiter(conn_id, request_id, msg, parked_at=now, deadline=now + timeout_ms / 1000.0)
        index.park(w, key)
        if self._progress_at is None and self._progress_every > 0:
            self._progress_at = now + self._progress_every
        return w

    def _timeout_reply(self, w: Waiter, now: float) -> ErrorReply:
        return ErrorReply(ErrorCode.TIMEOUT, self._wait_text(w, now, timed_out=True))

    def _wait_text(self, w: Waiter, now: float, *, timed_out: bool) -> str:
        """What a parked request waits for and what is still missing."""
        seconds = f"{now - w.parked_at:.2f} s"
        waited = f"{'timed out after' if timed_out else 'waiting for'} {seconds}"
        msg = w.msg
        if isinstance(msg, QueuePop):
            text = f"queue_pop of {msg.key!r} {waited}; the queue is still empty"
        elif isinstance(msg, Get):
            text = f"get of key {msg.key!r} {waited}; the key is still missing"
        elif isinstance(msg, _BarrierWait):
            b = msg.barrier
            arrived = self._arrived(msg)
            absent = self._missing_ranks(msg)
            who = (
                "ranks unknown"
                if absent is None
                else "missing ranks " + ", ".join(map(str, absent))
            )
            text = (
                f"{'?' if arrived is None else arrived}/{b.world_size} ranks reached"
                f" barrier {b.key!r} after {seconds}; {who}"
            )
        elif isinstance(msg, CountBarrier):
            text = (
                f"barrier {msg.key!r} {waited}; its count is still below {msg.world_size}"
                "; ranks unknown (torch's protocol does not send them)"
            )
        else:
            keys: tuple[str, ...] = msg.keys  # type: ignore[attr-defined]
            missing = [k for k in keys if not self._exists(k)]
            op = "wait for" if isinstance(msg, Wait) else "multi_get of"
            text = f"{op} keys {list(keys)} {waited}; still missing: {missing}"
        return text

    def _arrived(self, wait: _BarrierWait) -> int | None:
        """How many callers reached ``wait``'s generation (``None``: its counter was
        overwritten meanwhile)."""
        b = wait.barrier
        try:
            count = self._counter(barrier_counter(b.key)) - wait.generation * b.world_size
        except RejectError:
            return None
        return min(count, b.world_size)

    def _missing_ranks(self, wait: _BarrierWait) -> list[int] | None:
        """The ranks in ``range(world_size)`` that have not reached ``wait``'s generation;
        ``None`` when that cannot be told: an arrival did not say its rank (a client
        without ``RANK``, or the add/wait barrier of :mod:`kvsync.store.sync`), said one
        outside the range or twice, or its record was lost."""
        size = wait.barrier.world_size
        ranks = self._arrivals.get(wait.keys[0], [])
        known = {r for r in ranks if 0 <= r < size}
        if len(known) != len(ranks) or len(ranks) != self._arrived(wait):
            return None
        return [r for r in range(size) if r not in known]

    def _forget_arrivals(self) -> None:
        """Drop the arrival records of barrier generations nobody is parked on any more
        (after timeouts and lost connections; completed ones are dropped at once)."""
        for flag in [f for f in self._arrivals if not self._waiters.has_waiters(f)]:
            del self._arrivals[flag]

    def _block_on(self, conn_id: int, request_id: int, msg: object, keys: tuple[str, ...],
                  timeout_ms: int, now: float) -> object | None:  # fmt: skip
        """Answer now if every key exists, else park (or time out at once if timeout 0)."""
        missing = self._first_missing(keys)
        if missing is None:
            return self._answer(msg)
        _check_timeout(timeout_ms)
        if timeout_ms == 0:
            return self._timeout_reply(Waiter(conn_id, request_id, msg, now, now), now)
        self._park(self._waiters, conn_id, request_id, msg, missing, timeout_ms, now)
        return None

    # --- handlers -----------------------------------------------------------------------

    def _set(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, Set)
        key, value = msg.key, msg.value
        if len(key) * 4 > self.max_key_bytes:  # only then can the key be too long
            self._check_key(key)
        if (value.nbytes if type(value) is memoryview else len(value)) > self.max_value_bytes:
            self._check_value(key, _nbytes(value))
        self._store(key, value)
        return _OK

    def _get(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, Get)
        key = msg.key
        if len(key) * 4 > self.max_key_bytes:
            self._check_key(key)
        if not msg.block:
            return ValueReply(self._value_of(key) or b"")
        return self._block_on(conn_id, request_id, msg, (msg.key,), msg.timeout_ms, now)

    def _multi_get(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, MultiGet)
        self._check_keys(msg.keys)
        if not msg.block:
            return ValuesReply(tuple(self._value_of(k) or b"" for k in msg.keys))
        return self._block_on(conn_id, request_id, msg, msg.keys, msg.timeout_ms, now)

    def _wait(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, Wait)
        self._check_keys(msg.keys)
        return self._block_on(conn_id, request_id, msg, msg.keys, msg.timeout_ms, now)

    def _counter(self, key: str) -> int:
        """The integer stored under ``key`` as decimal text (0 when missing)."""
        current = self._value_of(key)
        if current is None:
            return 0
        try:
            if _nbytes(current) > _MAX_INT_TEXT:
                raise ValueError("too long to be a counter")
            return int(bytes(current))
        except ValueError:
            raise RejectError(
                ErrorCode.INVALID_ARGUMENT,
                f"cannot add to key {key!r}: its value {_preview(current)} "
                "is not a decimal integer",
            ) from None

    def _add(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, Add)
        self._check_key(msg.key)
        result = self._counter(msg.key) + msg.amount
        self._store(msg.key, str(result).encode())
        return IntReply(result)

    def _compare_set(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, CompareSet)
        self._check_key(msg.key)
        self._check_value(msg.key, _nbytes(msg.desired))
        current = self._value_of(msg.key)
        if current is None:
            if _nbytes(msg.expected) != 0:
                return ValueReply(msg.expected)
        elif current != msg.expected:
            return ValueReply(current)
        self._store(msg.key, msg.desired)
        return ValueReply(msg.desired)

    def _check(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, Check)
        self._check_keys(msg.keys)
        return IntReply(int(all(self._exists(k) for k in msg.keys)))

    def _delete_key(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, DeleteKey)
        self._check_key(msg.key)
        found = self._values.pop(msg.key, None) is not None
        found = self._queues.pop(msg.key, None) is not None or found
        return IntReply(int(found))

    def _num_keys(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        return IntReply(len(self._values) + len(self._queues))

    def _list_keys(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        return KeysReply((*self._values, *self._queues))

    def _multi_set(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, MultiSet)
        if len(msg.keys) != len(msg.values):
            raise RejectError(
                ErrorCode.INVALID_ARGUMENT,
                f"multi_set got {len(msg.keys)} keys but {len(msg.values)} values",
            )
        for key, value in zip(msg.keys, msg.values, strict=True):
            self._check_key(key)
            self._check_value(key, _nbytes(value))
        for key, value in zip(msg.keys, msg.values, strict=True):
            self._store(key, value)
        return _OK

    def _append(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, Append)
        self._check_key(msg.key)
        current = self._value_of(msg.key)
        size = _nbytes(msg.value) + (0 if current is None else _nbytes(current))
        self._check_value(msg.key, size)
        self._store(msg.key, msg.value if current is None else b"".join((current, msg.value)))
        return _OK

    def _queue_push(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, QueuePush)
        self._check_key(msg.key)
        self._check_value(msg.key, _nbytes(msg.value))
        if msg.key in self._values:
            raise _wrong_kind(msg.key, "value", "queue")
        w = self._pops.first(msg.key)
        if w is not None:  # hand the item straight to the oldest parked pop
            self._pops.finish(w)
            self._out.append(Outgoing(w.conn_id, w.request_id, ValueReply(msg.value)))
            return _OK
        queue = self._queues.get(msg.key)
        if queue is None:
            self._queues[msg.key] = deque((msg.value,))
            if self._waiters.has_waiters(msg.key):
                self._wake_keys(msg.key)
        else:
            queue.append(msg.value)
        return _OK

    def _queue_pop(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, QueuePop)
        self._check_key(msg.key)
        if msg.key in self._values:
            raise _wrong_kind(msg.key, "value", "queue")
        queue = self._queues.get(msg.key)
        if queue:
            item = queue.popleft()
            if not queue:
                del self._queues[msg.key]
            return ValueReply(item)
        if not msg.block:
            raise RejectError(ErrorCode.INVALID_ARGUMENT, f"queue {msg.key!r} is empty")
        _check_timeout(msg.timeout_ms)
        if msg.timeout_ms == 0:
            return self._timeout_reply(Waiter(conn_id, request_id, msg, now, now), now)
        self._park(self._pops, conn_id, request_id, msg, msg.key, msg.timeout_ms, now)
        return None

    def _queue_len(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        assert isinstance(msg, QueueLen)
        self._check_key(msg.key)
        return IntReply(len(self._queues.get(msg.key, ())))

    def _ping(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        return _OK

    def _barrier(self, conn_id: int, request_id: int, msg: object, now: float) -> object | None:
        """Count this arrival; the one completing its generation sets the done flag (and
        so answers the parked others), everyone else waits for that flag."""
        assert isinstance(msg, Barrier)
        size = msg.world_size
        if size < 1:
            raise RejectError(
                ErrorCode.INVALID_ARGUMENT,
                f"barrier {msg.key!r}: world_size is {size}, must be >= 1",
            )
        _check_timeout(msg.timeout_ms)
        counter = barrier_counter(msg.key)
        self._check_key(counter)
        count = self._counter(counter) + 1
        arrival = BarrierArrival.of(msg.key, count, size)
        self._check_key(arrival.flag)  # every check before the first change
        self._store(counter, str(count).encode())
        if arrival.last:  # the last of its generation: release the others
            self._arrivals.pop(arrival.flag, None)
            self._store(arrival.flag, b"1")
            return _OK
        self._arrivals.setdefault(arrival.flag, []).append(msg.rank)
        wait = _BarrierWait(msg, (arrival.flag,), arrival.generation)
        reply = self._block_on(conn_id, request_id, wait, wait.keys, msg.timeout_ms, now)
        if reply is not None and not self._waiters.has_waiters(arrival.flag):
            del self._arrivals[arrival.flag]  # answered at once (timeout 0): not parked
        return reply

    # --- requests only torch's protocol makes (kvsync.protocol.torch_requests) ----------

    def _cancel_waits(self, conn_id: int, request_id: int, msg: object, now: float) -> object:
        """torch's CANCEL_WAIT: forget what this connection has parked."""
        self.drop_connection(conn_id)
        return _OK

    def _count_barrier(self, conn_id: int, request_id: int, msg: object, now: float) -> object:
        """torch's BARRIER: count this arrival at ``key``; answered once the count reaches
        ``world_size`` (every parked caller is woken by the store that completes it)."""
        assert isinstance(msg, CountBarrier)
        self._check_key(msg.key)
        _check_timeout(msg.timeout_ms)
        count = self._counter(msg.key) + 1
        self._store(msg.key, str(count).encode())
        if count >= msg.world_size:
            return _OK
        if msg.timeout_ms == 0:
            return self._timeout_reply(Waiter(conn_id, request_id, msg, now, now), now)
        w = self._park(self._waiters, conn_id, request_id, msg, None, msg.timeout_ms, now)
        heap = self._counts.setdefault(msg.key, [])
        if len(heap) >= 64 and len(heap) & (len(heap) - 1) == 0:  # at 64, 128, 256, ...:
            heap[:] = [e for e in heap if not e[2].done]  # drop the timed-out (amortized)
            heapq.heapify(heap)
        heapq.heappush(heap, (msg.world_size, w.seq, w))
        return None
