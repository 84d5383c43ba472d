"""Held pushes (the per-server buckets of :mod:`kvsync.kv.comm`): pushes of one key per call
wait until a call needs them, a bucket is full, or the linger passed; order, values and
errors stay MXNet's."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from dist_fakes import FakeLink, FakeServer, SilentLink, run_workers
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsync import defaults, errors
from kvsync.kv.comm import BATCH_BYTES, Comm, Latch, Op
from kvsync.kv.dist import DistKVStore
from kvsync.protocol.messages import OkReply
from kvsync.protocol.ps_messages import PSPull, PSPush, PSPushPacked, PSValuesReply


class RecordingLink:
    """A server in a dict: a push stores its values, a pull answers the stored ones; every
    message is recorded (kind, keys) in arrival order."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.messages: list[tuple[str, tuple[str, ...]]] = []
        self._replies: dict[int, object] = {}
        self._ids = itertools.count(1)
        self._cv = threading.Condition()

    def submit(self, msg: object, into: np.ndarray | None = None) -> int:
        with self._cv:
            rid = next(self._ids)
            reply: object = OkReply()
            if isinstance(msg, PSPushPacked):
                self.messages.append(("push", msg.keys))
                for k, v in zip(msg.keys, msg.data.reshape(-1), strict=True):
                    self.values[k] = float(v)
            elif isinstance(msg, PSPush):
                self.messages.append(("push", msg.keys))
                for k, a in zip(msg.keys, msg.values, strict=True):
                    self.values[k] = float(a.reshape(-1)[0])
            else:
                assert isinstance(msg, PSPull)
                self.messages.append(("pull", msg.keys))
                reply = PSValuesReply(
                    values=tuple(np.array([self.values.get(k, 0.0)]) for k in msg.keys)
                )
            self._replies[rid] = reply
            self._cv.notify_all()
            return rid

    def result(self, rid: int, timeout: float | None = None) -> object:
        with self._cv:
            assert self._cv.wait_for(lambda: rid in self._replies, timeout)
            return self._replies.pop(rid)

    def pushes(self) -> int:
        with self._cv:
            return sum(kind == "push" for kind, _ in self.messages)


KEYS = [f"i{k}" for k in range(6)]


class HeldPushes(RuleBasedStateMachine):
    """Any interleaving of pushes, pulls and flushes over 2 servers, at any priorities:
    pushes stay held until a pull or a flush; a pull sees every earlier push of its key
    (per-key program order), whatever the priorities."""

    def __init__(self) -> None:
        super().__init__()
        self.links = [RecordingLink(), RecordingLink()]
        self.comm = Comm(self.links, timeout=5.0)
        self.comm._linger = 60.0  # held until a call needs them (no time-based sends here)
        self.model: dict[str, float] = {}
        self.version = itertools.count(1)
        self.sent = 0  # push messages the links had when the held pushes began
        self.holding = False

    @staticmethod
    def server(wire: str) -> int:
        return int(wire[1:]) % 2

    @rule(wire=st.sampled_from(KEYS), priority=st.integers(-3, 3))
    def push(self, wire: str, priority: int) -> None:
        v = float(next(self.version))
        value = np.array([v])
        self.comm.enqueue_many(
            [Op("push", self.server(wire), wire, value=value, nbytes=value.nbytes)],
            priority,
            hold=True,
        )
        self.model[wire] = v
        if not self.holding:
            self.holding, self.sent = True, sum(link.pushes() for link in self.links)

    @rule(wires=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
          priority=st.integers(-3, 3))  # fmt: skip
    def pull(self, wires: list[str], priority: int) -> None:
        outs = [np.full(1, -1.0) for _ in wires]
        latch = Latch(len(wires))
        ops = [Op("pull", self.server(w), w, out=o, nbytes=8, future=latch)
               for w, o in zip(wires, outs, strict=True)]  # fmt: skip
        self.comm.enqueue_many(ops, priority)
        latch.wait(5.0)
        self.holding = False
        for w, o in zip(wires, outs, strict=True):
            assert o[0] == self.model.get(w, 0.0), (w, o[0], self.model)

    @rule()
    def flush(self) -> None:
        self.comm.flush(5.0)
        self.holding = False
        for w, v in self.model.items():
            assert self.links[self.server(w)].values[w] == v

    @precondition(lambda self: self.holding)
    @invariant()
    def held_pushes_are_not_sent(self) -> None:
        assert sum(link.pushes() for link in self.links) == self.sent

    def teardown(self) -> None:
        self.comm.close()


TestHeldPushes = HeldPushes.TestCase
TestHeldPushes.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    ss = [FakeServer(i, stall_seconds=1.0) for i in range(2)]
    yield ss
    for s in ss:
        s.stop()


