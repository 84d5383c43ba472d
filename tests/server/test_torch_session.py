"""The server's torch session over the shared StoreState, without sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsync.errors import LimitExceededError, RemoteProtocolError, ServerError
from kvsync.protocol import messages as m
from kvsync.protocol import torch_wire as tw
from kvsync.protocol.connection import drain_events
from kvsync.protocol.torch_requests import CancelWaits, CountBarrier
from kvsync.server.state import StoreState
from kvsync.server.torch_session import TorchSession, key_from_torch, key_to_torch


class _Server:
    """StoreState plus one TorchSession per connection: what the event loop does."""

    def __init__(self, **caps: int) -> None:
        self.state = StoreState(**caps)
        self.sessions: dict[int, TorchSession] = {}
        self.sent: dict[int, bytes] = {}
        self.now = 0.0

    def request(self, conn: int, *msgs: object) -> bytes:
        """Send torch requests on ``conn``; returns the bytes that connection got back."""
        session = self.sessions.setdefault(conn, TorchSession())
        data = b"".join(bytes(b) for msg in msgs for b in tw.encode(msg))

        session.receive_buffer()[: len(data)] = data
        session.advance(len(data))
        events, error = drain_events(session)  # type: ignore[arg-type]
        assert error is None
        before = self.sent.get(conn, b"")
        for request_id, msg in events:
            self._deliver(self.state.handle(conn, request_id, msg, self.now))
        return self.sent.get(conn, b"")[len(before) :]

    def _deliver(self, outgoing: list[Any]) -> None:
        for o in outgoing:
            wire = self.sessions[o.conn_id].encode(o.request_id, o.reply)
            self.sent[o.conn_id] = self.sent.get(o.conn_id, b"") + b"".join(map(bytes, wire))


def test_requests_torch_answers_with_nothing_get_nothing() -> None:
    srv = _Server()
    sent = srv.request(1, tw.Validate(tw.MAGIC), tw.Set("/a", b"1"), tw.Append("/a", b"2"),
                       tw.MultiSet(("/b",), (b"3",)), tw.QueuePush("/q", b"4"))  # fmt: skip
    assert sent == b""
    assert srv.request(1, tw.MultiGet(("/a", "/b"))) == bytes.fromhex(
        "02000000000000003132010000000000000033"
    )


def test_a_wait_is_answered_when_another_connection_sets_its_key() -> None:
    srv = _Server()
    assert srv.request(1, tw.Wait(("/k", "/j"))) == b""
    assert srv.request(2, tw.Set("/k", b"v")) == b""
    assert srv.sent.get(1) is None  # /j still missing
    srv.request(2, tw.Set("/j", b"v"))
    assert srv.sent[1] == b"\x00"  # STOP_WAITING


def test_a_cancel_after_the_wait_was_answered_gets_stop_waiting_then_canceled() -> None:
    srv = _Server()
    srv.request(1, tw.Wait(("/k",)))
    srv.request(2, tw.Set("/k", b"v"))
    assert srv.request(1, tw.CancelWait()) == b"\x01"
    assert srv.sent[1] == b"\x00\x01"


def test_a_canceled_wait_is_never_answered_and_the_connection_goes_on() -> None:
    srv = _Server()
    srv.request(1, tw.Wait(("/k",)))
    assert srv.request(1, tw.CancelWait()) == b"\x01"
    assert srv.state.parked == 0
    srv.request(2, tw.Set("/k", b"v"))
    assert srv.request(1, tw.Get("/k")) == b"\x01" + bytes(7) + b"v"
    assert srv.sent[1] == b"\x01" + b"\x01" + bytes(7) + b"v"


def test_a_queue_pop_answers_the_length_before_the_pop() -> None:
    srv = _Server()
    srv.request(1, tw.QueuePush("/q", b"a"), tw.QueuePush("/q", b"b"))
    assert (
        srv.request(1, tw.QueuePop("/q")) == (2).to_bytes(8, "little") + b"\x01" + bytes(7) + b"a"
    )
    assert (
        srv.request(1, tw.QueuePop("/q")) == (1).to_bytes(8, "little") + b"\x01" + bytes(7) + b"b"
    )
    assert srv.request(1, tw.QueuePop("/q")) == bytes(8)  # empty: length 0, no value
    assert srv.sessions[1].error is None


def test_a_torch_barrier_counts_at_its_key_and_stays_passed() -> None:
    srv = _Server()
    assert srv.request(1, tw.Barrier("/b", 2)) == b""
    assert srv.request(2, tw.Barrier("/b", 2)) == b"\x00"
    assert srv.sent[1] == b"\x00"
    assert srv.request(3, tw.Barrier("/b", 2)) == b"\x00"  # no generations, as in torch
    assert srv.request(3, tw.Get("/b")) == b"\x01" + bytes(7) + b"3"


def test_a_refused_request_fails_only_its_session() -> None:
    srv = _Server(max_value_bytes=4)
    srv.request(1, tw.Set("/w", b"word"))
    assert srv.request(1, tw.Add("/w", 1)) == b""
    assert isinstance(srv.sessions[1].error, ServerError)
    assert srv.request(2, tw.Set("/big", b"12345")) == b""
    assert isinstance(srv.sessions[2].error, LimitExceededError)
    assert srv.request(3, tw.Get("/w")) == b"\x04" + bytes(7) + b"word"


def test_the_state_forgets_a_connections_parked_requests_on_cancel() -> None:
    st = StoreState()
    assert st.handle(1, 1, m.Wait(("k",), 10_000), now=0.0) == []
    assert st.handle(1, 2, CountBarrier("b", 2, 10_000), now=0.0) == []
    assert st.parked == 2
    assert [o.reply for o in st.handle(1, 3, CancelWaits(), now=0.0)] == [m.OkReply()]
    assert st.parked == 0


def test_a_count_barrier_times_out_naming_its_key() -> None:
    st = StoreState()
    st.handle(1, 1, CountBarrier("b", 2, 500), now=0.0)
    (out,) = st.expire(now=1.0)
    assert out.reply.code == 1 and "barrier 'b'" in out.reply.message


@given(st.text(max_size=20))
def test_key_names_map_both_ways(raw: str) -> None:
    key = key_from_torch(raw)
    assert key_to_torch(key) == raw or (raw.startswith("/__kvsync/torch/"))
    if raw.startswith("/"):
        assert key == raw[1:]


@pytest.mark.parametrize("raw", ["init/", "", "x"])
def test_keys_without_the_slash_live_under_the_reserved_prefix(raw: str) -> None:
    assert key_from_torch(raw) == "__kvsync/torch/" + raw


def test_requests_before_garbage_are_served_then_the_session_fails() -> None:
    session = TorchSession()
    data = b"".join(bytes(b) for b in tw.encode(tw.Set("/a", b"1"))) + b"\xfe"
    view = session.receive_buffer()
    view[: len(data)] = data
    session.advance(len(data))
    event = session.next_event()
    assert event.message == m.Set("a", b"1")  # type: ignore[union-attr]
    with pytest.raises(RemoteProtocolError, match="unknown torch query type 254"):
        session.next_event()
    assert isinstance(session.error, RemoteProtocolError)


def _answered(out: list[Any]) -> set[tuple[int, int]]:
    return {(o.conn_id, o.request_id) for o in out if o.reply == m.OkReply()}


def test_count_barriers_of_different_sizes_on_one_key_pass_as_the_count_reaches_them() -> None:
    st = StoreState()
    assert st.handle(1, 1, CountBarrier("b", 5, 10_000), now=0.0) == []  # count 1
    assert st.handle(2, 1, CountBarrier("b", 3, 10_000), now=0.0) == []  # 2
    assert _answered(st.handle(3, 1, CountBarrier("b", 3, 10_000), now=0.0)) == {(3, 1), (2, 1)}
    st.handle(4, 1, m.Set("b", b"word"), now=0.0)  # not a count: everyone keeps waiting
    assert st.parked == 1
    assert _answered(st.handle(4, 2, m.Set("b", b"7"), now=0.0)) == {(4, 2), (1, 1)}
    assert st.parked == 0
    assert _answered(st.handle(5, 1, CountBarrier("b", 5, 10_000), now=0.0)) == {(5, 1)}


def test_a_parked_count_barrier_shows_in_inspect() -> None:
    # regression: kvsync inspect waiters failed (AttributeError) on a parked torch BARRIER
    st = StoreState()
    st.handle(1, 1, CountBarrier("b", 3, 5_000), now=0.0)
    (w,) = st.waiting(1.0)
    assert (w["op"], w["keys"], w["world_size"], w["waited_s"]) == ("barrier", ["b"], 3, 1.0)


def test_count_barrier_arrivals_do_not_look_at_every_parked_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # regression: each arrival re-checked every parked caller (n^2 for n ranks)
    from kvsync.server.waiters import WaiterIndex

    looked = 0
    take = WaiterIndex.take

    def counted(self: WaiterIndex, key: str) -> list[Any]:
        nonlocal looked
        got = take(self, key)
        looked += len(got)
        return got

    monkeypatch.setattr(WaiterIndex, "take", counted)
    st = StoreState()
    for conn in range(300):
        assert st.handle(conn, 1, CountBarrier("b", 301, 60_000), now=0.0) == []
    assert looked == 0 and st.parked == 300
    assert len(_answered(st.handle(300, 1, CountBarrier("b", 301, 60_000), now=0.0))) == 301


def test_timed_out_count_barriers_are_dropped_not_answered_again() -> None:
    st = StoreState()
    for conn in range(200):  # time out: their entries are compacted away as more park
        st.handle(conn, 1, CountBarrier("b", 10_000, 100), now=0.0)
    assert len(st.expire(now=1.0)) == 200 and st.parked == 0
    assert st.handle(500, 1, CountBarrier("b", 202, 60_000), now=2.0) == []
    assert len(st._counts["b"]) < 200  # (compacted on the way)
    out = st.handle(501, 1, CountBarrier("b", 202, 60_000), now=2.0)
    assert _answered(out) == {(500, 1), (501, 1)}


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 6), st.booleans()), min_size=1, max_size=40
    )
)
def test_count_barriers_match_a_model(steps: list[tuple[int, int, bool]]) -> None:
    # model: a parked caller is answered exactly when the key's count reaches its size
    state = StoreState()
    counts: dict[str, int] = {}
    parked: dict[tuple[int, int], tuple[str, int]] = {}
    for i, (k, size, expire) in enumerate(steps):
        key = f"k{k}"
        if expire:  # time out everything parked so far, as the loop would
            out = state.expire(now=float(i) + 100.0)
            assert {(o.conn_id, o.request_id) for o in out} == set(parked)
            parked.clear()
            continue
        counts[key] = counts.get(key, 0) + 1
        out = state.handle(i, 1, CountBarrier(key, size, 50_000), now=float(i))
        expected = {c for c, (kk, s) in parked.items() if kk == key and s <= counts[key]}
        if counts[key] < size:
            parked[(i, 1)] = (key, size)
        else:
            expected.add((i, 1))
        assert _answered(out) == expected
        for c in expected:
            parked.pop(c, None)
        assert state.parked == len(parked)
