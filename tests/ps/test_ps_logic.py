"""Specification of the parameter-server state machine (kvsync.server.ps), without sockets."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync.errors import ErrorCode
from kvsync.protocol.messages import ErrorReply, OkReply, ValueReply
from kvsync.protocol.ps_messages import (
    PSBarrier,
    PSHello,
    PSInit,
    PSLoadStates,
    PSPackedReply,
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
    PSShmReply,
    PSShutdown,
    PSStats,
    PSValuesReply,
    PSWaiting,
    PSWaitInit,
)
from kvsync.server.ps import Outgoing, ParameterServerLogic

T = 10_000  # timeout_ms of parked requests in these tests


def push_msg(
    keys: tuple[str, ...],
    values: tuple[Any, ...],
    compressed: bool = False,
    counts: tuple[int, ...] | None = None,
) -> PSPush:
    rows = tuple(v.shape[0] if v.ndim else 1 for v in values)
    return PSPush(
        keys=keys,
        values=values,
        offsets=(0,) * len(keys),
        counts=counts or rows,
        compressed=compressed,
    )


def pull_msg(keys: tuple[str, ...], timeout_ms: int, rows: tuple[int, ...] = ()) -> PSPull:
    return PSPull(
        keys=keys, offsets=(0,) * len(keys), counts=rows or (1,) * len(keys), timeout_ms=timeout_ms
    )


class Job:
    """A ParameterServerLogic with ``n`` worker connections (conn_id == rank + 1)."""

    def __init__(self, n: int, *, sync: bool = True, **kwargs: Any) -> None:
        self.ps = ParameterServerLogic(**kwargs)
        self.rid = 0
        self.now = 0.0
        for r in range(n):
            assert self.reply(r, PSHello(rank=r, num_workers=n, sync=sync)) == OkReply()

    def send(self, rank: int, msg: object) -> tuple[int, list[Outgoing]]:
        self.rid += 1
        return self.rid, self.ps.handle(rank + 1, self.rid, msg, self.now)

    def reply(self, rank: int, msg: object) -> object:
        rid, out = self.send(rank, msg)
        mine = [o.reply for o in out if (o.conn_id, o.request_id) == (rank + 1, rid)]
        assert len(mine) == 1, out
        return mine[0]

    def pull_msg(self, keys: tuple[str, ...], timeout_ms: int) -> PSPull:
        rows = tuple(self.ps._keys[k].rows if k in self.ps._keys else 1 for k in keys)
        return pull_msg(keys, timeout_ms, rows)

    def push(self, rank: int, key: str, value: np.ndarray) -> object:
        return self.reply(rank, push_msg((key,), (value,), False))


def values(reply: object) -> tuple[np.ndarray, ...]:
    assert isinstance(reply, PSValuesReply), reply
    return reply.values


def error(reply: object, code: ErrorCode) -> str:
    assert isinstance(reply, ErrorReply), reply
    assert reply.code == code, reply
    return reply.message


def test_sync_pull_after_push_is_parked_until_every_worker_pushed_then_gets_the_sum() -> None:
    job = Job(2)
    job.reply(0, PSInit(keys=("i3",), values=(np.zeros(4, np.float32),)))
    assert job.push(0, "i3", np.ones(4, np.float32)) == OkReply()
    rid, out = job.send(0, job.pull_msg(("i3",), T))
    assert out == []  # parked
    _, out = job.send(1, push_msg(("i3",), (np.full(4, 2, np.float32),), False))
    woken = {(o.conn_id, o.request_id): o.reply for o in out}
    np.testing.assert_array_equal(values(woken[(1, rid)])[0], np.full(4, 3, np.float32))
    np.testing.assert_array_equal(
        values(job.reply(1, job.pull_msg(("i3",), T)))[0], np.full(4, 3, np.float32)
    )


def test_pull_of_a_worker_that_has_not_pushed_is_answered_at_once() -> None:
    job = Job(2)
    job.reply(0, PSInit(keys=("sw",), values=(np.arange(3.0),)))
    job.push(0, "sw", np.ones(3))
    np.testing.assert_array_equal(values(job.reply(1, job.pull_msg(("sw",), T)))[0], np.arange(3.0))


def test_async_applies_every_push_when_it_arrives() -> None:
    job = Job(2, sync=False, updater_from_config=lambda cfg: SGD(cfg["lr"]))
    job.reply(0, PSSetOptimizer(config=json.dumps({"lr": 0.5})))
    job.reply(0, PSInit(keys=("i0",), values=(np.zeros(2),)))
    job.push(0, "i0", np.ones(2))
    job.push(0, "i0", np.ones(2))
    np.testing.assert_array_equal(values(job.reply(1, job.pull_msg(("i0",), T)))[0], [-1.0, -1.0])


def test_other_ranks_init_waits_for_rank_zero_and_reinit_adopts_the_held_value() -> None:
    job = Job(2)
    rid, out = job.send(1, PSWaitInit(keys=("i1", "i2"), timeout_ms=T))
    assert out == []
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(1),)))
    _, out = job.send(0, PSInit(keys=("i2",), values=(np.zeros(1),)))
    assert Outgoing(2, rid, OkReply()) in out
    job.push(0, "i1", np.ones(1))
    job.push(1, "i1", np.ones(1))  # round 1 closes: i1 holds 2
    assert job.reply(0, PSInit(keys=("i1",), values=(np.full(1, 7.0),))) == OkReply()
    np.testing.assert_array_equal(values(job.reply(1, job.pull_msg(("i1",), T)))[0], [2.0])
    msg = error(job.reply(0, PSInit(keys=("i1",), values=(np.zeros(2),))),
                ErrorCode.KVSTORE_USAGE)
    assert "already initialised as float64[1]; init gave float64[2]" in msg


def test_when_every_worker_left_open_rounds_are_discarded_for_a_restarted_group() -> None:
    job = Job(2)
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(1),)))
    job.push(0, "i1", np.ones(1))
    job.push(1, "i1", np.ones(1))  # round 1 complete: 2
    job.push(0, "i1", np.ones(1))  # round 2 open: rank 0 pushed, then the group dies
    job.ps.drop_connection(1)
    assert job.ps._keys["i1"].pushed == {0}  # rank 1 still connected: the round stays open
    job.ps.drop_connection(2)
    again = Job.__new__(Job)  # the restarted group: new connections 1 and 2, same server
    again.ps, again.rid, again.now = job.ps, job.rid, job.now
    for r in range(2):
        assert again.reply(r, PSHello(rank=r, num_workers=2, sync=True)) == OkReply()
    assert again.reply(0, PSInit(keys=("i1",), values=(np.zeros(1),))) == OkReply()
    rid, out = again.send(0, PSBarrier(timeout_ms=T))
    assert out == []  # waits for rank 1 of the new group: the old rank 1 leaving is forgotten
    _, out = again.send(1, PSBarrier(timeout_ms=T))
    assert Outgoing(1, rid, OkReply()) in out
    again.push(0, "i1", np.full(1, 10.0))  # no "pushed twice in one round" error
    again.push(1, "i1", np.full(1, 10.0))
    np.testing.assert_array_equal(values(again.reply(0, again.pull_msg(("i1",), T)))[0], [20.0])


def test_bad_push_gets_a_typed_error_and_changes_nothing() -> None:
    job = Job(1)
    job.reply(0, PSInit(keys=("i1", "i2"), values=(np.zeros(2), np.zeros(2))))
    bad = push_msg(("i1", "i2"), (np.ones(2), np.ones(3)), False)
    assert "[3]" in error(job.reply(0, bad), ErrorCode.SHAPE_MISMATCH)
    bad = push_msg(("i1",), (np.ones(2, np.float32),), False)
    assert "float32" in error(job.reply(0, bad), ErrorCode.SHAPE_MISMATCH)
    assert "9" in error(job.push(0, "i9", np.ones(2)), ErrorCode.UNINITIALIZED_KEY)
    got = values(job.reply(0, job.pull_msg(("i1", "i2"), T)))
    np.testing.assert_array_equal(np.concatenate(got), np.zeros(4))
    assert job.ps.stats()["updates"] == 0


def test_a_key_that_is_not_a_wire_key_gets_a_key_type_error_naming_it() -> None:
    job = Job(1)
    text = error(job.reply(0, PSInit(keys=("x3",), values=(np.zeros(2),))), ErrorCode.KEY_TYPE)
    assert "'x3'" in text and "wire key" in text
    assert job.ps.stats()["keys"] == 0


def test_requests_before_hello_are_refused() -> None:
    ps = ParameterServerLogic()
    [out] = ps.handle(7, 1, pull_msg(("i1",), T), 0.0)
    assert "PSHello" in error(out.reply, ErrorCode.INVALID_ARGUMENT)


def test_second_push_of_a_key_in_one_round_is_an_error_naming_the_missing_ranks() -> None:
    job = Job(3)
    job.reply(0, PSInit(keys=("i5",), values=(np.zeros(1),)))
    job.push(0, "i5", np.ones(1))
    msg = error(job.push(0, "i5", np.ones(1)), ErrorCode.KVSTORE_USAGE)
    assert "twice" in msg and "[1, 2]" in msg


def test_worker_disconnect_fails_parked_pulls_naming_the_rank() -> None:
    job = Job(3)
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(1),)))
    job.push(0, "i1", np.ones(1))
    job.push(1, "i1", np.ones(1))
    rid, out = job.send(0, job.pull_msg(("i1",), T))
    assert out == []
    job.ps.drop_connection(3)  # rank 2 dies
    assert job.ps.next_deadline() == 0.0
    [o] = job.ps.expire(job.now)
    assert (o.conn_id, o.request_id) == (1, rid)
    assert "ranks [2] disconnected" in error(o.reply, ErrorCode.PEER_LOST)
    # later requests needing rank 2 fail at once
    assert "[2]" in error(job.reply(1, PSBarrier(timeout_ms=T)), ErrorCode.PEER_LOST)


def test_barrier_releases_everyone_when_the_last_rank_arrives() -> None:
    job = Job(2)
    rid, out = job.send(0, PSBarrier(timeout_ms=T))
    assert out == []
    rid1, out = job.send(1, PSBarrier(timeout_ms=T))
    assert {(o.conn_id, o.request_id) for o in out} == {(1, rid), (2, rid1)}
    rid, out = job.send(0, PSBarrier(timeout_ms=T))  # the barrier is reusable
    assert out == []


def test_parked_requests_time_out_naming_what_is_missing() -> None:
    job = Job(2)
    job.send(0, PSBarrier(timeout_ms=1500))
    assert job.ps.next_deadline() == 1.5
    assert job.ps.expire(1.0) == []
    [o] = job.ps.expire(1.5)
    assert "ranks [1] missing" in error(o.reply, ErrorCode.TIMEOUT)


def test_uneven_pushes_are_reported_when_every_worker_waits() -> None:
    job = Job(2, stall_seconds=2.0)
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(1),)))
    job.push(0, "i1", np.ones(1))
    job.send(0, job.pull_msg(("i1",), T))
    job.now = 1.0
    job.send(1, PSBarrier(timeout_ms=T))  # rank 1 skipped its push
    assert job.ps.next_deadline() == 3.0
    assert job.ps.expire(2.9) == []
    out = job.ps.expire(3.0)
    assert len(out) == 2
    msg = error(out[0].reply, ErrorCode.KVSTORE_USAGE)
    assert "uneven" in msg and "pushes from ranks [0] but not from [1]" in msg


def test_a_worker_blocked_on_another_server_counts_as_waiting_for_the_stall() -> None:
    job = Job(2, stall_seconds=2.0)
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(1),)))
    job.push(0, "i1", np.ones(1))
    job.send(0, job.pull_msg(("i1",), T))
    assert job.ps.next_deadline() == T / 1000  # rank 1 may still push: no stall
    job.now = 1.0
    assert isinstance(job.reply(1, PSWaiting(waiting=True)), OkReply)
    assert job.ps.next_deadline() == 3.0
    job.now = 2.0
    job.reply(1, PSWaiting(waiting=False))  # rank 1's wait elsewhere ended: not stuck
    assert job.ps.expire(9.0) == []
    job.reply(1, PSWaiting(waiting=True))
    [o] = job.ps.expire(4.0)
    msg = error(o.reply, ErrorCode.KVSTORE_USAGE)
    assert "uneven" in msg and "pushes from ranks [0] but not from [1]" in msg
    assert "ranks [1] are blocked on other servers" in msg


def test_optimizer_runs_on_the_server_and_its_states_save_and_load() -> None:
    job = Job(2, updater_from_config=lambda cfg: SGD(cfg["lr"]))
    assert "no optimizer" in error(
        job.reply(0, PSSaveStates(dump_optimizer=False)), ErrorCode.KVSTORE_USAGE
    )
    job.reply(0, PSSetOptimizer(config=json.dumps({"lr": 0.1})))
    job.reply(0, PSInit(keys=("sw",), values=(np.ones(2),)))
    job.push(0, "sw", np.ones(2))
    job.push(1, "sw", np.ones(2))
    np.testing.assert_allclose(values(job.reply(0, job.pull_msg(("sw",), T)))[0], [0.8, 0.8])
    saved = job.reply(0, PSSaveStates(dump_optimizer=False))
    assert isinstance(saved, ValueReply) and bytes(saved.value) == b"steps=1"
    assert job.reply(1, PSLoadStates(data=b"steps=7")) == OkReply()
    assert job.ps._updater.steps == 7  # type: ignore[union-attr]


def test_unknown_optimizer_error_travels_with_its_code() -> None:
    from kvsync.errors import UnknownNameError

    def make(cfg: dict[str, Any]) -> SGD:
        raise UnknownNameError(f"no optimizer {cfg['name']!r}; known: ['sgd']")

    job = Job(1, updater_from_config=make)
    msg = error(job.reply(0, PSSetOptimizer(config='{"name": "nope"}')), ErrorCode.UNKNOWN_NAME)
    assert "nope" in msg and "sgd" in msg
    assert "JSON" in error(job.reply(0, PSSetOptimizer(config="{")), ErrorCode.KVSTORE_USAGE)


def test_named_updater_and_compression_are_built_by_the_injected_factories() -> None:
    class Halves:
        def decompress(self, packed: np.ndarray, shape: tuple[int, ...], dtype: Any) -> Any:
            return np.repeat(packed, 2).astype(dtype).reshape(shape)

    job = Job(
        1, updater_by_name=lambda name, p: SGD(p["lr"]), compression_from_params=lambda p: Halves()
    )
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(4),)))
    push = push_msg(("i1",), (np.array([1.0, 2.0]),), True, counts=(4,))
    assert "no compression" in error(job.reply(0, push), ErrorCode.KVSTORE_USAGE)
    job.reply(0, PSSetCompression(params='{"type": "halves"}'))
    job.reply(0, PSSetUpdater(name="sgd", params='{"lr": 1.0}'))
    job.reply(0, push)
    np.testing.assert_array_equal(
        values(job.reply(0, job.pull_msg(("i1",), T)))[0], [-1, -1, -2, -2]
    )


def test_row_sparse_push_and_pull_move_only_the_given_rows() -> None:
    job = Job(2)
    job.reply(0, PSInit(keys=("se",), values=(np.zeros((5, 2)),)))
    for r in range(2):
        job.reply(r, PSPushRows(key="se", rows=np.array([1, 3, 1]), data=np.ones((3, 2))))
    got = values(job.reply(0, PSPullRows(key="se", rows=np.array([3, 1]), timeout_ms=T)))[0]
    np.testing.assert_array_equal(got, [[2, 2], [4, 4]])
    bad = PSPullRows(key="se", rows=np.array([5]), timeout_ms=T)
    assert "out of range" in error(job.reply(0, bad), ErrorCode.KVSTORE_USAGE)
    bad2 = PSPushRows(key="se", rows=np.array([0]), data=np.ones((1, 3)))
    assert "expected" in error(job.reply(0, bad2), ErrorCode.SHAPE_MISMATCH)


def test_stats_count_the_bytes_each_way_and_shutdown_sets_the_flag() -> None:
    job = Job(1)
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(10, np.float32),)))
    job.push(0, "i1", np.ones(10, np.float32))
    job.reply(0, job.pull_msg(("i1",), T))
    reply = job.reply(0, PSStats())
    assert isinstance(reply, ValueReply)
    stats = json.loads(bytes(reply.value))
    assert (stats["bytes_in"], stats["bytes_out"], stats["keys"]) == (80, 40, 1)
    assert job.reply(0, PSShutdown()) == OkReply() and job.ps.shutdown_requested


def test_hello_with_another_job_shape_is_refused() -> None:
    job = Job(2)
    msg = error(job.reply(0, PSHello(rank=0, num_workers=3, sync=True)), ErrorCode.KVSTORE_USAGE)
    assert "2 workers" in msg
    assert "not in" in error(
        job.reply(0, PSHello(rank=2, num_workers=2, sync=True)), ErrorCode.KVSTORE_USAGE
    )


@settings(max_examples=40)
@given(n=st.integers(1, 4), rounds=st.integers(1, 3), data=st.data())
def test_any_interleaving_of_sync_rounds_gives_every_worker_every_rounds_sum(
    n: int, rounds: int, data: st.DataObject
) -> None:
    job = Job(n)
    job.reply(0, PSInit(keys=("i0",), values=(np.zeros(1),)))
    grads = {(r, k): float(10 * k + r + 1) for r in range(n) for k in range(rounds)}
    step = dict.fromkeys(range(n), 0)  # 2*round + (1 after its push)
    waiting: dict[int, int] = {}  # rank -> request id of its parked pull
    got: dict[tuple[int, int], float] = {}
    for _ in range(4 * n * rounds):
        ready = [r for r in range(n) if r not in waiting and step[r] < 2 * rounds]
        if not ready:
            break
        r = data.draw(st.sampled_from(ready))
        k = step[r] // 2
        if step[r] % 2 == 0:
            _, out = job.send(r, push_msg(("i0",), (np.array([grads[r, k]]),), False))
        else:
            rid, out = job.send(r, job.pull_msg(("i0",), T))
            waiting[r] = rid
        step[r] += 1
        for o in out:
            if isinstance(o.reply, PSValuesReply):
                rank = o.conn_id - 1
                assert waiting.pop(rank) == o.request_id
                got[rank, step[rank] // 2 - 1] = float(o.reply.values[0][0])
    assert not waiting
    for (r, k), v in got.items():
        assert v == sum(grads[q, k] for q in range(n)), (r, k)
    assert len(got) == n * rounds


class SGD:
    """A tiny stateful updater with the Updater shape (weight -= lr * grad)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr
        self.steps = 0

    def __call__(self, index: Any, grad: np.ndarray, weight: np.ndarray) -> None:
        weight -= self.lr * grad
        self.steps += 1

    def get_states(self, dump_optimizer: bool = False) -> bytes:
        return f"steps={self.steps}".encode()

    def set_states(self, data: bytes) -> None:
        self.steps = int(data.decode().split("=")[1])


