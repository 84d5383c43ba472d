"""Unit specs of StoreState: parking, wake-ups, expiry, dropped connections, caps, Router."""

from __future__ import annotations

import logging

import pytest

from kvsync.errors import ErrorCode
from kvsync.protocol import messages as m
from kvsync.protocol.torch_requests import CountBarrier
from kvsync.server.state import Outgoing, Router, StoreState


def replies(out: list[Outgoing]) -> dict[tuple[int, int], object]:
    return {(o.conn_id, o.request_id): o.reply for o in out}


@pytest.fixture
def st() -> StoreState:
    return StoreState(max_key_bytes=16, max_value_bytes=8)


def test_wait_parks_until_every_key_exists_then_answers_the_waiter(st: StoreState) -> None:
    assert st.handle(1, 5, m.Wait(("a", "b"), 1000), now=0.0) == []
    assert replies(st.handle(2, 1, m.Set("a", b"1"), now=0.1)) == {(2, 1): m.OkReply()}
    assert replies(st.handle(2, 2, m.Set("b", b"2"), now=0.2)) == {
        (2, 2): m.OkReply(),
        (1, 5): m.OkReply(),
    }
    assert st.parked == 0 and st.next_deadline() is None


def test_waiter_rechecks_keys_deleted_while_it_was_parked(st: StoreState) -> None:
    st.handle(2, 1, m.Set("b", b"x"), now=0.0)
    assert st.handle(1, 5, m.Wait(("a", "b"), 1000), now=0.0) == []
    st.handle(2, 2, m.DeleteKey("b"), now=0.0)
    assert replies(st.handle(2, 3, m.Set("a", b"x"), now=0.0)) == {(2, 3): m.OkReply()}
    assert (1, 5) in replies(st.handle(2, 4, m.Add("b", 1), now=0.0))


def test_blocking_get_and_multi_get_answer_with_the_values(st: StoreState) -> None:
    st.handle(1, 1, m.Get("k", block=True, timeout_ms=500), now=0.0)
    st.handle(1, 2, m.MultiGet(("j", "k"), block=True, timeout_ms=500), now=0.0)
    st.handle(2, 1, m.Set("j", b"J"), now=0.0)
    out = replies(st.handle(2, 2, m.Set("k", b"K"), now=0.0))
    assert out[(1, 1)] == m.ValueReply(b"K")
    assert out[(1, 2)] == m.ValuesReply((b"J", b"K"))


def test_non_blocking_get_of_missing_key_returns_empty(st: StoreState) -> None:
    assert st.handle(1, 1, m.Get("nope", False, 0), now=0.0)[0].reply == m.ValueReply(b"")


def test_expire_names_missing_keys_and_time_waited(st: StoreState) -> None:
    st.handle(1, 7, m.Wait(("a", "b"), 1000), now=10.0)
    st.handle(2, 1, m.Set("a", b"1"), now=10.5)
    assert st.next_deadline() == pytest.approx(11.0)
    assert st.expire(10.9) == []
    (out,) = st.expire(11.0)
    assert (out.conn_id, out.request_id) == (1, 7)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.TIMEOUT
    assert out.reply.message == (
        "wait for keys ['a', 'b'] timed out after 1.00 s; still missing: ['b']"
    )
    assert st.next_deadline() is None


