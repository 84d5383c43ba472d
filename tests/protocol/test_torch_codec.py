"""The torch TCPStore codec: torch's bytes exactly, any split of a stream, caps, garbage."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import mutated

from kvsync.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol import torch_connection
from kvsync.protocol import torch_wire as tw
from kvsync.protocol.connection import Role
from kvsync.protocol.fields import Limits
from kvsync.protocol.torch_connection import LANDING_BYTES, TorchConnection

keys = st.text(max_size=12)
values = st.one_of(  # big ones are cheap to draw: one byte repeated
    st.binary(max_size=24),
    st.builds(lambda b, n: bytes([b]) * n, st.integers(0, 255), st.integers(0, 2)).map(
        lambda v: v + bytes(LANDING_BYTES)
    ),
)
key_lists = st.lists(keys, max_size=4).map(tuple)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def _multi_set(draw: Any) -> tw.MultiSet:
    pairs = draw(st.lists(st.tuples(keys, values), max_size=3))
    return tw.MultiSet(tuple(k for k, _ in pairs), tuple(v for _, v in pairs))


requests = st.one_of(
    st.just(tw.Validate(tw.MAGIC)),
    st.builds(tw.Set, keys, values),
    st.builds(tw.CompareSet, keys, values, values),
    st.builds(tw.Get, keys),
    st.builds(tw.Add, keys, i64),
    st.builds(tw.Check, key_lists),
    st.builds(tw.Wait, key_lists),
    st.just(tw.NumKeys()),
    st.builds(tw.DeleteKey, keys),
    st.builds(tw.Append, keys, values),
    st.builds(tw.MultiGet, key_lists),
    _multi_set(),
    st.just(tw.CancelWait()),
    st.builds(tw.Ping, u32),
    st.builds(tw.QueuePush, keys, values),
    st.builds(tw.QueuePop, keys),
    st.builds(tw.QueueLen, keys),
    st.just(tw.ListKeys()),
    st.builds(tw.Barrier, keys, i64),
)


def _norm(msg: Any) -> Any:
    if dataclasses.is_dataclass(msg):
        return (type(msg).__name__, *(_norm(getattr(msg, f.name)) for f in dataclasses.fields(msg)))
    if isinstance(msg, tuple):
        return tuple(_norm(x) for x in msg)
    if isinstance(msg, bytearray | memoryview):
        return bytes(msg)
    return msg


def _wire(msgs: list[Any], role: Role = Role.CLIENT) -> bytes:
    conn = TorchConnection(role)
    return b"".join(bytes(b) for m in msgs for b in conn.send(m))


def _feed(data: bytes, cuts: list[int], limits: Limits | None = None) -> tuple[list[Any], str]:
    """Requests a server decodes from ``data`` cut at ``cuts``, and how it ended."""
    conn = TorchConnection(Role.SERVER, limits=limits)
    got: list[Any] = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            conn.receive_data(data[a:b])
            got += [_norm(m) for m in conn.events()]
        got += [_norm(m) for m in conn.events()]  # an error held back behind good ones
    except (RemoteProtocolError, LimitExceededError) as exc:
        return got, type(exc).__name__
    return got, "need data"


@settings(max_examples=150, deadline=None)
@given(st.lists(requests, max_size=5))
def test_requests_decode_to_what_was_encoded_whole_or_byte_by_byte(msgs: list[Any]) -> None:
    data = _wire(msgs)
    expected = ([_norm(m) for m in msgs], "need data")
    assert _feed(data, []) == expected
    small = len(data) < 4096
    assert _feed(data, list(range(len(data))) if small else list(range(0, len(data), 997))) == (
        expected
    )


def _streams() -> st.SearchStrategy[bytes]:
    small = requests.filter(lambda m: len(_wire([m])) < 2000)
    return st.one_of(st.binary(max_size=200), mutated(st.lists(small, max_size=3).map(_wire)))


@settings(max_examples=200, deadline=None)
@given(_streams(), st.lists(st.integers(0, 1 << 17), max_size=8))
def test_any_bytes_split_anyhow_give_the_same_requests_or_a_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    limits = Limits(max_key_bytes=64, max_value_bytes=1 << 17, max_frame_bytes=1 << 18)
    whole = _feed(data, [], limits)
    assert _feed(data, cuts, limits) == whole
    assert _feed(data, list(range(len(data))), limits) == whole


replies_for = {
    tw.Get("/a"): st.builds(tw.ValueReply, values),
    tw.CompareSet("/a", b"", b"x"): st.builds(tw.ValueReply, values),
    tw.Add("/n", 1): st.builds(tw.IntReply, i64),
    tw.Check(("/a",)): st.builds(tw.CheckReply, st.booleans()),
    tw.Wait(("/a",)): st.just(tw.StopWaiting()),
    tw.NumKeys(): st.builds(tw.IntReply, i64),
    tw.MultiGet(("/a", "/b")): st.builds(tw.ValuesReply, st.tuples(values, values)),
    tw.Ping(5): st.builds(tw.PingReply, u32),
    tw.QueuePop("/q"): st.one_of(
        st.just(tw.QueuePopReply(0, None)),
        st.builds(tw.QueuePopReply, st.integers(1, 9), values),
    ),
    tw.ListKeys(): st.builds(tw.KeysReply, key_lists),
    tw.Barrier("/b", 2): st.just(tw.StopWaiting()),
}


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_client_decodes_each_reply_by_the_request_it_answers(data: Any) -> None:
    sent = data.draw(st.lists(st.sampled_from(list(replies_for)), max_size=5))
    replies = [data.draw(replies_for[r]) for r in sent]
    client = TorchConnection(Role.CLIENT)
    for r in [tw.Set("/x", b"1"), *sent]:  # SET expects no reply
        client.send(r)
    stream = _wire(replies, Role.SERVER)
    got: list[Any] = []
    step = data.draw(st.integers(1, 9)) if len(stream) < 4096 else 4099
    for i in range(0, len(stream), step):
        client.receive_data(stream[i : i + step])
        got += [_norm(m) for m in client.events()]
    assert got == [_norm(r) for r in replies]
    assert client.awaiting_replies == 0


# --- torch 2.13's own bytes (observed between its client and its libuv server) -------------

OBSERVED = [
    (tw.Validate(tw.MAGIC), "00 ce f7 85 3c"),
    (tw.Ping(0x4792), "0d 92 47 00 00"),
    (tw.Add("init/", 1), "04 05 00 00 00 00 00 00 00 69 6e 69 74 2f 01 00 00 00 00 00 00 00"),
    (tw.Set("/a", b"xy"), "01 02 00 00 00 00 00 00 00 2f 61 02 00 00 00 00 00 00 00 78 79"),
    (tw.Wait(("/a",)), "06 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 2f 61"),
    (tw.CancelWait(), "0c"),
    (tw.Check(("/a",)), "05 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 2f 61"),
    (tw.Barrier("/b", 2), "12 02 00 00 00 00 00 00 00 2f 62 02 00 00 00 00 00 00 00"),
    (tw.QueuePop("/qq"), "0f 03 00 00 00 00 00 00 00 2f 71 71"),
    (tw.ListKeys(), "11"),
    (
        tw.MultiSet(("/p", "/q"), (b"1", b"2")),
        "0b 02 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 2f 70 01 00 00 00 00 00 00 00 31"
        " 02 00 00 00 00 00 00 00 2f 71 01 00 00 00 00 00 00 00 32",
    ),
    (tw.PingReply(0x4792), "92 47 00 00"),
    (tw.StopWaiting(), "00"),
    (tw.WaitCanceled(), "01"),
    (tw.CheckReply(False), "01"),
    (tw.IntReply(5), "05 00 00 00 00 00 00 00"),
    (tw.ValueReply(b"xy"), "02 00 00 00 00 00 00 00 78 79"),
    (tw.QueuePopReply(0, None), "00 00 00 00 00 00 00 00"),
    (
        tw.QueuePopReply(1, b"i1"),
        "01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 69 31",
    ),
    (
        tw.ValuesReply((b"1", b"2")),
        "01 00 00 00 00 00 00 00 31 01 00 00 00 00 00 00 00 32",
    ),
    (
        tw.KeysReply(("/b", "init/")),
        "02 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 2f 62"
        " 05 00 00 00 00 00 00 00 69 6e 69 74 2f",
    ),
]


@pytest.mark.parametrize(("msg", "hexbytes"), OBSERVED, ids=lambda x: type(x).__name__)
def test_messages_are_the_bytes_torch_sends(msg: Any, hexbytes: str) -> None:
    assert b"".join(bytes(b) for b in tw.encode(msg)) == bytes.fromhex(hexbytes)


def test_a_cancel_that_crossed_the_stop_waiting_gets_both_bytes() -> None:
    client = TorchConnection(Role.CLIENT)
    for m in (tw.Wait(("/k",)), tw.CancelWait(), tw.Wait(("/k",)), tw.CancelWait()):
        client.send(m)
    client.receive_data(b"\x00\x01")  # the wait was answered first, then the cancel
    assert client.events() == [tw.StopWaiting(), tw.WaitCanceled()]
    client.receive_data(b"\x01")  # the cancel came first: one byte answers both
    assert client.events() == [tw.WaitCanceled()] and client.awaiting_replies == 0


# --- caps, garbage, misuse ------------------------------------------------------------------


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"\x01" + _u64(1 << 60), LimitExceededError, "key of 1152921504606846976 bytes"),
        (b"\x01" + _u64(1) + b"a" + _u64(1 << 40), LimitExceededError, "max_value_bytes"),
        (b"\x05" + _u64(1 << 40), LimitExceededError, "max_items"),
        (b"\x13", RemoteProtocolError, "unknown torch query type 19"),
        (b"\x00\x00\x00\x00\x00", RemoteProtocolError, "magic 0x00000000"),
        (b"\x03" + _u64(2) + b"\xff\xfe", RemoteProtocolError, "not UTF-8"),
    ],
)
def test_garbage_and_oversized_fields_fail_before_anything_is_allocated(
    data: bytes, error: type[Exception], words: str
) -> None:
    conn = TorchConnection(Role.SERVER)
    conn.receive_data(data)
    with pytest.raises(error, match=words):
        conn.next_event()
    with pytest.raises(LocalProtocolError, match="unusable"):
        conn.next_event()


def test_a_multi_set_is_capped_as_a_whole() -> None:
    limits = Limits(max_key_bytes=16, max_value_bytes=100, max_frame_bytes=250)
    conn = TorchConnection(Role.SERVER, limits=limits)
    conn.receive_data(_wire([tw.MultiSet(("/a", "/b", "/c"), (b"x" * 90,) * 3)]))
    with pytest.raises(LimitExceededError, match="max_frame_bytes"):
        conn.next_event()


def test_a_reply_nobody_asked_for_is_a_protocol_error() -> None:
    client = TorchConnection(Role.CLIENT)
    client.send(tw.Set("/a", b"1"))
    client.receive_data(b"\x00")
    with pytest.raises(RemoteProtocolError, match="answer no request"):
        client.next_event()


def test_each_role_sends_only_its_own_messages() -> None:
    with pytest.raises(LocalProtocolError, match="server cannot send Get"):
        TorchConnection(Role.SERVER).send(tw.Get("/a"))
    with pytest.raises(LocalProtocolError, match="client cannot send StopWaiting"):
        TorchConnection(Role.CLIENT).send(tw.StopWaiting())
    with pytest.raises(LocalProtocolError, match="not a torch message"):
        tw.encode(object())


def test_a_big_value_lands_in_its_own_buffer_through_recv_into() -> None:
    value = bytes(range(256)) * 1024  # 256 KiB
    data = _wire([tw.Set("/big", value), tw.Get("/big")])
    conn = TorchConnection(Role.SERVER)
    stream = memoryview(data)
    views, got = [], []
    for _ in range(100):
        view = conn.receive_buffer()
        views.append(view)
        n = min(len(view), len(stream), 50_000)
        view[:n] = stream[:n]
        conn.advance(n)
        got += conn.events()  # as a server does after each receive
        stream = stream[n:]
        if not stream:
            break
    assert got == [tw.Set("/big", value), tw.Get("/big")]
    assert isinstance(got[0].value, bytearray)  # the landing buffer itself, not a copy
    assert any(v.obj is got[0].value for v in views)


def test_an_idle_connection_offers_a_small_buffer_that_grows_while_receives_fill_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch_connection, "_SCRATCH_MAX", 16 * 1024)  # few requests to decode
    conn = TorchConnection(Role.SERVER)
    sizes = []
    for _ in range(5):
        view = conn.receive_buffer()
        sizes.append(len(view))
        view[:] = b"\x07" * len(view)  # GETNUMKEYS requests, one byte each
        conn.advance(len(view))
        assert set(conn.events()) == {tw.NumKeys()}
    assert sizes == [4096, 8192, 16384, 16384, 16384]