def test_every_ps_message_round_trips_through_the_codec_with_arrays_as_views() -> None:
    from kvsync.protocol.codec import OPCODE_OF, Limits, decode, encode_frame
    from kvsync.protocol.framing import HEADER_SIZE
    from kvsync.protocol.ps_messages import PS_MESSAGE_OF

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    samples = [
        PSHello(rank=1, num_workers=2, sync=True),
        PSInit(keys=("i1",), values=(a,)),
        PSWaitInit(keys=("i1", "sx"), timeout_ms=5),
        push_msg(("i1",), (a,), True),
        PSPushRows(key="i1", rows=np.array([1]), data=a[:1]),
        pull_msg(("i1",), 0),
        PSPullRows(key="i1", rows=np.array([0, 1]), timeout_ms=3),
        PSSetOptimizer(config="{}"),
        PSSetUpdater(name="u", params="{}"),
        PSSetCompression(params="{}"),
        PSSaveStates(dump_optimizer=True),
        PSLoadStates(data=b"xy"),
        PSBarrier(timeout_ms=1),
        PSStats(),
        PSShutdown(),
        PSValuesReply(values=(a, a[:, :1].copy())),
        PSPushShm(keys=("i1", "i2"), paths=("/proc/1/fd/3", "/proc/1/fd/5")),
        PSPullShm(keys=("i1",), timeout_ms=7),
        PSShmReply(paths=("/proc/1/fd/4",)),
        PSPushPacked(keys=("i1", "i2"), data=a.reshape(-1), offsets=(0, 0), counts=(1, 1)),
        PSPackedReply(data=a.reshape(-1)),
        PSWaiting(waiting=True),
    ]
    assert {type(m) for m in samples} == set(PS_MESSAGE_OF.values())
    for msg in samples:
        payload = bytearray(b"".join(bytes(p) for p in encode_frame(1, msg))[HEADER_SIZE:])
        back = decode(OPCODE_OF[type(msg)], payload, Limits())
        assert type(back) is type(msg)
        for name in msg.__dataclass_fields__:
            x, y = getattr(msg, name), getattr(back, name)
            if isinstance(x, tuple) and x and isinstance(x[0], np.ndarray):
                assert all(np.array_equal(p, q) for p, q in zip(x, y, strict=True))
            elif isinstance(x, np.ndarray):
                np.testing.assert_array_equal(x, y)
            elif isinstance(x, bytes):
                assert bytes(y) == x
            else:
                assert x == y


