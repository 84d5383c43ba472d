"""The worker's communication thread: pushes and pulls sent in priority order, batched.

Strategy. ``push`` only queues an :class:`Op` and returns, so sending overlaps the caller's
next computation. Pushes are *held*: they wait in the queue until a call needs them sent
(an op that is not held, such as a pull, or :meth:`Comm.flush`), until the held ops carry
:data:`BATCH_BYTES` (a full bucket), or until the oldest waited
``PS_PUSH_LINGER_SECONDS``; so pushes of one key per call (MXNet's gluon ``Trainer``) still
travel as one message per server and bucket. One sender thread pops queued ops highest
``priority`` first (a later op of the same key never overtakes an earlier one: its priority
is capped by the pending one's, and ties go in program order), packs consecutive ops of one
kind for one server into one message of at most :data:`BATCH_BYTES`, and *submits* it on
that server's pipelined link without waiting for the reply (a shared-memory push is copied
into its segment there, so one bucket's copy overlaps the server's work on the last). A
call that waits next (a pull, :meth:`Comm.flush`) sends the queue itself when the sender
thread is idle, saving a thread hand-off, which on a busy machine costs more than the
sending. One reaper thread per server collects replies in order: a pull's arrays are
copied into the caller's output views, a failed push is remembered and raised by the
worker's next call (a message the server refuses fails all its keys; the error names the
key at fault). A pull sent after a push of the same key travels on the same connection, so
the server sees it after the push.

Arrays are never copied on the way out: a pushed array is referenced until its message
has been handed to the link, so the caller must not modify it before its next pull or
:meth:`Comm.flush` (MXNet's engine enforces the same rule with dependencies).

Example:
    >>> comm = Comm([], timeout=1.0)
    >>> comm.flush(1.0)
    >>> comm.close()
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kvsync import defaults
from kvsync.errors import (
    ErrorCode,
    KVSyncError,
    PeerLostError,
    StoreTimeoutError,
    error_from_code,
)
from kvsync.kv.shm import SharedSegments
from kvsync.protocol.messages import ErrorReply
from kvsync.protocol.ps_messages import (
    PSPackedReply,
    PSPull,
    PSPullRows,
    PSPullShm,
    PSPush,
    PSPushPacked,
    PSPushRows,
    PSPushShm,
    PSShmReply,
    PSValuesReply,
)
from kvsync.protocol.wire_keys import packable

__all__ = ["BATCH_BYTES", "BATCH_KEYS", "Comm", "Latch", "Link", "Op"]

logger = logging.getLogger(__name__)

#: Most bytes of array data one batched message carries (bigger arrays travel alone), and
#: the held pushes that are sent without waiting for a call that needs them.
BATCH_BYTES = defaults.PS_CHUNK_BYTES
#: Most keys one batched message carries.
BATCH_KEYS = 4096
#: A socket pull of at least this many bytes travels alone, so its reply is received
#: straight into the caller's array (a reply of several arrays lands in a buffer of its
#: own first and is copied: for big arrays that copy costs more than a round trip).
LAND_BYTES = 256 << 10


class Link(Protocol):
    """A pipelined connection to one server (what :class:`kvsync.client.Client` offers)."""

    def submit(self, msg: object, into: np.ndarray | None = None) -> int:
        """Send ``msg``; return its request id without waiting for the reply (a reply of one
        array matching ``into`` may be received straight into it)."""
        ...

    def result(self, request_id: int, timeout: float | None = None) -> object:
        """The reply to ``request_id`` (raising the mapped error for an error reply)."""
        ...


def _better(new: BaseException, old: BaseException) -> bool:
    """Whether ``new`` explains a failure better than ``old``: a lost link to a server (the
    cause) beats a server's report that some other rank disconnected (often the effect)."""
    return (
        isinstance(old, PeerLostError)
        and isinstance(new, ConnectionError)
        and not (isinstance(new, PeerLostError))
    )


