"""Specification of the sans-IO Connection: handshake, chunking, caps, zero-copy receive."""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import (
    REPLIES,
    REQUESTS,
    drain_events,
    fuzz_stream,
    join_buffers,
    message_strategy,
    normalize,
)

from kvsync.errors import (
    AuthenticationError,
    LimitExceededError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)
from kvsync.protocol.codec import Limits, encode_frame
from kvsync.protocol.connection import NEED_DATA, SMALL_FRAME, Connection, Event, Role
from kvsync.protocol.framing import HEADER, MAGIC, PROTOCOL_VERSION, pack_header
from kvsync.protocol.messages import (
    Get,
    Hello,
    MultiSet,
    OkReply,
    Opcode,
    Ping,
    Set,
    ValueReply,
)

SMALL_LIMITS = Limits(max_key_bytes=64, max_value_bytes=1 << 16, max_frame_bytes=1 << 17)


def _pump(src: Connection, dst: Connection) -> object:
    dst.receive_data(join_buffers(src.data_to_send()))
    return dst.next_event()


def _pair(
    client_secret: str | None = None, server_secret: str | None = None
) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, secret=client_secret)
    server = Connection(Role.SERVER, secret=server_secret, limits=SMALL_LIMITS)
    assert _pump(client, server) is NEED_DATA
    assert _pump(server, client) is NEED_DATA
    if client_secret is not None and server_secret is not None:
        assert _pump(client, server) is NEED_DATA
        assert _pump(server, client) is NEED_DATA
    return client, server


def _events(conn: Connection) -> list[Event]:
    out = []
    for _ in range(10_000):
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        assert isinstance(ev, Event)
        out.append(ev)
    raise AssertionError("unbounded events")


def test_handshake_without_secret_completes_and_learns_the_server_caps() -> None:
    client, server = _pair()
    assert client.handshake_complete and server.handshake_complete
    assert client.peer_limits is not None
    assert client.peer_limits.max_key_bytes == SMALL_LIMITS.max_key_bytes


def test_handshake_with_matching_secrets_authenticates_both_ways() -> None:
    client, server = _pair("s3cret", "s3cret")
    server.receive_data(join_buffers(client.send(9, Ping())))
    assert server.next_event() == Event(9, Ping())


def test_a_client_with_the_wrong_secret_fails_on_both_sides() -> None:
    client = Connection(Role.CLIENT, secret="wrong")
    server = Connection(Role.SERVER, secret="right")
    _pump(client, server)
    with pytest.raises(AuthenticationError, match="did not prove"):
        _pump(server, client)


def test_a_server_rejects_a_client_proof_that_does_not_match() -> None:
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER, secret="right")
    _pump(client, server)
    server.data_to_send()
    from kvsync.protocol.messages import Auth

    server.receive_data(join_buffers(encode_frame(0, Auth(proof=b"x" * 32))))
    with pytest.raises(AuthenticationError, match="proof does not match"):
        server.next_event()


def test_a_client_without_secret_is_told_the_server_requires_one() -> None:
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER, secret="right")
    _pump(client, server)
    with pytest.raises(AuthenticationError, match="KVSYNC_SECRET"):
        _pump(server, client)


def test_a_client_with_a_secret_refuses_a_server_without_one() -> None:
    client = Connection(Role.CLIENT, secret="mine")
    server = Connection(Role.SERVER)
    _pump(client, server)
    with pytest.raises(AuthenticationError):
        _pump(server, client)


def test_wrong_version_in_the_header_names_both_versions() -> None:
    server = Connection(Role.SERVER)
    frame = bytearray(join_buffers(encode_frame(0, Hello(version=PROTOCOL_VERSION, nonce=b""))))
    frame[4] = PROTOCOL_VERSION + 1
    server.receive_data(frame)
    with pytest.raises(
        VersionMismatchError, match=rf"version {PROTOCOL_VERSION + 1}.*{PROTOCOL_VERSION}"
    ):
        server.next_event()


def test_wrong_version_in_the_hello_names_both_versions() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(join_buffers(encode_frame(0, Hello(version=7, nonce=b""))))
    with pytest.raises(VersionMismatchError, match=rf"version 7.*version {PROTOCOL_VERSION}"):
        server.next_event()