def test_a_push_in_parts_from_interleaved_ranks_sums_every_row_once() -> None:
    job = Job(2)
    job.reply(0, PSInit(keys=("sw",), values=(np.zeros((4, 2)),)))

    def part(rank: int, lo: int, rows: int, v: float) -> object:
        msg = PSPush(
            keys=("sw",),
            values=(np.full((rows, 2), v),),
            offsets=(lo,),
            counts=(rows,),
            compressed=False,
        )
        return job.reply(rank, msg)

    assert part(0, 0, 3, 1.0) == OkReply()
    assert part(1, 0, 1, 10.0) == OkReply()  # rank 1 adds to row 0, writes nothing else yet
    rid, out = job.send(1, job.pull_msg(("sw",), T))
    assert out == []  # rank 1 is part-way through its push: its pull waits
    assert "expected row 1" in error(part(1, 2, 1, 5.0), ErrorCode.KVSTORE_USAGE)
    assert part(1, 1, 3, 10.0) == OkReply()
    _, out = job.send(
        0,
        PSPush(
            keys=("sw",),
            values=(np.full((1, 2), 1.0),),
            offsets=(3,),
            counts=(1,),
            compressed=False,
        ),
    )
    [o] = [o for o in out if o.request_id == rid]
    np.testing.assert_array_equal(values(o.reply)[0], np.full((4, 2), 11.0))


