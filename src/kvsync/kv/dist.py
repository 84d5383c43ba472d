"""The distributed KVStore types ``dist_sync``, ``dist_device_sync`` and ``dist_async``.

MXNet's spellings ``dist_sync_device`` (= ``dist_device_sync``) and ``dist_async_device``
are accepted too: in numpy "device" only means a key's per-device values are summed on the
worker before the push, which every dist type does; ``async`` in the name makes it async.

A worker holds one pipelined link per parameter server (see :mod:`kvsync.kv.dist_connect`
for how they are found) and a :class:`~kvsync.kv.comm.Comm` that sends in the background.
Each key's array lives on the servers as planned by :mod:`kvsync.kv.sharding`. ``push``
sums a key's per-device values, optionally compresses each server's slice, queues it and
returns; ``pull`` queues one request per slice and waits until every slice has been copied
into the output. In ``dist_sync`` the servers answer a pull only after the round that pull
follows has been applied; in ``dist_async`` every push is applied when it arrives.
The optimizer runs on the servers: ``set_optimizer`` sends its JSON config.

Example (needs running servers; see ``examples/train_ps.py``)::

    kv = kvsync.kv.create("dist_sync")      # rank, workers, servers from the environment
    kv.init(3, np.zeros((2, 3)))
    kv.push(3, np.ones((2, 3)))
    kv.pull(3, out=w)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any, ClassVar

import numpy as np

from kvsync import defaults
from kvsync.errors import (
    InvalidArgumentError,
    StoreTimeoutError,
    UninitializedKeyError,
    UnknownNameError,
)
from kvsync.kv import rowsparse
from kvsync.kv.base import (
    KeyGroup,
    KVStoreBase,
    check_matches,
    check_writable,
    normalize_key,
)
from kvsync.kv.comm import Comm, Latch, Link, Op
from kvsync.kv.compression import GradientCompression
from kvsync.kv.dist_connect import connect
from kvsync.kv.dist_control import ServerControl
from kvsync.kv.reduce import copy_to_all, sum_into
from kvsync.kv.sharding import KeyPlan, chunks, plan_key
from kvsync.kv.shm import SharedSegments, shm_supported
from kvsync.protocol.ps_messages import PSBarrier, PSHello, PSInit, PSWaiting, PSWaitInit
from kvsync.protocol.wire_keys import Key
from kvsync.sparse import RowSparseArray, as_row_ids

__all__ = ["DistKVStore"]

logger = logging.getLogger(__name__)


@KVStoreBase.register
class DistKVStore(ServerControl, KVStoreBase):
    """A worker's handle on the parameter servers of a job.

    Built by ``kvsync.kv.create("dist_sync")`` (environment and servers found as described
    in :mod:`kvsync.kv.dist_connect`), or directly from links for tests.

    Args:
        name: ``dist_sync``, ``dist_device_sync`` or ``dist_async`` (or MXNet's
            ``dist_sync_device`` / ``dist_async_device``).
        rank: this worker's rank; num_workers: the job's worker count.
        links: one pipelined link per server (``kvsync.client.Client`` objects).
        bound: arrays with more elements are split over all servers.
        timeout: seconds any blocking call may take.
        shm: which servers run on this host (one flag per link, or one for all): big
            slices to and from those move through shared memory.

    Raises:
        UnknownNameError: another name. InvalidArgumentError: no links, or a bad rank.

    Example (one worker and a parameter server in this process):
        >>> import numpy as np
        >>> from kvsync.client import Client
        >>> from kvsync.launcher.ps_server import make_logic
        >>> from kvsync.server import StoreServer
        >>> with StoreServer(logic=make_logic(0)).start() as server:
        ...     kv = DistKVStore("dist_sync", rank=0, num_workers=1,
        ...                      links=[Client("127.0.0.1", server.port, timeout=5)])
        ...     kv.init(3, np.zeros(2))
        ...     kv.push(3, [np.ones(2), np.ones(2)])  # two devices: summed
        ...     w = kv.pull(3)
        ...     kv.close()
        >>> w
        array([2., 2.])
    """

    NAMES: ClassVar[tuple[str, ...]] = (
        "dist_sync",
        "dist_device_sync",
        "dist_async",
        "dist_sync_device",
        "dist_async_device",
    )

    def __init__(
        self,
        name: str,
        *,
        rank: int,
        num_workers: int,
        links: Sequence[Link],
        bound: int = defaults.BIGARRAY_BOUND,
        timeout: float = defaults.DEFAULT_TIMEOUT,
        shm: bool | Sequence[bool] = False,
    ) -> None:
        if name not in self.NAMES:
            raise UnknownNameError(f"DistKVStore types are {list(self.NAMES)}, got {name!r}")
        if not links or not 0 <= rank < num_workers:
            raise InvalidArgumentError(
                f"need at least one server and 0 <= rank < num_workers, got {len(links)} "
                f"servers, rank {rank}, {num_workers} workers"
            )
        self._type, self._rank, self._num_workers = name, rank, num_workers
        self._links = list(links)
        flags = [shm] * len(self._links) if isinstance(shm, bool) else list(shm)
        if len(flags) != len(self._links):
            raise InvalidArgumentError(f"{len(flags)} shm flags for {len(self._links)} servers")
        self._bound = bound
        self.timeout = float(timeout)
        self._plans: dict[Key, KeyPlan] = {}
        self._gc: GradientCompression | None = None
        hello = PSHello(rank=rank, num_workers=num_workers, sync="async" not in name)
        self._call_all([hello] * len(self._links))
        self._shm_servers = frozenset(i for i, f in enumerate(flags) if f and shm_supported())
        self._shm = bool(self._shm_servers)
        # the largest array a single-slice key sends in one message, per server
        self._fast_max = [
            defaults.PS_SHM_MIN_BYTES if i in self._shm_servers else defaults.PS_CHUNK_BYTES
            for i in range(len(self._links))
        ]
        self._segments = SharedSegments()
        self._segments_of: dict[tuple[str, int], list[Any]] = {}  # [path, view, last push]
        self._comm = Comm(self._links, timeout=self.timeout, shared=self._segments)
        self._closed = False

    @classmethod
    def _create(cls, name: str, *, timeout: float | None = None) -> DistKVStore:
        seconds = defaults.DEFAULT_TIMEOUT if timeout is None else timeout
        job = connect(timeout=seconds)
        try:
            kv = cls(
                name,
                rank=job.rank,
                num_workers=job.num_workers,
                links=job.links,
                bound=job.bound,
                shm=job.shm,
                timeout=seconds,
            )
        except BaseException:
            job.close()
            raise
        if job.report_to is not None:  # MXNet's launch model: count this worker done at exit
            from kvsync.kv.dmlc import report_done_at_exit

            report_done_at_exit(job.report_to, kv.close)
        return kv

    # --- properties -------------------------------------------------------------------------
    @property
    def type(self) -> str:
        """The type name it was created with (``dist_sync``, ``dist_async``, ...)."""
        return self._type

    @property
    def rank(self) -> int:
        """This worker's rank in ``[0, num_workers)``."""
        return self._rank

    @property
    def num_workers(self) -> int:
        """The number of workers in the job."""
        return self._num_workers

    @property
    def num_servers(self) -> int:
        """The number of parameter servers."""
        return len(self._links)

    def is_capable(self, capability: str) -> bool:
        """Optimizers, gradient compression and row-sparse values are all supported.

        Raises:
            UnknownNameError: an unknown capability name.
        """
        known = (self.OPTIMIZER, self.GRADIENT_COMPRESSION, self.ROW_SPARSE)
        if str(capability).lower() not in known:
            raise UnknownNameError(f"unknown capability {capability!r}; known: {sorted(known)}")
        return True

    # --- init / broadcast -------------------------------------------------------------------
    def init(self, key: Any, value: Any) -> None:
        """Initialise keys; rank 0's values win, other ranks wait until the keys exist.

        Raises:
            InvalidArgumentError: a key initialised twice or given several values.
            KeyTypeError: bad or mixed keys. StoreConnectionError: a server is gone.
        """
        self._comm.raise_errors()
        plans: list[tuple[KeyPlan, np.ndarray]] = []
        for g in self._groups(key, value):
            if len(g.values) != 1 or g.key in self._plans:
                raise InvalidArgumentError(
                    f"key {g.key!r} is already initialised or given {len(g.values)} values"
                )
            v = np.ascontiguousarray(rowsparse.densify(g.values[0]))
            if v.dtype.kind not in "biufc":
                raise InvalidArgumentError(f"value for key {g.key!r} has dtype {v.dtype}")
            plans.append(
                (
                    plan_key(
                        g.key, v.shape, v.dtype, num_servers=self.num_servers, bound=self._bound
                    ),
                    v,
                )
            )
        per_server: list[tuple[list[str], list[np.ndarray]]] = [([], []) for _ in self._links]
        for plan, v in plans:
            for s, part in plan.parts(v):
                per_server[s.server][0].append(plan.wire)
                per_server[s.server][1].append(part)
        msgs: list[object | None] = []
        for keys, parts in per_server:
            if not keys:
                msgs.append(None)
            elif self._rank == 0:
                msgs.append(PSInit(keys=tuple(keys), values=tuple(parts)))
            else:
                msgs.append(PSWaitInit(keys=tuple(keys), timeout_ms=self._timeout_ms))
        self._call_all(msgs)
        for plan, _ in plans:
            self._plans[plan.key] = plan

    def broadcast(self, key: Any, value: Any, out: Any, priority: int = 0) -> Any:
        """Initialise ``key`` with rank 0's ``value`` and pull it into ``out`` (returned)."""
        self.init(key, value)
        return self.pull(key, out=out, priority=priority)

    # --- push -------------------------------------------------------------------------------
    def _plan(self, key: Key) -> KeyPlan:
        plan = self._plans.get(key)
        if plan is None:
            raise UninitializedKeyError(
                f"key {key!r} was never initialised; call init({key!r}, value) first"
            )
        return plan

    def _checked(self, key: Any, value: Any, what: str) -> list[tuple[KeyPlan, KeyGroup]]:
        fast = self._checked_fast(key, value)
        if fast is not None:
            return fast
        out = []
        for g in self._groups(key, value, what=what):
            plan = self._plan(g.key)
            for v in g.values:
                check_matches(g.key, v, plan.shape, plan.dtype, what=what)
            out.append((plan, g))
        return out

    def _checked_fast(self, key: Any, value: Any) -> list[tuple[KeyPlan, KeyGroup]] | None:
        """The common case without the general argument walk: a list of distinct known
        keys of one type, each with one array of the stored shape and dtype (else None)."""
        if not (
            isinstance(key, list | tuple)
            and isinstance(value, list | tuple)
            and len(key) == len(value)
            and key
            and type(key[0]) in (int, str)
        ):
            return None
        kind, plans, out = type(key[0]), self._plans, []
        for k, v in zip(key, value, strict=True):
            plan = plans.get(k) if type(k) is kind else None
            if (
                plan is None
                or type(v) is not np.ndarray
                or v.shape != plan.shape
                or v.dtype != plan.dtype
            ):
                return None
            out.append((plan, KeyGroup(k, [v])))
        return out if len(set(key)) == len(key) else None

    def push(self, key: Any, value: Any, priority: int = 0) -> None:
        """Queue the per-key sums of ``value`` for the servers and return at once.

        The arrays are sent without copying: do not modify them before the next ``pull``
        of the key (or :meth:`wait`). Pushes wait in a bucket per server (see
        :mod:`kvsync.kv.comm`) until a call needs them (a ``pull``, ``wait``, a barrier,
        ``set_optimizer``, ...), the bucket is full, or ``PS_PUSH_LINGER_SECONDS`` passed;
        so pushing one key per call costs about what one call of all keys costs. Errors
        the servers report (a push twice in one ``dist_sync`` round, ...) are raised by
        this worker's first call after the server's answer came; :meth:`wait` waits for
        the answers, so it raises them at the latest. A message the server refuses fails
        as a whole (the other keys of its bucket with it); the error names the key.

        Raises:
            UninitializedKeyError, ShapeMismatchError, KeyTypeError, InvalidArgumentError:
                checked before anything is queued.
        """
        self._comm.raise_errors()
        ops: list[Op] = []
        fast_max = self._fast_max
        for plan, g in self._checked(key, value, "value"):
            v0 = g.values[0]
            if (
                len(g.values) == 1
                and type(v0) is np.ndarray
                and len(plan.slices) == 1
                and v0.nbytes < fast_max[plan.slices[0].server]
                and self._gc is None
                and v0.flags.c_contiguous
            ):
                ops.append(
                    Op(
                        "push",
                        plan.slices[0].server,
                        plan.wire,
                        value=v0,  # fast path
                        count=v0.shape[0] if v0.ndim else 1,
                        nbytes=v0.nbytes,
                    )
                )
                continue
            if all(isinstance(v, RowSparseArray) for v in g.values):
                ops += self._row_ops(plan, rowsparse.sum_rows(g.values))
                continue
            dense = [np.ascontiguousarray(rowsparse.densify(v)) for v in g.values]
            grad = dense[0] if len(dense) == 1 else sum_into(np.empty_like(dense[0]), dense)
            for server, lo, part in self._pieces(plan, grad):
                n = part.shape[0] if part.ndim else 1
                if lo < 0:  # the whole slice, through shared memory
                    ops.append(self._shm_push(plan, server, part))
                elif self._gc is not None:
                    packed = self._gc.compress((plan.wire, server, lo), part)
                    ops.append(
                        Op(
                            "cpush",
                            server,
                            plan.wire,
                            value=packed,
                            lo=lo,
                            count=n,
                            nbytes=packed.nbytes,
                        )
                    )
                else:
                    ops.append(
                        Op(
                            "push",
                            server,
                            plan.wire,
                            value=part,
                            lo=lo,
                            count=n,
                            nbytes=part.nbytes,
                        )
                    )
        self._comm.enqueue_many(ops, priority, hold=True)

    def _pieces(self, plan: KeyPlan, array: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """Parts of ``array`` per server: whole slices that travel through shared memory
        with a server on this host (marked with row ``-1``), socket parts of at most
        PS_CHUNK_BYTES otherwise."""
        if not self._shm or array.nbytes < defaults.PS_SHM_MIN_BYTES:
            yield from plan.pieces(array)
            return
        for s, block in plan.parts(array):
            if (
                block.nbytes >= defaults.PS_SHM_MIN_BYTES
                and self._gc is None
                and s.server in self._shm_servers
            ):
                yield s.server, -1, block
            else:
                for lo, rows in chunks(block):
                    yield s.server, lo, rows

    def _shm_push(self, plan: KeyPlan, server: int, part: np.ndarray) -> Op:
        """A push of ``part`` through this worker's segment for (key, server): the sender
        copies it in (so a bucket's copy overlaps the server's work on the last one) once
        the server has read the previous push from that segment."""
        seg = self._segments_of.get((plan.wire, server))
        if seg is None:
            path, buf = self._segments.create(part.nbytes)
            seg = self._segments_of[(plan.wire, server)] = [path, buf, None]
        op = Op(
            "push_shm",
            server,
            plan.wire,
            value=part,
            out=seg[1].view(part.dtype).reshape(part.shape),
            path=seg[0],
            future=Latch(1),
            shm=part.nbytes,
            after=seg[2],
        )
        seg[2] = op.future
        return op

    def _row_ops(self, plan: KeyPlan, rs: RowSparseArray) -> list[Op]:
        ops = []
        for s in plan.slices:
            mask = (rs.indices >= s.lo) & (rs.indices < s.hi)
            if not mask.any():
                continue
            rows = rs.indices[mask] - s.lo
            data = np.ascontiguousarray(rs.data[mask])
            ops.append(
                Op(
                    "push_rows",
                    s.server,
                    plan.wire,
                    value=data,
                    rows=rows,
                    nbytes=data.nbytes + rows.nbytes,
                )
            )
        return ops

    # --- pull -------------------------------------------------------------------------------
    def pull(self, key: Any, out: Any = None, priority: int = 0, ignore_sparse: bool = True) -> Any:
        """Copy the servers' values into ``out`` (returned; new arrays when ``out`` is None).

        Waits for this worker's earlier pushes of the keys, and in ``dist_sync`` for the
        round they belong to. RowSparseArray outputs are skipped while ``ignore_sparse``.

        Raises:
            UninitializedKeyError, ShapeMismatchError, KeyTypeError, InvalidArgumentError:
                bad arguments. StoreConnectionError: a server or, in sync mode, a worker
                the round needs is gone. StoreTimeoutError: no answer within ``timeout``.
        """
        self._comm.raise_errors()
        if out is None:
            many = isinstance(key, (list, tuple))
            keys = list(key) if many else [key]
            normalized = [normalize_key(k) for k in keys]
            self._check_key_type(normalized)
            plans = [self._plan(k) for k in normalized]
            fresh = [np.empty(p.shape, p.dtype) for p in plans]
            self.pull(keys, out=fresh, priority=priority)
            return fresh if many else fresh[0]
        jobs: list[tuple[np.ndarray, list[Any]]] = []
        ops: list[Op] = []
        fast_max = self._fast_max
        for plan, g in self._checked(key, out, "out"):
            o0 = g.values[0]
            if (
                len(g.values) == 1
                and type(o0) is np.ndarray
                and len(plan.slices) == 1
                and o0.nbytes < fast_max[plan.slices[0].server]
                and o0.flags.c_contiguous
                and o0.flags.writeable
            ):
                ops.append(
                    Op(
                        "pull",
                        plan.slices[0].server,
                        plan.wire,
                        out=o0,  # fast path
                        count=o0.shape[0] if o0.ndim else 1,
                        nbytes=o0.nbytes,
                    )
                )
                continue
            dense = [o for o in g.values if isinstance(o, np.ndarray)]
            sparse = [o for o in g.values if isinstance(o, RowSparseArray)]
            for o in dense:
                check_writable(g.key, o)
            direct = dense[0] if dense and dense[0].flags.c_contiguous else None
            target = direct if direct is not None else np.empty(plan.shape, plan.dtype)
            for server, lo, view in self._pieces(plan, target):
                kind = "pull_shm" if lo < 0 else "pull"
                ops.append(
                    Op(
                        kind,
                        server,
                        plan.wire,
                        out=view,
                        lo=max(lo, 0),
                        count=view.shape[0] if view.ndim else 1,
                        nbytes=0 if lo < 0 else view.nbytes,
                        shm=view.nbytes if lo < 0 else 0,
                    )
                )
            rest = [o for o in dense if o is not target]
            if rest or (sparse and not ignore_sparse):
                jobs.append((target, rest + ([] if ignore_sparse else sparse)))
        latch = Latch(len(ops))
        for op in ops:
            op.future = latch
        self._comm.enqueue_many(ops, priority)
        self._await(latch, {op.server for op in ops})
        for target, rest in jobs:
            copy_to_all(target, [o for o in rest if isinstance(o, np.ndarray)])
            for o in rest:
                if isinstance(o, RowSparseArray):
                    o.assign(rowsparse.as_row_sparse(target))
        return out

    def pushpull(self, key: Any, value: Any, out: Any = None, priority: int = 0) -> Any:
        """Push ``value`` then pull the updated values into ``out`` (``value`` when None).

        Raises:
            ShapeMismatchError, InvalidArgumentError, ...: as :meth:`push` and :meth:`pull`,
                both checked before anything is pushed.
        """
        target = value if out is None else out
        for _, g in self._checked(key, target, "out"):
            for o in g.values:
                check_writable(g.key, o)
        self.push(key, value, priority)
        return self.pull(key, out=target, priority=priority)

    def row_sparse_pull(
        self, key: Any, out: Any = None, priority: int = 0, row_ids: Any = None
    ) -> Any:
        """Pull only the rows ``row_ids`` (any order, repeats allowed) into RowSparseArrays.

        Only the requested rows travel; each output holds the sorted unique rows.

        Raises:
            InvalidArgumentError: ``out``/``row_ids`` missing or mismatched, bad row ids.
            UninitializedKeyError, ShapeMismatchError, KeyTypeError: as :meth:`pull`.
        """
        self._comm.raise_errors()
        pairs = self._row_id_pairs(key, out, row_ids)
        jobs = []
        for g in pairs.groups:
            plan = self._plan(g.key)
            for o, ids in zip(g.values, pairs.row_ids[g.key], strict=True):
                check_matches(g.key, o, plan.shape, plan.dtype, what="out")
                rows = np.unique(as_row_ids(ids, plan.shape[0] if plan.shape else 1))
                parts = []
                for s in plan.slices:
                    sel = rows[(rows >= s.lo) & (rows < s.hi)]
                    if sel.size:
                        fut: Future[Any] = Future()
                        self._comm.enqueue_many(
                            [Op("pull_rows", s.server, plan.wire, rows=sel - s.lo, future=fut)],
                            priority,
                        )
                        parts.append(fut)
                jobs.append((o, plan, rows, parts))
        futures = [f for *_, parts in jobs for f in parts]
        servers = {s.server for _, plan, _, _ in jobs for s in plan.slices}
        total = self._reply_wait
        left = self._blocked_on(
            servers, lambda t: not wait_futures(futures, timeout=t).not_done, total
        )
        unanswered = wait_futures(futures, timeout=left).not_done  # one deadline for all
        if unanswered:
            raise StoreTimeoutError(
                f"row_sparse_pull: {len(unanswered)} of {len(futures)}"
                f" row pulls unanswered after {total:g} s"
            )
        for o, plan, rows, parts in jobs:
            chunks = [f.result() for f in parts]  # all done: raises what an op failed with
            data = np.concatenate(chunks) if chunks else np.empty((0, *plan.shape[1:]), plan.dtype)
            o.assign(RowSparseArray(data, rows, plan.shape))
        for o in pairs.copies:
            o.assign(pairs.groups[0].values[0])
        return out

    def _await(self, latch: Latch, servers: set[int]) -> None:
        """Wait for a pull from ``servers``; once blocked for a while, tell the other servers
        (PSWaiting) so that they can see every worker stuck and report uneven pushes."""
        latch.wait(self._blocked_on(servers, latch.done, self._reply_wait))

    def _blocked_on(self, servers: set[int], done: Callable[[float], bool], total: float) -> float:
        """Return when ``done(timeout)`` says the wait is over or ``total`` seconds passed,
        telling the servers not in ``servers`` while this worker is blocked; returns what
        is left of ``total`` (the caller's final wait, which raises the ops' errors)."""
        others = [s for s in range(self.num_servers) if s not in servers]
        notice = min(defaults.PS_WAITING_NOTICE_SECONDS, total)
        if not others:
            return total
        if done(notice):
            return total - notice
        self._tell(others, True)
        try:
            done(total - notice)
        finally:
            self._tell(others, False)
        return 0.0

    def _tell(self, servers: list[int], waiting: bool) -> None:
        msgs = [
            PSWaiting(waiting=waiting) if s in servers else None for s in range(self.num_servers)
        ]
        try:
            self._call_all(msgs)
        except Exception:  # a lost server surfaces in the pull itself
            logger.debug(
                "could not tell servers %s that rank %d waits", servers, self._rank, exc_info=True
            )

    # --- synchronisation, stats, lifetime ---------------------------------------------------
    def wait(self) -> None:
        """Wait until every push of this worker has been acknowledged; raise its errors."""
        self._comm.flush(self._reply_wait)

    def _barrier(self) -> None:
        self.wait()
        self._call_all([PSBarrier(timeout_ms=self._timeout_ms)] * self.num_servers)

    def close(self) -> None:
        """Send what is queued, stop the threads and close the links."""
        if self._closed:
            return
        self._closed = True
        try:
            self._comm.flush(min(self.timeout, 30.0))
        except Exception:
            logger.debug("pending pushes failed while closing", exc_info=True)
        self._comm.close()
        self._segments.close()
        for link in self._links:
            close = getattr(link, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> DistKVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<DistKVStore type={self._type!r} rank={self._rank}/{self._num_workers} "
            f"servers={self.num_servers} keys={len(self._plans)}>"
        )