class CountingLink(FakeLink):
    """A FakeLink that counts the push messages it carries."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self.push_messages = 0

    def submit(self, msg: object, into: object = None) -> int:
        if isinstance(msg, PSPush | PSPushPacked):
            self.push_messages += 1
        return super().submit(msg, into)


def test_pushes_of_one_key_per_call_travel_as_one_message_per_server(
    servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "PS_PUSH_LINGER_SECONDS", 30.0)
    links = [CountingLink(s) for s in servers]
    kv = DistKVStore("dist_sync", rank=0, num_workers=1, links=links, timeout=10)
    try:
        keys = list(range(40))
        kv.init(keys, [np.zeros(16, np.float32) for _ in keys])
        for i in keys:  # gluon's Trainer: one call per key, the last layers first
            kv.push(i, np.full(16, i, np.float32), priority=-i)
        assert [link.push_messages for link in links] == [0, 0]  # held
        outs = [kv.pull(i, priority=-i) for i in keys]
    finally:
        kv.close()
    # key 0's push goes first with its pull right behind it (priority 0), then one message
    # per server with the other keys
    assert sum(link.push_messages for link in links) == 3
    for i, o in enumerate(outs):
        np.testing.assert_array_equal(o, np.full(16, i, np.float32))


def _pushes_reach(server: FakeServer, n: int) -> bool:
    """Whether ``server`` has taken ``n`` whole pushes within 10 s (polled)."""
    for _ in range(200):
        if server.logic.stats()["pushes"] >= n:
            return True
        time.sleep(0.05)
    return False


def test_a_full_bucket_goes_without_waiting_for_a_pull(
    servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "PS_PUSH_LINGER_SECONDS", 30.0)
    links = [CountingLink(s) for s in servers]
    kv = DistKVStore("dist_async", rank=0, num_workers=1, links=links[:1], timeout=10)
    try:
        rows = BATCH_BYTES // 4 // 1024 // 2 + 1  # two of them fill a bucket
        kv.init([0, 1], [np.zeros((rows, 1024), np.float32)] * 2)
        kv.push(0, np.ones((rows, 1024), np.float32))
        time.sleep(0.05)
        assert links[0].push_messages == 0
        kv.push(1, np.ones((rows, 1024), np.float32))
        assert _pushes_reach(servers[0], 2)
    finally:
        kv.close()


def test_a_held_push_goes_after_the_linger_without_another_call(
    servers: list[FakeServer],
) -> None:
    kv = DistKVStore("dist_async", rank=0, num_workers=1, links=[FakeLink(servers[0])], timeout=10)
    try:
        kv.init("w", np.zeros(4))
        kv.push("w", np.ones(4))
        assert _pushes_reach(servers[0], 1)
    finally:
        kv.close()


def test_a_server_error_inside_a_bucket_is_raised_by_the_next_call_naming_the_key(
    servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "PS_PUSH_LINGER_SECONDS", 30.0)

    def step(kv: DistKVStore) -> np.ndarray:
        keys = list(range(8))
        kv.init(keys, [np.zeros(3)] * 8)
        if kv.rank == 0:
            for k in keys:
                kv.push(k, np.ones(3))
            kv.push(5, np.ones(3))  # twice in the round: the server refuses it
            with pytest.raises(errors.InvalidArgumentError, match="key 5 twice"):
                kv.wait()
        kv.barrier()
        if kv.rank == 1:
            for k in keys:
                kv.push(k, np.ones(3))
        return np.stack(kv.pull(keys))

    for got in run_workers(2, servers, step):
        np.testing.assert_array_equal(got, np.full((8, 3), 2.0))


def test_a_bucket_a_stuck_server_never_answers_times_out_at_the_next_call(
    servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(defaults, "PS_REPLY_GRACE_SECONDS", 0.5)
    kv = DistKVStore("dist_async", rank=0, num_workers=1, timeout=1.0,
                     links=[SilentLink(servers[0], (PSPush, PSPushPacked))])  # fmt: skip
    try:
        kv.init([0, 1, 2], [np.zeros(3)] * 3)
        for k in range(3):
            kv.push(k, np.ones(3))
        start = time.monotonic()
        with pytest.raises(errors.StoreTimeoutError):
            kv.wait()
        assert time.monotonic() - start < 5.0
    finally:
        kv.close()


class _ReplyLink:
    """Answers every request with ``reply``."""

    def __init__(self, reply: object) -> None:
        self.reply = reply

    def submit(self, msg: object, into: np.ndarray | None = None) -> int:
        return 1

    def result(self, request_id: int, timeout: float | None = None) -> object:
        return self.reply


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["pull", "pull_shm"])
def test_a_pull_batch_whose_copy_fails_midway_fails_the_call_at_once(kind: str) -> None:
    """Every op of a delivered batch is settled only after every copy succeeded: a first
    key settled before a later key's copy failed left the call's latch one short, and the
    pull waited for its whole timeout instead of raising."""
    from kvsync.kv.shm import SharedSegments, shm_supported
    from kvsync.protocol.ps_messages import PSShmReply

    if kind == "pull_shm" and not shm_supported():
        pytest.skip("no shared memory here")
    segments = SharedSegments()
    try:
        good, buf = segments.create(64)
        buf[:] = 7
        reply: object = (
            PSShmReply(paths=(good, "/proc/1/fd/999999"))  # the second one does not exist
            if kind == "pull_shm"
            else PSValuesReply(values=(np.full(64, 7, np.uint8), np.zeros(3, np.uint8)))
        )
        comm = Comm([_ReplyLink(reply)], timeout=30.0, shared=segments)
        outs = [np.zeros(64, np.uint8), np.zeros(64, np.uint8)]
        latch = Latch(2)
        ops = [
            Op(kind, 0, w, out=o, future=latch, nbytes=64) for w, o in zip("ab", outs, strict=True)
        ]
        t0 = time.monotonic()
        comm.enqueue_many(ops, 0)
        with pytest.raises((OSError, ValueError)):
            latch.wait(10.0)
        assert time.monotonic() - t0 < 5.0
        comm.close()
    finally:
        segments.close()