def test_async_applies_a_push_only_when_all_its_parts_arrived() -> None:
    job = Job(1, sync=False)
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(4),)))
    for lo in (0, 2):
        job.reply(
            0,
            PSPush(
                keys=("i1",), values=(np.ones(2),), offsets=(lo,), counts=(2,), compressed=False
            ),
        )
        assert job.ps.stats()["updates"] == lo // 2
    np.testing.assert_array_equal(values(job.reply(0, job.pull_msg(("i1",), T)))[0], np.ones(4))


def test_a_whole_push_after_another_ranks_partial_push_adds_only_where_it_wrote() -> None:
    job = Job(2)
    job.reply(0, PSInit(keys=("sw",), values=(np.zeros(4),)))
    job.reply(
        0, PSPush(keys=("sw",), values=(np.ones(2),), offsets=(0,), counts=(2,), compressed=False)
    )
    job.reply(
        1,
        PSPush(
            keys=("sw",), values=(np.full(4, 5.0),), offsets=(0,), counts=(4,), compressed=False
        ),
    )
    job.reply(
        0, PSPush(keys=("sw",), values=(np.ones(2),), offsets=(2,), counts=(2,), compressed=False)
    )
    np.testing.assert_array_equal(
        values(job.reply(0, job.pull_msg(("sw",), T)))[0], np.full(4, 6.0)
    )


