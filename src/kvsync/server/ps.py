"""The parameter-server logic: a pure state machine over the PS messages.

Strategy. Every key this server holds is a :class:`_Key`: the stored row slice, the number
of updates applied (``round``), and in sync mode the sum of the open round's pushes and the
set of ranks that pushed into it. A push from rank ``r`` adds to the open round; when all
``num_workers`` ranks have pushed, the updater (or a plain copy) applies the sum and the
round closes. A pull from ``r`` is answered at once unless ``r`` pushed into the still open
round of one of its keys; then it is *parked* and answered when those rounds close. Init
waits, barriers and pulls all park the same way (:mod:`kvsync.server.ps_wait`) and are re-checked
after every state change, expired at their deadline, and failed with an error naming the rank when
a rank they need disconnects. In async mode every push is applied when it arrives.

When every rank of the job is parked on this server, blocked on another server (a worker
blocked on a pull for a while says so to the other servers with PSWaiting), or gone, and
nothing has happened here for ``stall_seconds``, no open round can ever close: workers
pushed uneven numbers of times.
Then every parked request fails with a message saying which ranks pushed what.

The event loop calls ``handle``/``expire``/``drop_connection``; nothing here does I/O, reads
a clock or imports the optimizer: the server process injects the updater and compression
factories (see :mod:`kvsync.launcher.ps_server`).

Example:
    >>> import numpy as np
    >>> from kvsync.protocol.ps_messages import PSHello, PSInit, PSPush, PSPull
    >>> ps = ParameterServerLogic()
    >>> out = ps.handle(1, 1, PSHello(rank=0, num_workers=1, sync=True), 0.0)
    >>> out = ps.handle(1, 2, PSInit(keys=("i3",), values=(np.zeros(2),)), 0.0)
    >>> push = PSPush(keys=("i3",), values=(np.ones(2),), offsets=(0,), counts=(2,),
    ...               compressed=False)
    >>> out = ps.handle(1, 3, push, 0.0)
    >>> pull = PSPull(keys=("i3",), offsets=(0,), counts=(2,), timeout_ms=1000)
    >>> ps.handle(1, 4, pull, 0.0)[0].reply.values[0]
    array([1., 1.])
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from kvsync import defaults
from kvsync.errors import ErrorCode, code_for
from kvsync.protocol.messages import ErrorReply, OkReply, ValueReply
from kvsync.protocol.ps_messages import (
    PSBarrier,
    PSHello,
    PSInit,
    PSLoadStates,
    PSPull,
    PSPullRows,
    PSPullShm,
    PSPush,
    PSPushPacked,
    PSPushRows,
    PSPushShm,
    PSSaveStates,
    PSSetCompression,
    PSSetOptimizer,
    PSSetUpdater,
    PSShutdown,
    PSStats,
    PSWaiting,
    PSWaitInit,
)
from kvsync.protocol.wire_keys import key_of_wire
from kvsync.server.ps_key_state import KeyState, check_pairs
from kvsync.server.ps_plugins import Compression, SharedMemory, StatefulUpdater, json_object
from kvsync.server.ps_wait import Counters, JobState, Parked, ParkedRequests
from kvsync.server.router import Outgoing, RejectError

__all__ = ["PS_MESSAGE_TYPES", "Outgoing", "ParameterServerLogic"]

logger = logging.getLogger(__name__)


#: The message types this logic handles (for ``Router``).
PS_MESSAGE_TYPES: tuple[type, ...] = (
    PSHello,
    PSInit,
    PSWaitInit,
    PSPush,
    PSPushRows,
    PSPull,
    PSPullRows,
    PSSetOptimizer,
    PSSetUpdater,
    PSSetCompression,
    PSSaveStates,
    PSLoadStates,
    PSBarrier,
    PSStats,
    PSShutdown,
    PSPushShm,
    PSPullShm,
    PSPushPacked,
    PSWaiting,
)


class ParameterServerLogic:
    """The parameter-server handlers of one server process (see the module docstring).

    Args:
        server_index: this server's number in the job (used in messages and stats).
        updater_from_config: builds an updater from an optimizer's JSON config
            (``kvsync.optimizer.from_config`` + ``get_updater``); raises UnknownNameError.
        updater_by_name: builds a server-registered updater from its name and params.
        compression_from_params: builds the gradient compression from its params.
        stall_seconds: how long every rank may sit parked here before the server declares
            the pushes uneven and fails them.
    """

    def __init__(
        self,
        server_index: int = 0,
        *,
        updater_from_config: Callable[[dict[str, Any]], StatefulUpdater] | None = None,
        updater_by_name: Callable[[str, dict[str, Any]], StatefulUpdater] | None = None,
        compression_from_params: Callable[[dict[str, Any]], Compression | None] | None = None,
        stall_seconds: float = defaults.PS_STALL_SECONDS,
        shared: SharedMemory | None = None,
        progress_seconds: float = defaults.PROGRESS_LOG_SECONDS,
    ) -> None:
        self.server_index = server_index
        self.shutdown_requested = False
        self._make_updater = updater_from_config
        self._named_updater = updater_by_name
        self._make_compression = compression_from_params
        self._stall = stall_seconds
        self._alloc = shared.create if shared is not None else None
        self._attach = shared.attach if shared is not None else None
        self._keys: dict[str, KeyState] = {}
        self._job = JobState()
        self._deferred: list[Outgoing] = []
        self._updater: StatefulUpdater | None = None
        self._compression: Compression | None = None
        self._installed: dict[str, str] = {}  # what set_optimizer/compression last installed
        self._counters = Counters()
        self._parked = ParkedRequests(server_index, self._keys, self._job, self._counters,
                                      progress_every=progress_seconds)
        self._last_event = 0.0
        self._handlers: dict[type, Callable[[int, int, Any, float], object | None]] = {
            PSHello: self._hello,
            PSInit: self._init,
            PSWaitInit: self._wait_init,
            PSPush: self._push,
            PSPushRows: self._push_rows,
            PSPull: self._pull,
            PSPullRows: self._pull_rows,
            PSSetOptimizer: self._set_optimizer,
            PSSetUpdater: self._set_updater,
            PSSetCompression: self._set_compression,
            PSSaveStates: self._save_states,
            PSLoadStates: self._load_states,
            PSBarrier: self._barrier,
            PSStats: self._stats,
            PSShutdown: self._shutdown,
            PSPushShm: self._push_shm,
            PSPullShm: self._pull_shm,
            PSPushPacked: self._push_packed,
            PSWaiting: self._waiting,
        }

    # --- ServerLogic ------------------------------------------------------------------------

    def handle(self, conn_id: int, request_id: int, msg: object, now: float) -> list[Outgoing]:
        """Carry out one request; returns its reply (unless parked) and any woken replies.

        PSStats may come from any connection (``kvsync inspect``) and is no job event.
        """
        out, self._deferred = self._deferred, []
        if type(msg) is PSStats:
            return [*out, Outgoing(conn_id, request_id, self._stats(conn_id, request_id, msg, now))]
        self._last_event = now
        handler = self._handlers.get(type(msg))
        try:
            if handler is None:
                raise RejectError(
                    ErrorCode.UNKNOWN_OPCODE, f"server {self.server_index}: not a PS message"
                )
            if type(msg) is not PSHello and conn_id not in self._job.rank_of:
                raise RejectError(
                    ErrorCode.INVALID_ARGUMENT, "a worker connection must send PSHello first"
                )
            reply = handler(conn_id, request_id, msg, now)
        except RejectError as exc:
            reply = exc.reply()
        except Exception as exc:  # an updater, optimizer or compression raised
            logger.debug("server %d: request failed", self.server_index, exc_info=True)
            reply = ErrorReply(
                code=int(code_for(exc)),
                message=f"server {self.server_index}: {type(exc).__name__}: {exc}",
            )
        if reply is not None:
            out.append(Outgoing(conn_id, request_id, reply))
        out.extend(self._parked.wake())
        return out

    def expire(self, now: float) -> list[Outgoing]:
        """Answer parked requests past their deadline, and break stalls (uneven pushes)."""
        out, self._deferred = self._deferred, []
        return out + self._parked.expire(now, self._last_event, self._stall)

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`expire` has something to do (``0.0``: at once)."""
        if self._deferred:
            return 0.0
        return self._parked.next_deadline(self._last_event, self._stall)

    def drop_connection(self, conn_id: int) -> None:
        """Forget a closed connection; its rank is gone, so requests needing it fail."""
        self._parked.drop(conn_id)
        rank = self._job.rank_of.pop(conn_id, None)
        if rank is None or rank in self._job.rank_of.values():
            return
        logger.info("server %d: worker rank %d disconnected", self.server_index, rank)
        self._job.gone.add(rank)
        self._deferred.extend(self._parked.wake())
        if not self._job.rank_of:  # every worker left: no open round can complete now
            self._forget_worker_group()

    def _forget_worker_group(self) -> None:
        """Forget pushes into rounds that never completed, the barrier's arrivals and which
        ranks left, so a restarted worker group (``kvsync-run --max-restarts``) starts from
        the last completed round and waits for its ranks as a new job does."""
        open_keys = [ks for ks in self._keys.values() if ks.pushed or ks.partial]
        for ks in open_keys:
            ks.discard_round()
        self._parked.recheck_all()
        self._job.barrier.clear()
        self._job.gone.clear()
        self._job.elsewhere.clear()
        if open_keys:
            logger.info("server %d: every worker left; discarded the open rounds of %d key(s)",
                        self.server_index, len(open_keys))

    # --- public helpers ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of this server: bytes in (pushes, inits) and out (pulls), keys held,
        and pushes that came through shared memory (from workers on its host); and for
        ``kvsync inspect rounds`` the open rounds (which ranks pushed each key and who is
        missing), the ranks in the barrier and the parked requests."""
        c, n = self._counters, self._job.num_workers
        rounds = [
            {"key": str(ks.key), "round": ks.round, "pushed": sorted(ks.pushed),
             "partial": sorted(ks.partial), "missing": ks.missing(n)}
            for ks in self._keys.values() if ks.pushed or ks.partial
        ]  # fmt: skip
        parked = [{"kind": p.kind, "rank": p.rank, "keys": [str(key_of_wire(k)) for k in p.keys]}
                  for p in self._parked.items]  # fmt: skip
        return {
            "server": self.server_index,
            "bytes_in": c.bytes_in,
            "bytes_out": c.bytes_out,
            "pushes": c.pushes,
            "updates": c.updates,
            "pulls": c.pulls,
            "shm_pushes": c.shm_pushes,
            "keys": len(self._keys),
            "elements": sum(int(k.value.size) for k in self._keys.values()),
            "num_workers": n,
            "rounds": rounds,
            "barrier": sorted(self._job.barrier),
            "parked": parked,
        }

    # --- handlers ---------------------------------------------------------------------------

    def _hello(self, conn_id: int, request_id: int, msg: PSHello, now: float) -> object:
        job = self._job
        if msg.num_workers < 1 or not 0 <= msg.rank < msg.num_workers:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE, f"rank {msg.rank} is not in [0, {msg.num_workers})"
            )
        if job.num_workers and (job.num_workers, job.sync) != (msg.num_workers, msg.sync):
            raise RejectError(
                ErrorCode.KVSTORE_USAGE,
                f"server {self.server_index} serves a job of {job.num_workers} workers "
                f"(sync={job.sync}); rank {msg.rank} says {msg.num_workers} (sync={msg.sync})",
            )
        job.num_workers, job.sync = msg.num_workers, msg.sync
        job.rank_of[conn_id] = msg.rank
        job.gone.discard(msg.rank)
        job.elsewhere.discard(msg.rank)
        return OkReply()

    def _init(self, conn_id: int, request_id: int, msg: PSInit, now: float) -> object:
        """Store new keys. A key this server already holds keeps its value (a worker group
        restarted by the launcher adopts the trained value), if shape and dtype agree."""
        check_pairs(msg.keys, msg.values)
        for k, v in zip(msg.keys, msg.values, strict=True):
            held = self._keys.get(k)
            if held is not None and (held.value.shape, held.value.dtype) != (v.shape, v.dtype):
                raise RejectError(
                    ErrorCode.KVSTORE_USAGE,
                    f"key {key_of_wire(k)!r} is already initialised as "
                    f"{held.value.dtype}{list(held.value.shape)}; init gave "
                    f"{v.dtype}{list(v.shape)}")
        adopted = [k for k in msg.keys if k in self._keys]
        if adopted:
            logger.info("server %d: init of %d key(s) it already holds (%s...): keeping their "
                        "values", self.server_index, len(adopted), key_of_wire(adopted[0]))
        for k, v in zip(msg.keys, msg.values, strict=True):
            if k not in self._keys:
                self._keys[k] = KeyState(key_of_wire(k), v, self._alloc, wire=k)
                self._counters.bytes_in += v.nbytes
        return OkReply()

    def _wait_init(self, conn_id: int, request_id: int, msg: PSWaitInit, now: float) -> object:
        return _park(self, "init", conn_id, request_id, msg.keys, msg.timeout_ms, now)

    def _push(self, conn_id: int, request_id: int, msg: PSPush, now: float) -> object:
        check_pairs(msg.keys, msg.values)
        return self._push_parts(
            conn_id, msg.keys, msg.values, msg.offsets, msg.counts, msg.compressed
        )

    def _push_packed(self, conn_id: int, rid: int, msg: PSPushPacked, now: float) -> object:
        if not len(msg.keys) == len(msg.offsets) == len(msg.counts):
            raise RejectError(ErrorCode.KVSTORE_USAGE, "keys, offsets and counts differ in length")
        data, at, values = msg.data.reshape(-1), 0, []
        for k, n in zip(msg.keys, msg.counts, strict=True):
            stored = self._key(k).value
            shape = stored.shape if stored.ndim == 0 else (n, *stored.shape[1:])
            size = math.prod(shape)
            if data.dtype != stored.dtype or at + size > data.size:
                raise RejectError(
                    ErrorCode.SHAPE_MISMATCH,
                    f"packed push of {data.dtype}[{data.size}] does not hold "
                    f"{shape} {stored.dtype} rows of key {key_of_wire(k)!r}",
                )
            values.append(data[at : at + size].reshape(shape))
            at += size
        if at != data.size:
            raise RejectError(
                ErrorCode.SHAPE_MISMATCH, f"packed push has {data.size - at} values left over"
            )
        check_pairs(msg.keys, tuple(values))
        return self._push_parts(conn_id, msg.keys, tuple(values), msg.offsets, msg.counts, False)

    def _push_parts(
        self,
        conn_id: int,
        wires: tuple[str, ...],
        parts: tuple[np.ndarray, ...],
        offsets: tuple[int, ...],
        counts: tuple[int, ...],
        compressed: bool,
    ) -> object:
        if not len(wires) == len(offsets) == len(counts):
            raise RejectError(ErrorCode.KVSTORE_USAGE, "keys, offsets and counts differ in length")
        rank, sync = self._job.rank_of[conn_id], self._job.sync
        keys = self._keys
        states = [keys.get(k) or self._key(k) for k in wires]
        grads = []
        for ks, v, lo, n in zip(states, parts, offsets, counts, strict=True):
            stored = ks.value
            whole = (
                not compressed
                and lo == 0
                and v.shape == stored.shape
                and v.dtype == stored.dtype
                and rank not in ks.partial
            )
            if not whole:  # a part, or compressed: the full checks
                v = self._grad(ks, v, lo, n, compressed)
                ks.part_rows(lo, v)
                ks.check_order(rank, lo)
            if sync and rank in ks.pushed:
                self._check_round(ks, rank)
            grads.append(v)
        counters = self._counters
        for ks, g, v, lo in zip(states, grads, parts, offsets, strict=True):
            counters.bytes_in += v.nbytes
            self._accept(ks, rank, lo, g)
        return OkReply()

    def _push_rows(self, conn_id: int, request_id: int, msg: PSPushRows, now: float) -> object:
        rank = self._job.rank_of[conn_id]
        ks = self._key(msg.key)
        rows = ks.check_rows(msg.rows)
        data = np.asarray(msg.data)
        want = (len(rows), *ks.value.shape[1:])
        if data.shape != want or data.dtype != ks.value.dtype:
            raise RejectError(
                ErrorCode.SHAPE_MISMATCH,
                f"row-sparse push of key {ks.key!r}: data is "
                f"{data.dtype}{data.shape}, expected {ks.value.dtype}{want}",
            )
        self._check_round(ks, rank)
        ks.check_order(rank, 0)
        grad = np.zeros_like(ks.value)
        np.add.at(grad, rows, data)
        self._counters.bytes_in += rows.nbytes + data.nbytes
        self._accept(ks, rank, 0, grad)
        return OkReply()

    def _push_shm(self, conn_id: int, request_id: int, msg: PSPushShm, now: float) -> object:
        """Every key is checked before any is accepted, as in :meth:`_push_parts`."""
        rank = self._job.rank_of[conn_id]
        attach = self._attach
        if attach is None:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE, f"server {self.server_index} has no shared memory"
            )
        if len(msg.keys) != len(msg.paths) or len(set(msg.keys)) != len(msg.keys):
            raise RejectError(
                ErrorCode.KVSTORE_USAGE,
                "shared-memory push: keys and paths differ in length, or a key appears twice",
            )
        states = [self._key(k) for k in msg.keys]
        for ks in states:
            self._check_round(ks, rank)
            ks.check_order(rank, 0)
        grads = [
            attach(path, ks.value.nbytes).view(ks.value.dtype).reshape(ks.value.shape)
            for ks, path in zip(states, msg.paths, strict=True)
        ]
        for ks, grad in zip(states, grads, strict=True):
            self._counters.bytes_in += ks.value.nbytes
            self._counters.shm_pushes += 1
            self._accept(ks, rank, 0, grad)
        return OkReply()

    def _pull_shm(self, conn_id: int, request_id: int, msg: PSPullShm, now: float) -> object:
        for k in msg.keys:
            if not self._key(k).value_path:
                raise RejectError(
                    ErrorCode.KVSTORE_USAGE,
                    f"key {key_of_wire(k)!r} is not in shared memory on server {self.server_index}",
                )
        return _park(self, "shm", conn_id, request_id, msg.keys, msg.timeout_ms, now)

    def _pull(self, conn_id: int, request_id: int, msg: PSPull, now: float) -> object:
        if not len(msg.keys) == len(msg.offsets) == len(msg.counts):
            raise RejectError(ErrorCode.KVSTORE_USAGE, "keys, offsets and counts differ in length")
        for k, lo, n in zip(msg.keys, msg.offsets, msg.counts, strict=True):
            self._key(k).check_range(lo, n)
        ranges = np.array([msg.offsets, msg.counts], dtype=np.int64)
        return _park(self, "pull", conn_id, request_id, msg.keys, msg.timeout_ms, now, ranges)

    def _pull_rows(self, conn_id: int, request_id: int, msg: PSPullRows, now: float) -> object:
        rows = self._key(msg.key).check_rows(msg.rows)
        return _park(self, "rows", conn_id, request_id, (msg.key,), msg.timeout_ms, now, rows)

    def _set_optimizer(self, conn_id: int, rid: int, msg: PSSetOptimizer, now: float) -> object:
        if self._make_updater is None:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE, f"server {self.server_index} has no optimizer support"
            )
        if msg.config != self._installed.get("optimizer"):  # every worker sends it once
            self._updater = self._make_updater(json_object(msg.config, "optimizer config"))
            self._installed["optimizer"] = msg.config
        return OkReply()

    def _set_updater(self, conn_id: int, rid: int, msg: PSSetUpdater, now: float) -> object:
        if self._named_updater is None:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE, f"server {self.server_index} has no updater registry"
            )
        config = f"{msg.name}:{msg.params}"
        if config != self._installed.get("optimizer"):
            self._updater = self._named_updater(msg.name, json_object(msg.params, "params"))
            self._installed["optimizer"] = config
        return OkReply()

    def _set_compression(self, conn_id: int, rid: int, msg: PSSetCompression, now: float) -> object:
        if self._make_compression is None:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE, f"server {self.server_index} has no compression support"
            )
        if msg.params != self._installed.get("compression"):
            self._compression = self._make_compression(json_object(msg.params, "params"))
            self._installed["compression"] = msg.params
        return OkReply()

    def _save_states(self, conn_id: int, rid: int, msg: PSSaveStates, now: float) -> object:
        return ValueReply(value=self._need_updater().get_states(msg.dump_optimizer))

    def _load_states(self, conn_id: int, rid: int, msg: PSLoadStates, now: float) -> object:
        self._need_updater().set_states(bytes(msg.data))
        return OkReply()

    def _barrier(self, conn_id: int, request_id: int, msg: PSBarrier, now: float) -> object:
        rank = self._job.rank_of[conn_id]
        if rank in self._job.barrier:
            raise RejectError(ErrorCode.KVSTORE_USAGE, f"rank {rank} entered the barrier twice")
        self._job.barrier.add(rank)
        return _park(self, "barrier", conn_id, request_id, (), msg.timeout_ms, now)

    def _waiting(self, conn_id: int, request_id: int, msg: PSWaiting, now: float) -> object:
        rank = self._job.rank_of[conn_id]
        if msg.waiting:
            self._job.elsewhere.add(rank)
        else:
            self._job.elsewhere.discard(rank)
        return OkReply()

    def _stats(self, conn_id: int, request_id: int, msg: PSStats, now: float) -> object:
        return ValueReply(value=json.dumps(self.stats()).encode())

    def _shutdown(self, conn_id: int, request_id: int, msg: PSShutdown, now: float) -> object:
        self.shutdown_requested = True
        return OkReply()

    # --- state changes ----------------------------------------------------------------------

    def _key(self, wire: str) -> KeyState:
        ks = self._keys.get(wire)
        if ks is None:
            raise RejectError(
                ErrorCode.UNINITIALIZED_KEY,
                f"key {key_of_wire(wire)!r} was never initialised on server {self.server_index}",
            )
        return ks

    def _grad(
        self, ks: KeyState, value: np.ndarray, lo: int, n: int, compressed: bool
    ) -> np.ndarray:
        if not compressed:
            return value
        if self._compression is None:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE, f"compressed push of key {ks.key!r} but no compression set"
            )
        shape = ks.value.shape if ks.value.ndim == 0 else (n, *ks.value.shape[1:])
        try:
            return self._compression.decompress(value, shape, ks.value.dtype)
        except ValueError as exc:
            raise RejectError(
                ErrorCode.SHAPE_MISMATCH, f"compressed push of key {ks.key!r}: {exc}"
            ) from None

    def _check_round(self, ks: KeyState, rank: int) -> None:
        if self._job.sync and rank in ks.pushed:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE,
                f"dist_sync: rank {rank} pushed key {ks.key!r} twice in round {ks.round} while "
                f"ranks {ks.missing(self._job.num_workers)} have not pushed it yet (every "
                "worker pushes each key once per round; pull between pushes)",
            )

    def _accept(self, ks: KeyState, rank: int, lo: int, grad: np.ndarray) -> None:
        sync = self._job.sync
        whole = ks.add_part(rank, lo, grad, sync)
        if whole is None:
            return
        self._parked.touch(ks.wire)
        self._counters.pushes += 1
        if not sync:
            self._apply(ks, whole)
        elif len(ks.pushed) >= self._job.num_workers:
            self._apply(ks, ks.close_round())

    def _apply(self, ks: KeyState, grad: np.ndarray) -> None:
        if self._updater is not None:
            self._updater(ks.key, grad, ks.value)
        elif self._job.sync:
            ks.store_sum()
        else:
            np.copyto(ks.value, grad)
        ks.round += 1
        self._counters.updates += 1

    def _need_updater(self) -> StatefulUpdater:
        if self._updater is None:
            raise RejectError(
                ErrorCode.KVSTORE_USAGE, f"no optimizer is set on server {self.server_index}"
            )
        return self._updater

    # --- parking ----------------------------------------------------------------------------


def _park(
    self: ParameterServerLogic,
    kind: str,
    conn_id: int,
    request_id: int,
    keys: tuple[str, ...],
    timeout_ms: int,
    now: float,
    rows: np.ndarray | None = None,
) -> object | None:
    """Park a request; the wake-up after the handler answers it at once when ready."""
    deadline = now + max(timeout_ms, 0) / 1000.0
    self._parked.park(Parked(kind, conn_id, request_id, self._job.rank_of[conn_id], deadline,
                             keys, rows, since=now))
    return None
