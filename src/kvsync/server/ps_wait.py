"""Parked parameter-server requests: pulls, init waits and barriers that wait for others.

Every parked request is re-checked after each state change (:meth:`ParkedRequests.wake`):
it is answered when ready, failed when a rank it needs has disconnected, expired at its
deadline, and failed as *uneven pushes* when every rank of the job has been parked (or gone)
for ``stall`` seconds with no message arriving. A rank counts as parked when it is parked
here or has told this server it is blocked on another one (``JobState.elsewhere``), so
workers stuck on different servers are seen too.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field

import numpy as np

from kvsync import defaults
from kvsync.errors import ErrorCode
from kvsync.protocol.messages import ErrorReply, OkReply
from kvsync.protocol.ps_messages import PSPackedReply, PSShmReply, PSValuesReply
from kvsync.protocol.wire_keys import key_of_wire, packable
from kvsync.server.ps_key_state import KeyState, rows_of
from kvsync.server.router import Outgoing

__all__ = ["Counters", "JobState", "Parked", "ParkedRequests"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Parked:
    """One request waiting on the server."""

    kind: str  # "pull" | "rows" | "shm" | "init" | "barrier"
    conn_id: int
    request_id: int
    rank: int
    deadline: float
    keys: tuple[str, ...] = ()
    rows: np.ndarray | None = None  # "rows": local row ids; "pull": [offsets, counts]
    since: float = 0.0  # when it was parked
    seq: int = 0  # park order
    blocked_on: str | None = None  # a pull not ready: a key whose round it waits for


@dataclass(slots=True)
class Counters:
    """Traffic and work counters of one server."""

    bytes_in: int = 0
    bytes_out: int = 0
    pushes: int = 0
    updates: int = 0
    pulls: int = 0
    shm_pushes: int = 0


@dataclass(slots=True)
class JobState:
    """What the server knows about the job's workers."""

    num_workers: int = 0
    sync: bool = True
    rank_of: dict[int, int] = field(default_factory=dict)  # conn_id -> rank
    gone: set[int] = field(default_factory=set)
    elsewhere: set[int] = field(default_factory=set)  # ranks blocked on another server
    barrier: set[int] = field(default_factory=set)