def test_many_small_keys_travel_packed_both_ways() -> None:
    job = Job(1)
    keys = tuple(f"i{k}" for k in range(10))
    job.reply(0, PSInit(keys=keys, values=tuple(np.zeros((2, 2)) for _ in keys)))
    data = np.arange(40.0)
    push = PSPushPacked(keys=keys, data=data, offsets=(0,) * 10, counts=(2,) * 10)
    assert job.reply(0, push) == OkReply()
    reply = job.reply(0, job.pull_msg(keys, T))
    assert isinstance(reply, PSPackedReply)
    np.testing.assert_array_equal(reply.data, data)
    short = PSPushPacked(keys=keys, data=np.arange(39.0), offsets=(0,) * 10, counts=(2,) * 10)
    assert "does not hold" in error(job.reply(0, short), ErrorCode.SHAPE_MISMATCH)
    other = PSPushPacked(
        keys=keys, data=np.arange(40, dtype=np.float32), offsets=(0,) * 10, counts=(2,) * 10
    )
    assert "float32" in error(job.reply(0, other), ErrorCode.SHAPE_MISMATCH)
    assert job.ps.stats()["updates"] == 10  # the bad pushes changed nothing


def test_latch_reports_a_lost_server_link_rather_than_a_peer_lost_report() -> None:
    # Regression: with a server killed, a worker could report "ranks [1] disconnected"
    # (the surviving server's view of the effect) instead of naming the dead server.
    import pytest

    from kvsync.errors import PeerLostError, StoreConnectionError
    from kvsync.kv.comm import Latch

    latch = Latch(2)
    latch.set_exception(PeerLostError("server 0: ranks [1] disconnected"))
    latch.set_exception(StoreConnectionError("store server 127.0.0.1:5 closed the connection"))
    with pytest.raises(StoreConnectionError, match=r"127\.0\.0\.1:5") as info:
        latch.wait(1.0)
    assert not isinstance(info.value, PeerLostError)