class Latch:
    """Completion of the ops of one call: counts down; :meth:`wait` raises the first error.

    Example:
        >>> latch = Latch(2)
        >>> latch.set_result(None); latch.set_result(None)
        >>> latch.wait(0.1)
    """

    __slots__ = ("_cv", "_exc", "_left")

    def __init__(self, count: int) -> None:
        self._left = count
        self._exc: BaseException | None = None
        self._cv = threading.Condition()

    def set_result(self, value: object) -> None:
        """One op succeeded."""
        self._count_down(None)

    def count_down(self, n: int) -> None:
        """``n`` ops succeeded."""
        with self._cv:
            self._left -= n
            if self._left <= 0:
                self._cv.notify_all()

    def set_exception(self, exc: BaseException) -> None:
        """One op failed with ``exc``."""
        self._count_down(exc)

    def _count_down(self, exc: BaseException | None) -> None:
        with self._cv:
            self._left -= 1
            if exc is not None and (self._exc is None or _better(exc, self._exc)):
                self._exc = exc
            if self._left <= 0:
                self._cv.notify_all()

    def done(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every op; whether they all finished."""
        if self._left <= 0:  # finished (the count only goes down): no lock needed
            return True
        with self._cv:
            return self._cv.wait_for(lambda: self._left <= 0, timeout)

    def wait(self, timeout: float) -> None:
        """Wait for every op; raise the first error.

        Raises:
            StoreTimeoutError: not all ops finished within ``timeout`` seconds.
        """
        with self._cv:
            if not self._cv.wait_for(lambda: self._left <= 0, timeout):
                raise StoreTimeoutError(f"{self._left} pulls unanswered after {timeout} s")
        if self._exc is not None:
            raise self._exc


@dataclass(eq=False, slots=True)
class Op:
    """One key's part of a push or pull for one server."""

    kind: str  # "push" | "cpush" (compressed) | "pull" | "push_rows" | "pull_rows"
    # | "push_shm" | "pull_shm" (shared memory, see kvsync.kv.shm)
    server: int
    wire: str
    value: np.ndarray | None = None  # pushed array / pulled rows' ids / row-sparse data
    rows: np.ndarray | None = None
    out: np.ndarray | None = None  # where a pulled value is copied (None: keep it)
    path: str = ""  # push_shm: the worker's segment holding the slice
    lo: int = 0  # first row within the server's slice
    count: int = 1  # rows
    future: Future[Any] | Latch | None = None
    nbytes: int = 0  # array bytes on the socket: what one turn of the sender takes is cut by it
    shm: int = 0  # bytes through shared memory (push_shm: copied from value into out)
    after: Latch | None = None  # push_shm: the last push from the segment, read first
    settled: bool = False
    held: bool = False  # queued by a push: may wait for more (see the module docstring)


#: Kinds whose ops for one server travel together (one message, one reply); so a step's
#: shared-memory pushes and pulls cost one round trip per server, not one per key.
_BATCHABLE = frozenset({"push", "cpush", "pull", "push_shm", "pull_shm"})


class Comm:
    """The sender and reaper threads of one worker, over one :class:`Link` per server.

    Args:
        links: one link per server, indexed by server number.
        timeout: seconds a parked pull may wait on the server (sent as ``timeout_ms``).
    """

    def __init__(
        self, links: Sequence[Link], *, timeout: float, shared: SharedSegments | None = None
    ) -> None:
        self._links = list(links)
        self._shared = shared or SharedSegments()
        self._timeout = timeout
        self._cv = threading.Condition()
        self._heap: list[tuple[int, int, Op]] = []
        self._seq = itertools.count()
        self._pending: dict[str, tuple[int, int]] = {}  # wire -> (count queued, min prio)
        self._held = 0  # bytes of held ops in the heap
        self._held_n = 0  # and their number
        self._held_since = 0.0  # when the first of them was queued
        self._release = False  # send everything queued, held or not
        self._sending = threading.Lock()  # held by the one thread sending (order per link)
        self._linger = defaults.PS_PUSH_LINGER_SECONDS
        self._outstanding = 0
        self._errors: list[BaseException] = []
        self._closing = False
        self._inflight: list[queue.SimpleQueue[tuple[int, list[Op]] | None]] = [
            queue.SimpleQueue() for _ in self._links
        ]
        self._threads = [threading.Thread(target=self._send_loop, name="kvsync-comm", daemon=True)]
        self._threads += [
            threading.Thread(
                target=self._reap_loop, args=(s,), name=f"kvsync-reap-{s}", daemon=True
            )
            for s in range(len(self._links))
        ]
        for t in self._threads:
            t.start()

    # --- queueing (caller's thread) ---------------------------------------------------------

    def enqueue_many(self, ops: Sequence[Op], priority: int, *, hold: bool = False) -> None:
        """Queue several ops of one call at ``priority`` (one lock round trip).

        With ``hold`` (pushes) they may wait for more ops of a bucket; otherwise they and
        everything queued before them are sent at once.

        Raises:
            KVSyncError: the KVStore is closed, or the first error a background push met
                (raised once, before anything is queued).
        """
        self.raise_errors()
        with self._cv:
            if self._closing:
                raise KVSyncError("the KVStore is closed")
            pending, heap, seq = self._pending, self._heap, self._seq
            wake = not heap or not hold
            held = self._held
            if hold:
                if not self._held_n:
                    self._held_since = time.monotonic()
                self._held_n += len(ops)
            for op in ops:
                count, prio = pending.get(op.wire, (0, priority))
                prio = min(prio, priority) if count else priority
                pending[op.wire] = (count + 1, prio)
                heapq.heappush(heap, (-prio, next(seq), op))
                if hold:
                    op.held = True
                    held += op.nbytes + op.shm
            if not hold or held >= BATCH_BYTES:  # a call needs them, or a full bucket
                wake = wake or not self._release
                self._release = True
            self._held = held
            self._outstanding += len(ops)
            if wake and hold:
                self._cv.notify_all()
        if not hold:
            self._drain()

    def flush(self, timeout: float) -> None:
        """Wait until every queued op has been answered; raise the first failure.

        Raises:
            StoreTimeoutError: ops are still outstanding after ``timeout`` seconds.
        """
        with self._cv:
            if self._heap:
                self._release = True
        self._drain()
        with self._cv:
            if not self._cv.wait_for(lambda: self._outstanding == 0, timeout):
                raise StoreTimeoutError(
                    f"{self._outstanding} pushes/pulls still unanswered after {timeout} s"
                )
        self.raise_errors()

    def raise_errors(self) -> None:
        """Raise (once) the first error a background push met."""
        with self._cv:
            if not self._errors:
                return
            exc, self._errors = self._errors[0], []
        raise exc

    def close(self) -> None:
        """Stop the threads (queued ops are still sent first)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._threads[0].join(timeout=self._timeout)
        for q in self._inflight:
            q.put(None)
        for t in self._threads[1:]:
            t.join(timeout=self._timeout)

    # --- sender thread ----------------------------------------------------------------------

    def _wait_for_work(self) -> bool:
        """Wait until queued ops may go (see the module docstring); ``False`` when closing
        with nothing queued."""
        with self._cv:
            for _ in range(1 << 40):  # bounded: each turn waits or returns
                if self._heap and (self._release or self._closing):
                    return True
                if not self._heap:
                    if self._closing:
                        return False
                    self._cv.wait()
                    continue
                left = self._held_since + self._linger - time.monotonic()
                if left <= 0:
                    return True
                self._cv.wait(left)
        return False

    def _pop(self) -> list[Op]:
        """Pop the next ops to send: at most :data:`BATCH_BYTES` on the socket."""
        with self._cv:
            ops: list[Op] = []
            size = 0
            heap, pending = self._heap, self._pending
            while heap and (not ops or size + heap[0][2].nbytes <= BATCH_BYTES):
                op = heapq.heappop(heap)[2]
                size += op.nbytes
                ops.append(op)
                if op.held:
                    self._held -= op.nbytes + op.shm
                    self._held_n -= 1
                count, prio = pending[op.wire]
                if count == 1:
                    del pending[op.wire]
                else:
                    pending[op.wire] = (count - 1, prio)
            if not heap:
                self._release = False
                self._held = self._held_n = 0
            return ops

    def _drain(self) -> None:
        """Send everything queued from the calling thread, when no other thread is sending
        (a call that waits next sends its own ops: no hand-off to the sender thread)."""
        if not self._sending.acquire(blocking=False):
            return  # the sender thread is sending: it takes these next
        try:
            while ops := self._pop():
                for batch in _batches(ops):
                    self._send(batch)
        finally:
            self._sending.release()

    def _send_loop(self) -> None:
        while self._wait_for_work():
            with self._sending:
                for batch in _batches(self._pop()):
                    self._send(batch)

    def _send(self, batch: list[Op]) -> None:
        first = batch[0]
        timeout_ms = int(self._timeout * 1000)
        msg: object
        if first.kind == "push" and packable([op.value for op in batch]):
            data = np.concatenate([op.value.reshape(-1) for op in batch])  # type: ignore[union-attr]
            msg = PSPushPacked(
                keys=tuple(op.wire for op in batch),
                data=data,
                offsets=tuple(op.lo for op in batch),
                counts=tuple(op.count for op in batch),
            )
        elif first.kind in ("push", "cpush"):
            values = tuple(op.value for op in batch)
            msg = PSPush(
                keys=tuple(op.wire for op in batch),
                values=values,  # type: ignore[arg-type]
                offsets=tuple(op.lo for op in batch),
                counts=tuple(op.count for op in batch),
                compressed=first.kind == "cpush",
            )
        elif first.kind == "pull":
            msg = PSPull(
                keys=tuple(op.wire for op in batch),
                offsets=tuple(op.lo for op in batch),
                counts=tuple(op.count for op in batch),
                timeout_ms=timeout_ms,
            )
        elif first.kind == "push_shm":
            try:
                for op in batch:
                    self._fill(op)
            except Exception as exc:
                self._finish(batch, exc)
                return
            msg = PSPushShm(
                keys=tuple(op.wire for op in batch), paths=tuple(op.path for op in batch)
            )
        elif first.kind == "pull_shm":
            msg = PSPullShm(keys=tuple(op.wire for op in batch), timeout_ms=timeout_ms)
        elif first.kind == "push_rows":
            assert first.rows is not None and first.value is not None
            msg = PSPushRows(key=first.wire, rows=first.rows, data=first.value)
        else:
            assert first.rows is not None
            msg = PSPullRows(key=first.wire, rows=first.rows, timeout_ms=timeout_ms)
        into = first.out if first.kind == "pull" and len(batch) == 1 else None
        try:
            link = self._links[first.server]
            rid = link.submit(msg) if into is None else link.submit(msg, into=into)
        except Exception as exc:  # the link is gone: fail these ops
            self._finish(batch, exc)
            return
        for op in batch:
            op.value = None  # the message holds what it needs
        self._inflight[first.server].put((rid, batch))

    def _fill(self, op: Op) -> None:
        """Copy a shared-memory push into its segment, once the server has read the last
        push from it (in sync mode a pull of the key came between, so it has).

        Raises:
            StoreTimeoutError: the server never answered the last push from the segment.
        """
        wait = self._timeout + defaults.PS_REPLY_GRACE_SECONDS
        if op.after is not None and not op.after.done(wait):
            raise StoreTimeoutError(
                f"push of key {op.wire}: the server did not read the previous push from its "
                f"shared segment within {wait:g} s"
            )
        assert op.out is not None and op.value is not None
        np.copyto(op.out, op.value)

    # --- reaper threads ---------------------------------------------------------------------

    def _reap_loop(self, server: int) -> None:
        q = self._inflight[server]
        link = self._links[server]
        while (item := q.get()) is not None:
            rid, batch = item
            try:
                reply = link.result(rid, timeout=self._timeout + defaults.PS_REPLY_GRACE_SECONDS)
                if isinstance(reply, ErrorReply):
                    raise error_from_code(reply.code, reply.message)
                self._deliver(batch, reply)
            except Exception as exc:
                self._finish(batch, exc)
            else:
                self._finish(batch, None)

    def _deliver(self, batch: list[Op], reply: object) -> None:
        """Copy a pull's reply into its outputs, then settle its ops (every copy first: a
        copy that fails leaves the whole batch to :meth:`_finish`)."""
        if batch[0].kind == "pull_shm":
            if not isinstance(reply, PSShmReply) or len(reply.paths) != len(batch):
                raise error_from_code(ErrorCode.PROTOCOL, f"unexpected {type(reply).__name__}")
            attach = self._shared.attach
            for op, path in zip(batch, reply.paths, strict=True):
                out = op.out
                assert out is not None
                np.copyto(out, attach(path, out.nbytes).view(out.dtype).reshape(out.shape))
            _settle(batch, [op.out for op in batch])
            return
        if batch[0].kind not in ("pull", "pull_rows"):
            return
        if isinstance(reply, PSPackedReply):  # many small arrays in one, in batch order
            flat, at = reply.data.reshape(-1), 0
            for op in batch:
                assert op.out is not None
                np.copyto(op.out, flat[at : at + op.out.size].reshape(op.out.shape))
                at += op.out.size
            reply = PSValuesReply(values=tuple(op.out for op in batch))  # type: ignore[misc]
        if not isinstance(reply, PSValuesReply) or len(reply.values) != len(batch):
            raise error_from_code(ErrorCode.PROTOCOL, f"unexpected reply {type(reply).__name__}")
        got = []
        for op, v in zip(batch, reply.values, strict=True):
            if op.out is None:
                got.append(v)
                continue
            if v is not op.out:
                np.copyto(op.out, v.reshape(op.out.shape))
            got.append(op.out)
        _settle(batch, got)

    def _finish(self, batch: list[Op], exc: BaseException | None) -> None:
        for op in batch:
            if op.settled:
                continue
            op.settled = True
            if op.future is not None:
                if exc is None:
                    op.future.set_result(None)
                else:
                    op.future.set_exception(exc)
            if exc is not None and "push" in op.kind:  # surfaces in the next call
                logger.debug("%s of key %s failed: %s", op.kind, op.wire, exc)
                with self._cv:
                    if not self._errors:
                        self._errors.append(exc)
        with self._cv:
            self._outstanding -= len(batch)
            self._cv.notify_all()


def _settle(batch: list[Op], values: list[Any]) -> None:
    """Settle a delivered batch: one count-down per latch run (a call's pulls share one)."""
    latch, done = None, 0
    for op, v in zip(batch, values, strict=True):
        op.settled = True
        if isinstance(op.future, Latch) and (latch is None or op.future is latch):
            latch, done = op.future, done + 1
        elif op.future is not None:
            op.future.set_result(v)
    if latch is not None:
        latch.count_down(done)


def _batches(ops: list[Op]) -> list[list[Op]]:
    """Group ops (in send order) into messages without reordering any key's ops per server.

    Example:
        >>> ops = [Op("push", 0, "i1"), Op("pull", 0, "i2"), Op("push", 0, "i2"),
        ...        Op("pull", 0, "i1")]
        >>> [[(o.kind, o.wire) for o in b] for b in _batches(ops)]
        [[('pull', 'i2')], [('push', 'i1'), ('push', 'i2')], [('pull', 'i1')]]
    """
    out: list[list[Op]] = []
    open_: dict[tuple[int, str], _Batch] = {}
    for op in ops:
        if op.kind not in _BATCHABLE:
            out.extend(open_.pop(s).ops for s in [s for s in open_ if s[0] == op.server])
            out.append([op])
            continue
        clash = [s for s, b in open_.items() if s[0] == op.server and op.wire in b.wires]
        out.extend(open_.pop(s).ops for s in clash)
        if op.kind == "pull" and op.nbytes >= LAND_BYTES:  # alone: its reply lands in out
            out.append([op])
            continue
        slot = (op.server, op.kind)
        batch = open_.setdefault(slot, _Batch())
        batch.add(op)
        if len(batch.ops) >= BATCH_KEYS or batch.nbytes >= BATCH_BYTES:
            out.append(open_.pop(slot).ops)
    out.extend(b.ops for b in open_.values())
    return out


class _Batch:
    __slots__ = ("nbytes", "ops", "wires")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.wires: set[str] = set()
        self.nbytes = 0

    def add(self, op: Op) -> None:
        self.ops.append(op)
        self.wires.add(op.wire)
        self.nbytes += op.nbytes + op.shm