def test_wrong_magic_says_the_peer_is_not_kvsync() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(VersionMismatchError, match=r"b'GET '.*KVSY"):
        server.next_event()


def test_a_request_before_the_hello_is_refused() -> None:
    server = Connection(Role.SERVER)
    server.receive_data(join_buffers(encode_frame(1, Ping())))
    with pytest.raises(RemoteProtocolError, match="expected Hello"):
        server.next_event()


def test_a_header_claiming_2_63_bytes_is_refused_before_allocating() -> None:
    _, server = _pair()
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, Opcode.SET, 0, 5, 1 << 63)
    tracemalloc.start()
    try:
        server.receive_data(header)
        with pytest.raises(LimitExceededError, match=r"9223372036854775808 bytes.*max_frame"):
            server.next_event()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert server.last_request_id == 5


def test_flags_and_unknown_opcodes_are_refused_from_the_header() -> None:
    _, server = _pair()
    server.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, 0x7E, 0, 1, 0))
    with pytest.raises(RemoteProtocolError, match="unknown opcode 0x7e"):
        server.next_event()
    _, server = _pair()
    server.receive_data(HEADER.pack(MAGIC, PROTOCOL_VERSION, Opcode.PING, 1, 1, 0))
    with pytest.raises(RemoteProtocolError, match="flags"):
        server.next_event()


def test_after_an_error_the_connection_refuses_further_use() -> None:
    _, server = _pair()
    server.receive_data(b"garbage garbage garbage garbage")
    with pytest.raises(VersionMismatchError):
        server.next_event()
    with pytest.raises(LocalProtocolError, match="earlier error"):
        server.next_event()
    with pytest.raises(LocalProtocolError):
        server.receive_buffer()
    with pytest.raises(LocalProtocolError):
        server.send(1, OkReply())


def test_roles_are_enforced_in_both_directions() -> None:
    client, server = _pair()
    with pytest.raises(LocalProtocolError):
        client.send(1, OkReply())
    with pytest.raises(LocalProtocolError):
        server.send(1, Ping())
    server.receive_data(join_buffers(encode_frame(1, OkReply())))
    with pytest.raises(RemoteProtocolError, match="may not send OkReply"):
        server.next_event()
    client.receive_data(join_buffers(encode_frame(1, Ping())))
    with pytest.raises(RemoteProtocolError, match="may not send Ping"):
        client.next_event()


def test_a_client_cannot_send_before_the_handshake() -> None:
    with pytest.raises(LocalProtocolError, match="handshake"):
        Connection(Role.CLIENT).send(1, Ping())


def test_the_client_refuses_values_over_the_server_cap_before_sending() -> None:
    client, _ = _pair()
    with pytest.raises(LimitExceededError, match="limit of 65536 bytes"):
        client.send(1, Set(key="k", value=bytes((1 << 16) + 1)))