def test_a_long_wait_is_logged_every_interval_naming_the_missing_ranks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = Job(3, progress_seconds=10.0)
    job.reply(0, PSInit(keys=("i3",), values=(np.zeros(2),)))
    job.push(0, "i3", np.ones(2))
    _, out = job.send(0, job.pull_msg(("i3",), 60_000))
    assert out == []  # parked: ranks 1 and 2 have not pushed
    assert job.ps.next_deadline() == pytest.approx(10.0)
    with caplog.at_level(logging.INFO, logger="kvsync.server.ps_wait"):
        assert job.ps.expire(9.9) == []
        assert not caplog.records
        job.ps.expire(10.0)
        assert caplog.records[-1].getMessage() == (
            "server 0: rank 0 waiting for the round's pushes for keys [3] (ranks [1, 2] "
            "missing), for 10 s so far")
        assert job.ps.next_deadline() == pytest.approx(20.0)


@pytest.mark.timeout(30)
def test_a_push_rechecks_only_the_pulls_waiting_for_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parked pulls are filed under a key they wait for: a request re-checks the pulls of
    the keys it changed, not every parked request (was O(parked) per request)."""
    from kvsync.server import ps_wait

    job = Job(2)
    keys = tuple(f"i{i}" for i in range(50))
    job.reply(0, PSInit(keys=keys, values=tuple(np.zeros(2) for _ in keys)))
    rids = {}
    for k in keys:
        job.push(0, k, np.ones(2))
        rid, out = job.send(0, job.pull_msg((k,), T))
        assert out == []
        rids[k] = rid
    checked: list[tuple[str, ...]] = []
    ready = ps_wait.ParkedRequests._ready_reply

    def spy(self: Any, p: Any, barrier_done: bool) -> object | None:
        checked.append(p.keys)
        return ready(self, p, barrier_done)

    monkeypatch.setattr(ps_wait.ParkedRequests, "_ready_reply", spy)
    for k in keys[:3]:
        _, out = job.send(1, push_msg((k,), (np.full(2, 2.0),)))
        woken = [(o.request_id, values(o.reply)[0].tolist()) for o in out if o.conn_id == 1]
        assert woken == [(rids[k], [3.0, 3.0])]
    assert checked == [(k,) for k in keys[:3]]
    assert len(job.ps.stats()["parked"]) == 47


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["push", "pull", "pull2"]), st.integers(0, 2), st.integers(0, 3)),
        max_size=40,
    )
)
def test_parked_pulls_are_answered_exactly_when_a_full_rescan_would_answer_them(
    steps: list[tuple[str, int, int]],
) -> None:
    """Model check of the key index: after every request, the set of parked pulls equals
    the pulls whose keys all have no open round the pulling rank pushed into."""
    job = Job(3)
    keys = tuple(f"i{i}" for i in range(4))
    job.reply(0, PSInit(keys=keys, values=tuple(np.zeros(1) for _ in keys)))
    pushed: dict[str, set[int]] = {k: set() for k in keys}
    parked: dict[int, tuple[int, tuple[str, ...]]] = {}
    for kind, rank, i in steps:
        k = keys[i]
        if kind == "push":
            if rank in pushed[k]:
                continue  # a second push in one round is refused; not what is checked here
            _, out = job.send(rank, push_msg((k,), (np.ones(1),)))
            pushed[k].add(rank)
            if len(pushed[k]) == 3:
                pushed[k].clear()
        else:
            ks = (k,) if kind == "pull" else (k, keys[(i + 1) % 4])
            rid, out = job.send(rank, job.pull_msg(ks, T))
            parked[rid] = (rank, ks)
        answered = {o.request_id for o in out if not isinstance(o.reply, OkReply)}
        expect = {rid for rid, (r, ks) in parked.items() if all(r not in pushed[k] for k in ks)}
        assert answered == expect
        for rid in answered:
            del parked[rid]
        assert sorted(p["rank"] for p in job.ps.stats()["parked"]) == sorted(
            r for r, _ in parked.values()
        )


def test_answered_pulls_do_not_pile_up_behind_a_long_parked_barrier() -> None:
    """Deadlines are dropped lazily; a barrier parked for long (its deadline first) must
    not keep every answered pull's entry: the heap is compacted as it grows."""
    job = Job(2, sync=False)
    job.reply(0, PSInit(keys=("i1",), values=(np.zeros(1),)))
    job.send(1, PSBarrier(timeout_ms=1))  # earliest deadline, never expired here
    for _ in range(1000):
        values(job.reply(0, job.pull_msg(("i1",), T)))
    parked = job.ps._parked
    assert len(parked.items) == 1
    assert len(parked._deadlines) <= 2 * 1 + 64 + 1