def test_timeout_zero_answers_at_once_without_parking(st: StoreState) -> None:
    (out,) = st.handle(1, 1, m.Wait(("a",), 0), now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.TIMEOUT
    (out,) = st.handle(1, 2, m.QueuePop("q", True, 0), now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and "queue is still empty" in out.reply.message
    assert st.parked == 0


def test_negative_timeout_is_an_invalid_argument(st: StoreState) -> None:
    (out,) = st.handle(1, 1, m.Wait(("a",), -1), now=0.0)
    assert out.reply == m.ErrorReply(ErrorCode.INVALID_ARGUMENT, "timeout_ms is -1, must be >= 0")


def test_drop_connection_forgets_its_parked_requests_only(st: StoreState) -> None:
    st.handle(1, 1, m.Wait(("a",), 1000), now=0.0)
    st.handle(1, 2, m.QueuePop("q", True, 500), now=0.0)
    st.handle(2, 1, m.Wait(("a",), 2000), now=0.0)
    st.drop_connection(1)
    assert st.parked == 1 and st.next_deadline() == pytest.approx(2.0)
    assert replies(st.handle(3, 1, m.Set("a", b"x"), now=0.0)) == {
        (3, 1): m.OkReply(),
        (2, 1): m.OkReply(),
    }
    assert replies(st.handle(3, 2, m.QueuePush("q", b"i"), now=0.0)) == {(3, 2): m.OkReply()}
    assert st.handle(3, 3, m.QueueLen("q"), now=0.0)[0].reply == m.IntReply(1)


def test_queue_push_hands_items_to_parked_pops_in_fifo_order(st: StoreState) -> None:
    st.handle(1, 1, m.QueuePop("q", True, 1000), now=0.0)
    st.handle(2, 1, m.QueuePop("q", True, 1000), now=0.0)
    assert replies(st.handle(3, 1, m.QueuePush("q", b"x"), now=0.0))[(1, 1)] == m.ValueReply(b"x")
    assert replies(st.handle(3, 2, m.QueuePush("q", b"y"), now=0.0))[(2, 1)] == m.ValueReply(b"y")
    assert st.handle(3, 3, m.NumKeys(), now=0.0)[0].reply == m.IntReply(0)


def test_wait_on_a_queue_key_wakes_on_first_push(st: StoreState) -> None:
    st.handle(1, 1, m.Wait(("q",), 1000), now=0.0)
    assert (1, 1) in replies(st.handle(2, 1, m.QueuePush("q", b"x"), now=0.0))


def test_many_waiters_on_other_keys_are_not_touched_by_a_set() -> None:
    st = StoreState()
    for i in range(2000):
        st.handle(i, 0, m.Wait((f"k{i}",), 60_000), now=0.0)
    assert replies(st.handle(9999, 0, m.Set("k7", b""), now=0.0)) == {
        (9999, 0): m.OkReply(),
        (7, 0): m.OkReply(),
    }
    assert st.parked == 1999


def test_deadline_heap_is_compacted_after_many_answered_waits() -> None:
    st = StoreState()
    for i in range(1000):
        st.handle(1, i, m.Wait(("k",), 60_000), now=0.0)
        st.handle(2, i, m.Set("k", b""), now=0.0)
        st.handle(2, i, m.DeleteKey("k"), now=0.0)
    assert len(st._waiters._heap) < 200  # lazy deletion does not grow without bound
    assert st.next_deadline() is None


def test_stored_memoryview_is_kept_without_copy_and_append_builds_new_bytes() -> None:
    st = StoreState()
    buf = memoryview(bytearray(b"abc"))
    st.handle(1, 1, m.Set("k", buf), now=0.0)
    (out,) = st.handle(1, 2, m.Get("k", False, 0), now=0.0)
    assert isinstance(out.reply, m.ValueReply) and out.reply.value is buf
    st.handle(1, 3, m.Append("k", b"d"), now=0.0)
    assert bytes(buf) == b"abc"
    (out,) = st.handle(1, 4, m.Get("k", False, 0), now=0.0)
    assert isinstance(out.reply, m.ValueReply) and bytes(out.reply.value) == b"abcd"


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (m.Set("k" * 17, b""), "17 bytes, over the limit of 16 bytes"),
        (m.Set("k", b"123456789"), "value for key 'k' is 9 bytes, over the limit of 8 bytes"),
        (m.Wait(("ok", "é" * 9), 10), "18 bytes, over the limit of 16"),
        (m.MultiSet(("a", "b"), (b"", b"x" * 9)), "key 'b' is 9 bytes"),
        (m.QueuePush("q", b"x" * 9), "key 'q' is 9 bytes"),
    ],
)
def test_caps_give_limit_exceeded_naming_key_and_limit(
    st: StoreState, msg: object, needle: str
) -> None:
    (out,) = st.handle(1, 1, msg, now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.LIMIT_EXCEEDED
    assert needle in out.reply.message
    assert st.handle(1, 2, m.NumKeys(), now=0.0)[0].reply == m.IntReply(0)


def test_append_over_value_cap_is_refused(st: StoreState) -> None:
    st.handle(1, 1, m.Set("k", b"12345"), now=0.0)
    (out,) = st.handle(1, 2, m.Append("k", b"6789"), now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.LIMIT_EXCEEDED


def test_add_to_non_integer_is_invalid_argument_naming_key(st: StoreState) -> None:
    st.handle(1, 1, m.Set("k", b"abc"), now=0.0)
    (out,) = st.handle(1, 2, m.Add("k", 1), now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.INVALID_ARGUMENT
    assert "'k'" in out.reply.message and "b'abc'" in out.reply.message


@pytest.mark.parametrize(
    ("current", "expected", "desired", "reply", "stored"),
    [
        (None, b"", b"new", b"new", b"new"),  # missing + empty expected: set
        (None, b"exp", b"new", b"exp", None),  # missing + non-empty expected: echo, no change
        (b"cur", b"cur", b"new", b"new", b"new"),  # equal: set
        (b"cur", b"other", b"new", b"cur", b"cur"),  # different: current
    ],
)
def test_compare_set_follows_torch(
    st: StoreState,
    current: bytes | None,
    expected: bytes,
    desired: bytes,
    reply: bytes,
    stored: bytes | None,
) -> None:
    if current is not None:
        st.handle(1, 0, m.Set("k", current), now=0.0)
    (out,) = st.handle(1, 1, m.CompareSet("k", expected, desired), now=0.0)
    assert out.reply == m.ValueReply(reply)
    (check,) = st.handle(1, 2, m.Check(("k",)), now=0.0)
    assert check.reply == m.IntReply(stored is not None)


def test_unknown_message_type_gets_unknown_opcode(st: StoreState) -> None:
    (out,) = st.handle(1, 1, m.OkReply(), now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.UNKNOWN_OPCODE


class _Echo:
    """A second logic with its own parked state, to check Router fans out."""

    def __init__(self) -> None:
        self.dropped: list[int] = []

    def handle(self, conn_id: int, request_id: int, msg: object, now: float) -> list[Outgoing]:
        return [Outgoing(conn_id, request_id, m.IntReply(42))]

    def expire(self, now: float) -> list[Outgoing]:
        return [Outgoing(0, 0, m.OkReply())] if now >= 5 else []

    def next_deadline(self) -> float | None:
        return 5.0

    def drop_connection(self, conn_id: int) -> None:
        self.dropped.append(conn_id)


def test_router_dispatches_by_type_and_fans_out_the_rest() -> None:
    st, echo = StoreState(), _Echo()
    router = Router({StoreState.MESSAGE_TYPES: st, m.IntReply: echo})
    assert router.handle(1, 1, m.IntReply(0), now=0.0)[0].reply == m.IntReply(42)
    assert router.handle(1, 2, m.Ping(), now=0.0)[0].reply == m.OkReply()
    router.handle(1, 3, m.Wait(("a",), 1000), now=0.0)
    assert router.next_deadline() == pytest.approx(1.0)
    assert len(router.expire(6.0)) == 2
    router.drop_connection(9)
    assert echo.dropped == [9]
    (out,) = router.handle(1, 4, m.ValueReply(b""), now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.UNKNOWN_OPCODE


def test_router_refuses_a_type_routed_twice() -> None:
    with pytest.raises(ValueError, match="Ping"):
        Router({m.Ping: StoreState(), (m.Ping, m.Set): StoreState()})


def test_add_to_a_huge_value_is_refused_without_parsing_it() -> None:
    st = StoreState()
    st.handle(1, 1, m.Set("k", b"1" * 5000), now=0.0)
    (out,) = st.handle(1, 2, m.Add("k", 1), now=0.0)
    assert isinstance(out.reply, m.ErrorReply) and out.reply.code == ErrorCode.INVALID_ARGUMENT
    assert "'k'" in out.reply.message and out.reply.message.endswith("is not a decimal integer")


# --- Barrier: one request per arrival -------------------------------------------------------


def test_barrier_parks_arrivals_until_the_last_then_answers_all(st: StoreState) -> None:
    assert st.handle(1, 1, m.Barrier("b", 3, 1000), now=0.0) == []
    assert st.handle(2, 1, m.Barrier("b", 3, 1000), now=0.1) == []
    assert st.parked == 2
    out = st.handle(3, 1, m.Barrier("b", 3, 1000), now=0.2)
    assert [(o.conn_id, o.reply) for o in out] == [  # its own reply first, then the others
        (3, m.OkReply()),
        (1, m.OkReply()),
        (2, m.OkReply()),
    ]
    assert st.parked == 0 and st.next_deadline() is None
    # the keys of kvsync.store.sync.barrier
    assert bytes(st.handle(9, 1, m.Get("b/arrived", False, 0), now=0.3)[0].reply.value) == b"3"
    assert st.handle(9, 2, m.Check(("b/done/0",)), now=0.3)[0].reply == m.IntReply(1)


def test_barrier_is_reusable_each_generation_waits_for_its_own_flag(st: StoreState) -> None:
    st.handle(1, 1, m.Barrier("b", 2, 1000), now=0.0)
    st.handle(2, 1, m.Barrier("b", 2, 1000), now=0.0)  # generation 0 done
    assert st.handle(1, 2, m.Barrier("b", 2, 1000), now=0.0) == []  # generation 1: parked
    out = st.handle(2, 2, m.Barrier("b", 2, 1000), now=0.0)
    assert replies(out) == {(2, 2): m.OkReply(), (1, 2): m.OkReply()}
    assert st.handle(9, 1, m.Check(("b/done/1",)), now=0.0)[0].reply == m.IntReply(1)


def test_barrier_of_one_returns_at_once(st: StoreState) -> None:
    assert replies(st.handle(1, 1, m.Barrier("b", 1, 0), now=0.0)) == {(1, 1): m.OkReply()}


def test_barrier_meets_arrivals_made_of_add_set_wait(st: StoreState) -> None:
    # a rank running kvsync.store.sync.barrier (add, then wait for the flag) ...
    assert st.handle(1, 1, m.Add("b/arrived", 1), now=0.0)[0].reply == m.IntReply(1)
    assert st.handle(1, 2, m.Wait(("b/done/0",), 1000), now=0.0) == []
    # ... is released by the server-side barrier that completes the generation
    out = st.handle(2, 1, m.Barrier("b", 2, 1000), now=0.0)
    assert replies(out) == {(2, 1): m.OkReply(), (1, 2): m.OkReply()}


def test_barrier_timeout_says_how_many_arrived_and_how_long(st: StoreState) -> None:
    st.handle(1, 1, m.Barrier("b", 4, 500), now=0.0)
    st.handle(2, 1, m.Barrier("b", 4, 2000), now=0.1)
    (out,) = st.expire(0.75)
    assert out.conn_id == 1 and out.reply.code == ErrorCode.TIMEOUT
    assert out.reply.message == ("2/4 ranks reached barrier 'b' after 0.75 s; ranks unknown")
    assert st.parked == 1  # the other arrival waits on


def test_barrier_with_timeout_zero_counts_the_arrival_and_times_out(st: StoreState) -> None:
    (out,) = st.handle(1, 1, m.Barrier("b", 2, 0), now=0.0)
    assert out.reply == m.ErrorReply(
        ErrorCode.TIMEOUT, "1/2 ranks reached barrier 'b' after 0.00 s; ranks unknown"
    )
    assert st.parked == 0
    assert st.handle(1, 2, m.Add("b/arrived", 0), now=0.0)[0].reply == m.IntReply(1)


@pytest.mark.parametrize(
    ("msg", "code", "text"),
    [
        (m.Barrier("b", 0, 100), ErrorCode.INVALID_ARGUMENT, "world_size is 0, must be >= 1"),
        (m.Barrier("b", -3, 100), ErrorCode.INVALID_ARGUMENT, "world_size is -3"),
        (m.Barrier("b", 2, -1), ErrorCode.INVALID_ARGUMENT, "timeout_ms is -1"),
        (m.Barrier("x" * 9, 2, 100), ErrorCode.LIMIT_EXCEEDED, "xxxxxxxxx/arrived"),
    ],
)
def test_a_refused_barrier_changes_nothing(
    st: StoreState, msg: m.Barrier, code: ErrorCode, text: str
) -> None:
    (out,) = st.handle(1, 1, msg, now=0.0)
    assert out.reply.code == code and text in out.reply.message
    assert st.handle(1, 2, m.NumKeys(), now=0.0)[0].reply == m.IntReply(0)
    assert st.parked == 0


def test_a_done_flag_over_the_key_cap_is_refused_before_the_count_changes(
    st: StoreState,
) -> None:
    st.handle(1, 1, m.Set("xxxxxxxx/arrived", b"200"), now=0.0)  # 16 bytes: at the cap
    (out,) = st.handle(1, 2, m.Barrier("x" * 8, 2, 100), now=0.0)  # flag .../done/100
    assert out.reply.code == ErrorCode.LIMIT_EXCEEDED and "xxxxxxxx/done/100" in out.reply.message
    assert bytes(st.handle(1, 3, m.Get("xxxxxxxx/arrived", False, 0), now=0.0)[0].reply.value) == (
        b"200"
    )


def test_barrier_on_a_counter_that_is_not_a_number_is_refused(st: StoreState) -> None:
    st.handle(1, 1, m.Set("b/arrived", b"zz"), now=0.0)
    (out,) = st.handle(1, 2, m.Barrier("b", 2, 100), now=0.0)
    assert out.reply.code == ErrorCode.INVALID_ARGUMENT and "'b/arrived'" in out.reply.message


def test_barrier_timeout_survives_a_counter_overwritten_meanwhile(st: StoreState) -> None:
    st.handle(1, 1, m.Barrier("b", 2, 100), now=0.0)
    st.handle(2, 1, m.Set("b/arrived", b"junk"), now=0.0)
    (out,) = st.expire(1.0)
    assert out.reply.message == "?/2 ranks reached barrier 'b' after 1.00 s; ranks unknown"


def test_a_dropped_connection_leaves_its_arrival_counted_but_nothing_parked(
    st: StoreState,
) -> None:
    st.handle(1, 1, m.Barrier("b", 2, 1000), now=0.0)
    st.drop_connection(1)
    assert st.parked == 0 and st.next_deadline() is None
    assert replies(st.handle(2, 1, m.Barrier("b", 2, 1000), now=0.0)) == {(2, 1): m.OkReply()}


def test_the_longest_parked_request_is_logged_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    st = StoreState(progress_seconds=10.0)
    st.handle(1, 1, m.Barrier("ready", 3, 60_000), 0.0)
    st.handle(2, 2, m.Barrier("ready", 3, 60_000), 5.0)
    assert st.next_deadline() == pytest.approx(10.0)
    with caplog.at_level(logging.INFO, logger="kvsync.server.state"):
        assert st.expire(9.0) == []
        assert not caplog.records
        assert st.expire(10.0) == []
    assert [r.getMessage() for r in caplog.records] == [
        "2 request(s) parked; the longest waiting: 2/3 ranks reached barrier 'ready' after "
        "10.00 s; ranks unknown"
    ]
    assert st.next_deadline() == pytest.approx(20.0)
    assert StoreState(progress_seconds=0).next_deadline() is None


def test_next_deadline_does_not_scan_the_parked_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loop asks for the next deadline every turn: a scan of the parked requests there
    # made a barrier of n ranks cost n^2 (regression: the progress line's "oldest" lookup).
    from kvsync.server.waiters import WaiterIndex

    scans = 0
    oldest = WaiterIndex.oldest

    def counted(self: WaiterIndex) -> object:
        nonlocal scans
        scans += 1
        return oldest(self)

    monkeypatch.setattr(WaiterIndex, "oldest", counted)
    st = StoreState(progress_seconds=10.0)
    for conn in range(200):
        assert st.handle(conn, 1, m.Wait((f"k{conn % 7}",), 60_000), now=conn / 1000) == []
        assert st.next_deadline() == 10.0  # the first line's time: 10 s after the first park
        assert st.expire(now=conn / 1000) == []
    assert scans == 0 and st.parked == 200
    st.expire(now=10.0)  # the line is due: one scan names the longest waiting
    assert scans == 2  # (one per index)
    assert st.next_deadline() == 20.0


# --- a barrier names the ranks still missing when every arrival said its rank -------------


def test_barrier_progress_line_names_exactly_the_missing_ranks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    st = StoreState(progress_seconds=30.0)
    for conn, rank in enumerate([0, 7, 1, 2, 4, 6], start=1):
        assert st.handle(conn, 1, m.Barrier("ready", 8, 600_000, rank), now=0.0) == []
    with caplog.at_level(logging.INFO, logger="kvsync.server.state"):
        assert st.expire(30.0) == []
    assert [r.getMessage() for r in caplog.records] == [
        "6 request(s) parked; the longest waiting: 6/8 ranks reached barrier 'ready' after "
        "30.00 s; missing ranks 3, 5"
    ]
    (w, *_) = st.waiting(30.0)
    assert (w["op"], w["world_size"], w["missing_ranks"]) == ("barrier", 8, [3, 5])


def test_barrier_timeout_names_the_missing_ranks_including_its_own_arrival(
    st: StoreState,
) -> None:
    st.handle(1, 1, m.Barrier("b", 3, 500, 2), now=0.0)
    st.handle(2, 1, m.Barrier("b", 3, 500, 0), now=0.0)
    out = st.expire(0.5)  # both time out together: each text still counts both ranks
    assert [o.reply.message for o in out] == [
        "2/3 ranks reached barrier 'b' after 0.50 s; missing ranks 1"
    ] * 2


@pytest.mark.parametrize(
    ("ranks", "why"),
    [
        ([0, -1], "an arrival without RANK"),
        ([0, 5], "a rank outside range(world_size)"),
        ([1, 1], "a rank arriving twice"),
    ],
)
def test_barrier_says_ranks_unknown_when_they_cannot_be_told(
    st: StoreState, ranks: list[int], why: str
) -> None:
    for conn, rank in enumerate(ranks, start=1):
        st.handle(conn, 1, m.Barrier("b", 4, 1000, rank), now=0.0)
    assert [w["missing_ranks"] for w in st.waiting(0.5)] == [None, None], why
    texts = {o.reply.message for o in st.expire(1.0)}
    assert texts == {"2/4 ranks reached barrier 'b' after 1.00 s; ranks unknown"}, why


def test_barrier_ranks_unknown_when_an_arrival_used_add_and_wait(st: StoreState) -> None:
    st.handle(1, 1, m.Add("b/arrived", 1), now=0.0)  # kvsync.store.sync.barrier: no rank
    st.handle(1, 2, m.Wait(("b/done/0",), 1000), now=0.0)
    st.handle(2, 1, m.Barrier("b", 3, 1000, 1), now=0.0)
    (w,) = [w for w in st.waiting(0.5) if w["op"] == "barrier"]
    assert w["missing_ranks"] is None


def test_a_barrier_arrival_lost_with_its_connection_makes_the_ranks_unknown(
    st: StoreState,
) -> None:
    st.handle(1, 1, m.Barrier("b", 3, 1000, 0), now=0.0)
    st.drop_connection(1)  # still counted, its rank forgotten with it
    st.handle(2, 1, m.Barrier("b", 3, 1000, 1), now=0.0)
    (w,) = st.waiting(0.5)
    assert w["missing_ranks"] is None


def test_barrier_rank_records_end_with_their_generation(st: StoreState) -> None:
    st.handle(1, 1, m.Barrier("b", 2, 1000, 0), now=0.0)
    st.handle(2, 1, m.Barrier("b", 2, 1000, 1), now=0.0)  # generation 0 complete
    st.handle(1, 2, m.Barrier("b", 2, 1000, 1), now=0.0)  # generation 1: rank 1 again is fine
    (w,) = st.waiting(0.1)
    assert w["missing_ranks"] == [0]


def test_torch_count_barrier_progress_says_ranks_unknown(st: StoreState) -> None:
    st.handle(1, 1, CountBarrier("b", 2, 1000), now=0.0)
    (out,) = st.expire(1.0)
    assert out.reply.message.endswith(
        "its count is still below 2; ranks unknown (torch's protocol does not send them)"
    )
