"""StoreState against a plain dict model, driven by hypothesis (no sockets, no clock)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvsync.errors import ErrorCode
from kvsync.protocol import messages as m
from kvsync.server.state import Outgoing, StoreState

KEYS = st.sampled_from(["a", "b", "c", "a/arrived"])  # the last: barrier "a"'s counter
VALUES = st.one_of(st.binary(max_size=6), st.integers(-50, 50).map(lambda i: str(i).encode()))


def _b(v: object) -> bytes:
    return bytes(v)  # type: ignore[call-overload]


class StoreModel(RuleBasedStateMachine):
    """Every request's reply, and every wake-up, must match what a dict predicts."""

    def __init__(self) -> None:
        super().__init__()
        self.state = StoreState(max_key_bytes=64, max_value_bytes=64)
        self.values: dict[str, bytes] = {}
        self.queues: dict[str, list[bytes]] = {}
        self.parked: dict[int, tuple[tuple[str, ...], float]] = {}  # request id -> keys
        self.pops: dict[int, tuple[str, float]] = {}  # request id -> queue key
        self.now = 0.0
        self.next_id = 1

    # --- helpers ------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return key in self.values or key in self.queues

    def send(self, msg: object) -> tuple[object | None, dict[int, object]]:
        rid = self.next_id
        self.next_id += 1
        out = self.state.handle(rid, rid, msg, self.now)
        own = [o.reply for o in out if o.request_id == rid]
        others = {o.request_id: o.reply for o in out if o.request_id != rid}
        assert len(own) <= 1
        assert all(isinstance(o, Outgoing) and o.conn_id == o.request_id for o in out)
        self.last_id = rid
        return (own[0] if own else None), others

    def expect_woken(self, others: dict[int, object]) -> None:
        woken = {rid for rid, (keys, _) in self.parked.items() if all(map(self.exists, keys))}
        woken_pops = {rid for rid in others if rid in self.pops}
        assert set(others) == woken | woken_pops, (others, self.parked)
        for rid in woken:
            assert others[rid] == m.OkReply()
            del self.parked[rid]

    def store_value(self, key: str, value: bytes) -> None:
        self.queues.pop(key, None)
        self.values[key] = value

    # --- rules --------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES)
    def set(self, key: str, value: bytes) -> None:
        reply, others = self.send(m.Set(key, value))
        assert reply == m.OkReply()
        self.store_value(key, value)
        self.expect_woken(others)

    @rule(key=KEYS, value=VALUES)
    def set_memoryview(self, key: str, value: bytes) -> None:
        reply, others = self.send(m.Set(key, memoryview(bytearray(value))))
        assert reply == m.OkReply()
        self.store_value(key, value)
        self.expect_woken(others)

    @rule(key=KEYS)
    def get(self, key: str) -> None:
        reply, _ = self.send(m.Get(key, block=False, timeout_ms=0))
        if key in self.queues:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.INVALID_ARGUMENT
        else:
            assert isinstance(reply, m.ValueReply)
            assert _b(reply.value) == self.values.get(key, b"")

    @rule(key=KEYS, amount=st.integers(-1000, 1000))
    def add(self, key: str, amount: int) -> None:
        reply, others = self.send(m.Add(key, amount))
        if key in self.queues:
            assert isinstance(reply, m.ErrorReply)
            return
        try:
            base = int(self.values.get(key, b"0"))
        except ValueError:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.INVALID_ARGUMENT
            assert repr(key) in reply.message
            return
        assert reply == m.IntReply(base + amount)
        self.values[key] = str(base + amount).encode()
        self.expect_woken(others)

    @rule(key=KEYS, expected=VALUES, desired=VALUES, use_current=st.booleans())
    def compare_set(self, key: str, expected: bytes, desired: bytes, use_current: bool) -> None:
        if use_current and key in self.values:
            expected = self.values[key]
        reply, others = self.send(m.CompareSet(key, expected, desired))
        if key in self.queues:
            assert isinstance(reply, m.ErrorReply)
            return
        assert isinstance(reply, m.ValueReply)
        current = self.values.get(key)
        if current is None and expected:
            assert _b(reply.value) == expected
        elif current is not None and current != expected:
            assert _b(reply.value) == current
        else:
            assert _b(reply.value) == desired
            self.values[key] = desired
        self.expect_woken(others)

    @rule(key=KEYS, value=VALUES)
    def append(self, key: str, value: bytes) -> None:
        reply, others = self.send(m.Append(key, value))
        if key in self.queues:
            assert isinstance(reply, m.ErrorReply)
            return
        new = self.values.get(key, b"") + value
        if len(new) > 64:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.LIMIT_EXCEEDED
            return
        assert reply == m.OkReply()
        self.values[key] = new
        self.expect_woken(others)

    @rule(key=KEYS)
    def delete_key(self, key: str) -> None:
        reply, _ = self.send(m.DeleteKey(key))
        assert reply == m.IntReply(int(self.exists(key)))
        self.values.pop(key, None)
        self.queues.pop(key, None)

    @rule(pairs=st.lists(st.tuples(KEYS, VALUES), max_size=3))
    def multi_set(self, pairs: list[tuple[str, bytes]]) -> None:
        keys = tuple(k for k, _ in pairs)
        reply, others = self.send(m.MultiSet(keys, tuple(v for _, v in pairs)))
        assert reply == m.OkReply()
        for k, v in pairs:
            self.store_value(k, v)
        self.expect_woken(others)

    @rule(keys=st.lists(KEYS, max_size=3))
    def multi_get_and_check(self, keys: list[str]) -> None:
        reply, _ = self.send(m.Check(tuple(keys)))
        assert reply == m.IntReply(int(all(map(self.exists, keys))))
        reply, _ = self.send(m.MultiGet(tuple(keys), block=False, timeout_ms=0))
        if any(k in self.queues for k in keys):
            assert isinstance(reply, m.ErrorReply)
        else:
            assert isinstance(reply, m.ValuesReply)
            assert [_b(v) for v in reply.values] == [self.values.get(k, b"") for k in keys]

    @rule(key=KEYS, value=VALUES)
    def queue_push(self, key: str, value: bytes) -> None:
        reply, others = self.send(m.QueuePush(key, value))
        if key in self.values:
            assert isinstance(reply, m.ErrorReply)
            return
        assert reply == m.OkReply()
        waiting = [rid for rid, (k, _) in self.pops.items() if k == key]
        if waiting:  # the oldest parked pop gets the item
            assert others == {waiting[0]: m.ValueReply(value)}
            del self.pops[waiting[0]]
            return
        self.queues.setdefault(key, []).append(value)
        self.expect_woken(others)

    @rule(key=KEYS, block=st.booleans(), timeout_ms=st.integers(0, 3000))
    def queue_pop(self, key: str, block: bool, timeout_ms: int) -> None:
        reply, _ = self.send(m.QueuePop(key, block, timeout_ms))
        if key in self.values:
            assert isinstance(reply, m.ErrorReply)
        elif self.queues.get(key):
            assert isinstance(reply, m.ValueReply)
            assert _b(reply.value) == self.queues[key].pop(0)
            if not self.queues[key]:
                del self.queues[key]
        elif not block:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.INVALID_ARGUMENT
        elif timeout_ms == 0:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.TIMEOUT
        else:
            assert reply is None
            self.pops[self.last_id] = (key, self.now + timeout_ms / 1000)

    @rule(keys=st.lists(KEYS, max_size=3), timeout_ms=st.integers(0, 3000))
    def wait(self, keys: list[str], timeout_ms: int) -> None:
        reply, _ = self.send(m.Wait(tuple(keys), timeout_ms))
        if all(map(self.exists, keys)):
            assert reply == m.OkReply()
        elif timeout_ms == 0:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.TIMEOUT
        else:
            assert reply is None
            self.parked[self.last_id] = (tuple(keys), self.now + timeout_ms / 1000)

    @rule(key=KEYS, world_size=st.integers(1, 3), timeout_ms=st.integers(0, 3000),
          rank=st.integers(-1, 3))  # fmt: skip
    def barrier(self, key: str, world_size: int, timeout_ms: int, rank: int) -> None:
        reply, others = self.send(m.Barrier(key, world_size, timeout_ms, rank))
        arrived = f"{key}/arrived"
        if arrived in self.queues:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.INVALID_ARGUMENT
            return
        try:
            count = int(self.values.get(arrived, b"0")) + 1
        except ValueError:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.INVALID_ARGUMENT
            assert repr(arrived) in reply.message
            return
        done = f"{key}/done/{(count - 1) // world_size}"
        self.values[arrived] = str(count).encode()
        if count % world_size == 0:  # the last of its generation
            assert reply == m.OkReply()
            self.store_value(done, b"1")
        elif self.exists(done):
            assert reply == m.OkReply()
        elif timeout_ms == 0:
            assert isinstance(reply, m.ErrorReply) and reply.code == ErrorCode.TIMEOUT
            assert f"/{world_size} ranks reached barrier {key!r}" in reply.message
            said = reply.message.rsplit("; ", 1)[1]
            assert said == "ranks unknown" or said.startswith("missing ranks ")
        else:
            assert reply is None
            self.parked[self.last_id] = ((done,), self.now + timeout_ms / 1000)
        self.expect_woken(others)

    @rule(seconds=st.floats(0, 2))
    def advance_time(self, seconds: float) -> None:
        self.now += seconds
        out = self.state.expire(self.now)
        expired = {rid for rid, (_, d) in self.parked.items() if d <= self.now}
        expired |= {rid for rid, (_, d) in self.pops.items() if d <= self.now}
        assert {o.request_id for o in out} == expired
        for o in out:
            assert isinstance(o.reply, m.ErrorReply) and o.reply.code == ErrorCode.TIMEOUT
            self.parked.pop(o.request_id, None)
            self.pops.pop(o.request_id, None)

    @rule(data=st.data())
    def drop_connection(self, data: st.DataObject) -> None:
        ids = sorted({*self.parked, *self.pops})
        if ids:
            rid = data.draw(st.sampled_from(ids))
            self.state.drop_connection(rid)
            self.parked.pop(rid, None)
            self.pops.pop(rid, None)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def counts_and_listing_match(self) -> None:
        n, _ = self.send(m.NumKeys())
        assert n == m.IntReply(len(self.values) + len(self.queues))
        keys, _ = self.send(m.ListKeys())
        assert isinstance(keys, m.KeysReply)
        assert sorted(keys.keys) == sorted([*self.values, *self.queues])
        for k in ("a", "b"):
            qlen, _ = self.send(m.QueueLen(k))
            assert qlen == m.IntReply(len(self.queues.get(k, ())))

    @invariant()
    def barrier_rank_records_live_only_while_someone_waits(self) -> None:
        parked_flags = {keys[0] for keys, _ in self.parked.values() if len(keys) == 1}
        assert set(self.state._arrivals) <= parked_flags  # no leak after timeouts or drops

    @invariant()
    def parked_and_deadline_match(self) -> None:
        assert self.state.parked == len(self.parked) + len(self.pops)
        deadlines = [d for _, d in (*self.parked.values(), *self.pops.values())]
        assert self.state.next_deadline() == min(deadlines, default=None)


StoreModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestStoreModel = StoreModel.TestCase