class ParkedRequests:
    """The parked requests of one server, over its keys, job and counters.

    A pull (``pull``, ``rows``, ``shm``) that cannot be answered yet is filed under one key
    it waits for; :meth:`wake` re-checks only the requests parked since the last wake, the
    init waits and barriers (at most one per rank), and the pulls filed under keys
    :meth:`touch` named, so a request costs O(its keys), not O(parked requests). Deadlines
    sit in a heap; both the heap and the key index drop answered requests lazily.
    """

    def __init__(self, server_index: int, keys: dict[str, KeyState], job: JobState,
                 counters: Counters,
                 progress_every: float = defaults.PROGRESS_LOG_SECONDS) -> None:
        self.where = f"server {server_index}"
        self._live: dict[int, Parked] = {}  # id(p) -> p, in park order
        self._fresh: list[Parked] = []  # parked since the last wake: checked in full
        self._others: dict[int, Parked] = {}  # init waits and barriers: checked every wake
        self._by_key: dict[str, list[Parked]] = {}  # blocked pulls, filed under one key
        self._dirty: set[str] = set()  # keys whose pushes completed since the last wake
        self._all = False  # re-check everything (a rank left, rounds were discarded)
        self._deadlines: list[tuple[float, int, Parked]] = []
        self._seq = 0
        self._ranks: dict[int, int] = {}  # rank -> its parked requests
        self._every = progress_every
        self._last_log = 0.0
        self._keys = keys
        self._job = job
        self._counters = counters

    @property
    def items(self) -> list[Parked]:
        """The parked requests, in the order they were parked."""
        return list(self._live.values())

    def park(self, p: Parked) -> None:
        """Add a request; :meth:`wake` answers it at once when it is already ready."""
        self._live[id(p)] = p
        self._fresh.append(p)
        self._seq += 1
        p.seq = self._seq
        heap = self._deadlines
        if len(heap) > 2 * len(self._live) + 64:  # answered entries under a long wait's
            heap[:] = [e for e in heap if self._live.get(id(e[2])) is e[2]]
            heapq.heapify(heap)
        heapq.heappush(heap, (p.deadline, self._seq, p))
        self._ranks[p.rank] = self._ranks.get(p.rank, 0) + 1

    def touch(self, wire: str) -> None:
        """A push of key ``wire`` completed (or its round closed): re-check its waiters."""
        if wire in self._by_key:
            self._dirty.add(wire)

    def recheck_all(self) -> None:
        """The next :meth:`wake` re-checks every parked request (a rank left, rounds were
        discarded)."""
        self._all = True

    def _remove(self, p: Parked) -> None:
        del self._live[id(p)]
        self._others.pop(id(p), None)
        n = self._ranks[p.rank] - 1
        if n:
            self._ranks[p.rank] = n
        else:
            del self._ranks[p.rank]

    def drop(self, conn_id: int) -> None:
        """Forget the requests of a closed connection."""
        for p in [p for p in self._live.values() if p.conn_id == conn_id]:
            self._remove(p)
        self._fresh = [p for p in self._fresh if id(p) in self._live]
        self._all = True

    def wake(self) -> list[Outgoing]:
        """Answer every request that is ready, fail those that can never be."""
        out: list[Outgoing] = []
        if not self._live:
            self._fresh.clear()
            self._dirty.clear()
            return out
        barrier_done = bool(self._job.num_workers) and (
            len(self._job.barrier) >= self._job.num_workers
        )
        live = self._live
        if self._all:
            self._all = False
            self._by_key.clear()
            check = list(live.values())
        else:
            check = list(self._others.values())
            check += self._fresh
            by_key = self._by_key
            for k in self._dirty:
                check += [p for p in by_key.pop(k, ()) if p.blocked_on == k and id(p) in live]
            if len(check) > 1:
                check.sort(key=lambda p: p.seq)  # answered in park order
        self._fresh = []
        self._dirty.clear()
        for p in check:
            reply = self._ready_reply(p, barrier_done)
            if reply is None:
                failure = self._failure(p)
                if failure is None:
                    self._file(p)
                    continue
                reply = ErrorReply(code=int(ErrorCode.PEER_LOST), message=failure)
            self._remove(p)
            out.append(Outgoing(p.conn_id, p.request_id, reply))
        if barrier_done:
            self._job.barrier.clear()
        return out

    def _file(self, p: Parked) -> None:
        """Keep a request that is not ready: pulls under the key they wait for."""
        if p.kind in ("init", "barrier"):
            self._others[id(p)] = p
            return
        assert p.blocked_on is not None
        self._by_key.setdefault(p.blocked_on, []).append(p)

    def _expired(self, now: float) -> list[Parked]:
        heap, due = self._deadlines, []
        while self._earliest() is not None and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
        return due

    def _earliest(self) -> float | None:
        """The earliest deadline of a live request (answered ones at the top are dropped)."""
        heap, live = self._deadlines, self._live
        while heap and id(heap[0][2]) not in live:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float, last_event: float, stall: float) -> list[Outgoing]:
        """Time out requests past their deadline; break a stall (uneven pushes); every
        ``progress_every`` seconds, log what the longest-waiting request waits for."""
        due = self._progress_due()
        if due is not None and now >= due:
            oldest = next(iter(self._live.values()))
            self._last_log = now
            logger.info("%s: %s, for %.0f s so far", self.where, self._waiting_text(oldest),
                        now - oldest.since)
        out = []
        for p in sorted(self._expired(now), key=lambda p: p.seq):
            self._remove(p)
            out.append(self._error(p, ErrorCode.TIMEOUT, self._timeout_text(p)))
        if self.stalled() and now - last_event >= stall:
            text = self._uneven_text()
            out.extend(self._error(p, ErrorCode.KVSTORE_USAGE, text) for p in self.items)
            for p in self.items:
                self._remove(p)
            self._job.barrier.clear()
        return out

    def next_deadline(self, last_event: float, stall: float) -> float | None:
        """The earliest deadline, or when a stall will be declared."""
        earliest = self._earliest()
        times = [] if earliest is None else [earliest]
        due = self._progress_due()
        if due is not None:
            times.append(due)
        if self.stalled():
            times.append(last_event + stall)
        return min(times, default=None)

    def _progress_due(self) -> float | None:
        if not self._live or self._every <= 0:
            return None
        oldest = next(iter(self._live.values()))  # park order: the earliest ``since``
        return max(oldest.since, self._last_log) + self._every

    def stalled(self) -> bool:
        """Whether every rank of the job is parked here, blocked on another server, or gone."""
        job = self._job
        if not self._live or not job.num_workers:
            return False
        stuck = len(self._ranks) + len((job.gone | job.elsewhere).difference(self._ranks))
        return stuck >= job.num_workers

    def _ready_reply(self, p: Parked, barrier_done: bool) -> object | None:
        if p.kind == "barrier":
            return OkReply() if barrier_done else None
        if p.kind == "init":
            return OkReply() if all(k in self._keys for k in p.keys) else None
        keys, rank = self._keys, p.rank
        states = [keys[k] for k in p.keys]
        for k, ks in zip(p.keys, states, strict=True):
            if rank in ks.pushed or rank in ks.partial:
                p.blocked_on = k
                return None
        if p.kind == "shm":
            self._counters.pulls += 1
            self._counters.bytes_out += sum(ks.value.nbytes for ks in states)
            return PSShmReply(paths=tuple(ks.value_path for ks in states))
        if p.kind == "rows":
            assert p.rows is not None
            values: tuple[np.ndarray, ...] = (states[0].value[p.rows],)
        else:
            assert p.rows is not None  # [offsets, counts] of each key
            values = tuple(
                rows_of(ks.value, int(lo), int(n))
                for ks, lo, n in zip(states, p.rows[0], p.rows[1], strict=True)
            )
        self._counters.pulls += 1
        self._counters.bytes_out += sum(v.nbytes for v in values)
        if packable(values):  # many small arrays: one on the wire
            return PSPackedReply(data=np.concatenate([v.reshape(-1) for v in values]))
        return PSValuesReply(values=values)

    def _failure(self, p: Parked) -> str | None:
        gone = self._job.gone
        if not gone:
            return None
        if p.kind == "init":
            return f"{self.where}: rank 0 left before initialising keys" if 0 in gone else None
        if p.kind == "barrier":
            lost = sorted(gone - self._job.barrier)
            if lost:
                return f"{self.where}: barrier cannot complete: ranks {lost} disconnected"
            return None
        for k in p.keys:
            ks = self._keys[k]
            if p.rank in ks.pushed:
                lost = sorted(gone.intersection(ks.missing(self._job.num_workers)))
                if lost:
                    return (
                        f"{self.where}: round {ks.round} of key {ks.key!r} cannot complete:"
                        f" ranks {lost} disconnected before pushing it"
                    )
        return None

    def _uneven_text(self) -> str:
        n = self._job.num_workers
        parts = [
            f"key {ks.key!r} round {ks.round} has pushes from ranks {sorted(ks.pushed)} "
            f"but not from {ks.missing(n)}"
            for ks in self._keys.values()
            if ks.pushed
        ]
        elsewhere = sorted(self._job.elsewhere - {p.rank for p in self.items})
        where = f"; ranks {elsewhere} are blocked on other servers" if elsewhere else ""
        return (
            f"{self.where}: every worker is waiting and no round can complete: uneven "
            f"pushes across workers ({'; '.join(parts) or 'no open rounds'}; barrier "
            f"reached by ranks {sorted(self._job.barrier)}{where})"
        )

    def _timeout_text(self, p: Parked) -> str:
        return f"{self.where}: {self._waiting_text(p, 'timed out waiting')}"

    def _waiting_text(self, p: Parked, verb: str = "waiting") -> str:
        n = self._job.num_workers
        what = {
            "init": "keys to be initialised by rank 0",
            "barrier": "the other workers",
            "pull": "the round's pushes",
            "rows": "the round's pushes",
            "shm": "the round's pushes",
        }[p.kind]
        missing = ""
        if p.kind == "barrier":
            missing = f" (ranks {sorted(set(range(n)) - self._job.barrier)} missing)"
        elif p.kind in ("pull", "rows", "shm"):
            m = sorted(
                {
                    r
                    for k in p.keys
                    if p.rank in self._keys[k].pushed
                    for r in self._keys[k].missing(n)
                }
            )
            missing = f" (ranks {m} missing)"
        keys = [key_of_wire(k) for k in p.keys[:5]]
        return (f"rank {p.rank} {verb} for {what}"
                + (f" for keys {keys}" if keys else "") + missing)

    def _error(self, p: Parked, code: ErrorCode, text: str) -> Outgoing:
        if p.kind == "barrier":
            self._job.barrier.discard(p.rank)
        return Outgoing(p.conn_id, p.request_id, ErrorReply(code=int(code), message=text))