@given(st.lists(st.sampled_from(REQUESTS).flatmap(message_strategy), max_size=4), st.data())
def test_requests_round_trip_through_connections_in_any_chunking(
    msgs: list[object], data: st.DataObject
) -> None:
    client, server = _pair()
    client.peer_limits = None  # strategies may exceed the small server key cap
    server.limits = Limits(0, 0, 1 << 30)
    stream = b"".join(join_buffers(client.send(i, m)) for i, m in enumerate(msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    got: list[Event] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        server.receive_data(stream[a:b])
        got += _events(server)
    assert [(e.request_id, normalize(e.message)) for e in got] == [
        (i, normalize(m)) for i, m in enumerate(msgs)
    ]


@given(st.sampled_from(REPLIES).flatmap(message_strategy))
def test_replies_round_trip_to_the_client(msg: object) -> None:
    client, server = _pair()
    client.receive_data(join_buffers(server.send(3, msg)))
    (ev,) = _events(client)
    assert ev.request_id == 3 and normalize(ev.message) == normalize(msg)


def test_large_payloads_are_received_zero_copy_into_fresh_buffers() -> None:
    client, server = _pair()
    value = bytes(range(256)) * 200  # 51200 bytes > SMALL_FRAME
    stream = join_buffers(client.send(1, Set(key="k", value=value))) + join_buffers(
        client.send(2, Ping())
    )
    pos, views = 0, []
    for _ in range(1000):
        buf = server.receive_buffer()
        n = min(len(buf), 3000, len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        server.advance(n)
        pos += n
        views += _events(server)
        if pos == len(stream):
            break
    first, second = views
    assert isinstance(first.message, Set) and second.message == Ping()
    mv = first.message.value
    assert isinstance(mv, memoryview) and bytes(mv) == value
    assert isinstance(mv.obj, bytearray) and len(mv.obj) > SMALL_FRAME


def _default_pair() -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    assert _pump(client, server) is NEED_DATA and _pump(server, client) is NEED_DATA
    return client, server


def _feed_in_chunks(conn: Connection, stream: bytes, chunk: int) -> list[Event]:
    pos, events = 0, []
    for _ in range(len(stream) // chunk + 2):
        buf = conn.receive_buffer()
        n = min(len(buf), chunk, len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        del buf
        conn.advance(n)
        pos += n
        events += _events(conn)
        if pos == len(stream):
            break
    return events


def test_megabyte_payloads_land_in_unzeroed_buffers_and_decode_alike() -> None:
    # Payloads of 1 MiB and more are received into numpy memory that is not zeroed first
    # (a memoryview, not a bytearray): every field type must decode from it the same way.
    client, server = _default_pair()
    big = bytes(range(256)) * (5 << 12)  # 5 MiB
    keys = ("é" * 100, "k2")
    stream = join_buffers(client.send(1, Set(key="clé", value=big))) + join_buffers(
        client.send(2, MultiSet(keys=keys, values=(big[:3], big)))
    )
    first, second = _feed_in_chunks(server, stream, 1 << 16)
    assert first.message.key == "clé" and bytes(first.message.value) == big
    assert isinstance(first.message.value.obj, memoryview | np.ndarray)
    assert second.message.keys == keys and [bytes(v) for v in second.message.values] == [
        big[:3],
        big,
    ]


def test_a_bad_key_in_a_megabyte_payload_is_a_remote_error() -> None:
    client, server = _default_pair()
    frame = bytearray(join_buffers(client.send(1, Set(key="kk", value=bytes(2 << 20)))))
    frame[24 + 4] = 0xFF  # the key's first byte: not UTF-8
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        _feed_in_chunks(server, bytes(frame), 1 << 16)


def test_advance_past_the_buffer_is_a_local_error() -> None:
    conn = Connection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        conn.advance(len(conn.receive_buffer()) + 1)


def _receive_from(conn: Connection, data: bytes) -> None:
    """Feed ``data`` into ``receive_buffer`` and ``advance`` the way a socket's recv_into
    would."""
    while data:
        n = _fill(conn.receive_buffer(), data)
        conn.advance(n)
        data = data[n:]


def _outcome(
    stream: bytes, cuts: list[int], via_receive_from: bool = False
) -> tuple[list[Any], str | None]:
    conn = Connection(Role.SERVER, limits=SMALL_LIMITS)
    got: list[Any] = []
    try:
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            if via_receive_from:
                _receive_from(conn, stream[a:b])
            else:
                conn.receive_data(stream[a:b])
            drain_events(conn, got)
    except (RemoteProtocolError, LimitExceededError) as exc:
        return got, type(exc).__name__
    return got, None


@given(fuzz_stream(), st.data())
def test_any_bytes_in_any_split_give_the_same_messages_or_a_protocol_error(
    stream: bytes, data: st.DataObject
) -> None:
    whole = _outcome(stream, [])
    assert _outcome(stream, list(range(1, len(stream)))) == whole
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    assert _outcome(stream, cuts) == whole
    assert _outcome(stream, cuts, via_receive_from=True) == whole


def test_pack_header_round_trips() -> None:
    assert struct.unpack("<4sBBHQQ", pack_header(0x81, 2, 3)) == (
        MAGIC, PROTOCOL_VERSION, 0x81, 0, 2, 3,
    )  # fmt: skip
    assert ValueReply in REPLIES and Get in REQUESTS


@pytest.mark.parametrize("first_chunk", [30, 9000, 20_000])
def test_big_frames_fed_in_chunks_that_straddle_their_end_are_all_delivered(
    first_chunk: int,
) -> None:
    client, server = _pair()
    server.limits = Limits(0, 0, 1 << 30)
    value = bytes(range(256)) * 64  # 16 KiB > SMALL_FRAME
    stream = b"".join(join_buffers(client.send(i, Set("k", value))) for i in range(3))
    stream += join_buffers(client.send(3, Ping()))
    server.receive_data(stream[:first_chunk])
    got = _events(server)
    server.receive_data(stream[first_chunk:])  # finishes a big payload and carries on
    got += _events(server)
    assert [e.request_id for e in got] == [0, 1, 2, 3]
    assert all(bytes(e.message.value) == value for e in got[:3])  # type: ignore[attr-defined]


def _recv_in_chunks(conn: Connection, data: bytes, chunk: int) -> list[Event]:
    """Feed ``data`` the way a socket's recv_into would: into receive_buffer, then advance."""
    events, at = [], 0
    while at < len(data):
        buf = conn.receive_buffer()
        n = min(len(buf), chunk, len(data) - at)
        buf[:n] = data[at : at + n]
        conn.advance(n)
        at += n
        events += _events(conn)
    return events


@pytest.mark.parametrize("chunk", [7, 1000, 1 << 20])
def test_a_reply_of_one_array_is_received_straight_into_the_registered_buffer(
    chunk: int,
) -> None:
    import numpy as np

    from kvsync.client.client import array_landing
    from kvsync.protocol.messages import ErrorReply
    from kvsync.protocol.ps_messages import PSValuesReply

    client, server = _pair()
    arr = np.arange(5000, dtype=np.float32).reshape(50, 100)
    out, other = np.zeros_like(arr), np.zeros((100, 50), np.float32)  # same bytes, other shape
    assert array_landing(np.zeros(10, np.float32)) is None  # small: scratch buffer path
    for rid, target in [(3, out), (4, other), (5, np.zeros_like(arr))]:
        landing = array_landing(target)
        assert landing is not None
        client.register_landing(rid, landing)
    data = b"".join(
        [join_buffers(server.send(rid, PSValuesReply(values=(arr,)))) for rid in (3, 4)]
        + [join_buffers(server.send(5, ErrorReply(code=1, message="no")))]
    )
    events = _recv_in_chunks(client, data, chunk)
    assert [ev.request_id for ev in events] == [3, 4, 5]
    landed = events[0].message
    assert isinstance(landed, PSValuesReply) and landed.values[0] is out
    assert np.array_equal(out, arr)
    fallback = events[1].message  # the layout differs: decoded as usual, ``other`` untouched
    assert isinstance(fallback, PSValuesReply) and fallback.values[0] is not other
    assert np.array_equal(fallback.values[0], arr) and not other.any()
    assert isinstance(events[2].message, ErrorReply)


def test_the_receive_buffer_is_the_empty_scratch_buffer_itself_then_a_view_after_a_part() -> None:
    client, server = _pair()
    frame = join_buffers(client.send(4, Set("k", b"v" * 16))) * 2
    buf = server.receive_buffer()
    assert type(buf) is bytearray and len(buf) >= len(frame)
    server.advance(_fill(buf, frame))
    assert [e.request_id for e in _events(server)] == [4, 4]
    half = len(frame) // 3  # now a partial frame stays: the next buffer is a view after it
    server.receive_data(frame[:half])
    view = server.receive_buffer()
    assert isinstance(view, memoryview)
    server.advance(_fill(view, frame[half:]))
    assert [e.request_id for e in _events(server)] == [4, 4]


def _fill(buf: memoryview | bytearray, data: bytes) -> int:
    n = min(len(buf), len(data))
    buf[:n] = data[:n]
    return n


def test_a_receive_buffer_never_advanced_records_nothing() -> None:
    client, server = _pair()
    server.receive_buffer()  # (a recv_into that raised: no advance)
    server.receive_data(join_buffers(client.send(2, Ping())))
    server.receive_buffer()
    assert _events(server) == [Event(2, Ping())]
