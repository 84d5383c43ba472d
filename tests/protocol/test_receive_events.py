"""Receiving the way a socket does: ``receive_buffer``, one ``recv_into``, ``advance``,
then every complete message at once with ``drain_events``.

This must give exactly what byte-wise feeding (``receive_data`` then ``next_event``) gives,
in any split of the stream; the events before a bad frame still come out, with the bad
frame's error beside them, and the connection then refuses further use; a failing
``recv_into`` records nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
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
    KVSyncError,
    LimitExceededError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)
from kvsync.protocol.codec import Limits, encode_frame
from kvsync.protocol.connection import NEED_DATA, Connection, Event, Role
from kvsync.protocol.connection import drain_events as drain
from kvsync.protocol.framing import HEADER, HEADER_SIZE, MAGIC, PROTOCOL_VERSION, pack_header
from kvsync.protocol.messages import Get, OkReply, Opcode, Ping, Set
from kvsync.protocol.ps_messages import PSValuesReply

SMALL_LIMITS = Limits(max_key_bytes=64, max_value_bytes=1 << 16, max_frame_bytes=1 << 17)
WIDE_LIMITS = Limits(0, 0, 1 << 30)  # strategies' keys may exceed a small key cap
SET, PING = int(Opcode.SET), int(Opcode.PING)
GARBAGE = {
    # bytes after a good frame, and what the connection calls them
    "not kvsync": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", VersionMismatchError),
    "wrong version": (
        HEADER.pack(MAGIC, PROTOCOL_VERSION + 1, PING, 0, 11, 0),
        VersionMismatchError,
    ),
    "flags": (HEADER.pack(MAGIC, PROTOCOL_VERSION, PING, 1, 11, 0), RemoteProtocolError),
    "unknown opcode": (HEADER.pack(MAGIC, PROTOCOL_VERSION, 0x7E, 0, 11, 0), RemoteProtocolError),
    "over the frame cap": (
        HEADER.pack(MAGIC, PROTOCOL_VERSION, SET, 0, 11, 1 << 62),
        LimitExceededError,
    ),
}


class _Chunks:
    """A fake ``recv_into``: each call hands out (as much as fits of) the next chunk."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = deque(chunks)
        self.offered: list[int] = []  # the size of each buffer offered
        self.given: list[int] = []  # the byte count each call returned
        self.types: list[type] = []

    def __call__(self, buf: memoryview | bytearray) -> int:
        chunk = self.chunks.popleft() if self.chunks else b""
        n = min(len(buf), len(chunk))
        buf[:n] = chunk[:n]
        if n < len(chunk):
            self.chunks.appendleft(chunk[n:])
        self.offered.append(len(buf))
        self.given.append(n)
        self.types.append(type(buf))
        return n

    def __bool__(self) -> bool:
        return bool(self.chunks)


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(cuts)
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


def _raising(exc: BaseException) -> Callable[[memoryview | bytearray], int]:
    def recv_into(buf: memoryview | bytearray) -> int:
        raise exc

    return recv_into


def _receive(
    conn: Connection, recv_into: Callable[[memoryview | bytearray], int]
) -> tuple[list[Event], int, int]:
    """One receive as the server loop makes it: ``(events, byte count, buffer size)``; the
    error after the events is in ``conn.error``, raised here when no event came before it."""
    buf = conn.receive_buffer()
    n = recv_into(buf)
    size = len(buf)
    del buf
    conn.advance(n)
    events, error = drain(conn)
    if error is not None:
        assert conn.error is error
        if not events:
            raise error
    return events, n, size


# --- the same events as receive_data + next_event -------------------------------------------


def _ready_client_and_hello(limits: Limits) -> tuple[Connection, bytes]:
    """A client whose handshake completed with a server of these caps, and its Hello."""
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER, limits=limits)
    hello = join_buffers(client.data_to_send())
    server.receive_data(hello)
    assert server.next_event() is NEED_DATA
    client.receive_data(join_buffers(server.data_to_send()))
    assert client.next_event() is NEED_DATA and client.handshake_complete
    return client, hello


def _pair(limits: Limits = SMALL_LIMITS) -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER, limits=limits)
    server.receive_data(join_buffers(client.data_to_send()))
    assert server.next_event() is NEED_DATA
    client.receive_data(join_buffers(server.data_to_send()))
    assert client.next_event() is NEED_DATA
    return client, server


def _via_next_event(conn: Connection, chunks: list[bytes]) -> tuple[list[Any], str | None]:
    got: list[Any] = []
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            drain_events(conn, got)
    except KVSyncError as exc:
        return got, type(exc).__name__
    return got, None


def _via_receive_events(conn: Connection, chunks: list[bytes]) -> tuple[list[Any], str | None]:
    """Every event :func:`_receive` gives for these chunks, and the error it reports
    (checking that the connection then refuses further use)."""
    feed, got = _Chunks(chunks), []
    for _ in range(100_000):
        if not feed:
            return got, None
        try:
            events, n, size = _receive(conn, feed)
        except KVSyncError as exc:  # a bad first frame: raised at once
            assert conn.error is exc
            break
        assert n == feed.given[-1] and size == feed.offered[-1] and 0 <= n <= size
        got += [(ev.request_id, normalize(ev.message)) for ev in events]
        if conn.error is not None:
            assert events, "an error with no events before it is raised"
            break
    else:
        raise AssertionError("unbounded receive loop")
    error = conn.error
    with pytest.raises(LocalProtocolError):
        _receive(conn, feed)
    assert conn.error is error
    return got, type(error).__name__


def _cuts(data: st.DataObject, stream: bytes, boundaries: list[int]) -> list[int]:
    """Arbitrary cut points, plus some frame boundaries (so whole frames land alone)."""
    anywhere = st.integers(0, len(stream))
    at_frames = st.sampled_from(boundaries) if boundaries else anywhere
    cuts: list[int] = data.draw(st.lists(st.one_of(anywhere, at_frames), max_size=8))
    return cuts


@given(st.lists(st.sampled_from(REQUESTS).flatmap(message_strategy), max_size=5), st.data())
def test_requests_in_any_split_give_the_events_of_next_event(
    msgs: list[object], data: st.DataObject
) -> None:
    client, hello = _ready_client_and_hello(WIDE_LIMITS)
    frames = [hello] + [join_buffers(client.send(i, m)) for i, m in enumerate(msgs)]
    stream = b"".join(frames)
    boundaries = [sum(map(len, frames[:i])) for i in range(1, len(frames))]
    chunks = _split(stream, _cuts(data, stream, boundaries))
    got = _via_receive_events(Connection(Role.SERVER, limits=WIDE_LIMITS), chunks)
    assert got == _via_next_event(Connection(Role.SERVER, limits=WIDE_LIMITS), chunks)
    assert got == ([(i, normalize(m)) for i, m in enumerate(msgs)], None)


@given(st.lists(st.sampled_from(REPLIES).flatmap(message_strategy), max_size=5), st.data())
def test_replies_in_any_split_give_the_events_of_next_event(
    msgs: list[object], data: st.DataObject
) -> None:
    server = Connection(Role.SERVER, limits=WIDE_LIMITS)
    server.receive_data(join_buffers(Connection(Role.CLIENT).data_to_send()))
    assert server.next_event() is NEED_DATA
    frames = [join_buffers(server.data_to_send())] + [
        join_buffers(server.send(i, m)) for i, m in enumerate(msgs)
    ]
    stream = b"".join(frames)
    boundaries = [sum(map(len, frames[:i])) for i in range(1, len(frames))]
    chunks = _split(stream, _cuts(data, stream, boundaries))
    client = Connection(Role.CLIENT)
    got = _via_receive_events(client, chunks)
    assert got == _via_next_event(Connection(Role.CLIENT), chunks)
    assert got == ([(i, normalize(m)) for i, m in enumerate(msgs)], None)
    assert client.handshake_complete and client.error is None


@given(fuzz_stream(), st.data())
def test_any_bytes_in_any_split_give_the_events_of_next_event_or_a_kvsync_error(
    stream: bytes, data: st.DataObject
) -> None:
    chunks = _split(stream, data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    got = _via_receive_events(Connection(Role.SERVER, limits=SMALL_LIMITS), chunks)
    assert got == _via_next_event(Connection(Role.SERVER, limits=SMALL_LIMITS), chunks)
    assert got == _via_next_event(Connection(Role.SERVER, limits=SMALL_LIMITS), [stream])


# --- errors ----------------------------------------------------------------------------------


PING_FRAME = join_buffers(encode_frame(9, Ping()))
#: Every way to use a server connection again after receiving.
CALLS: dict[str, Callable[[Connection], object]] = {
    "next_event": lambda conn: conn.next_event(),
    "receive_data": lambda conn: conn.receive_data(PING_FRAME),
    "receive_buffer": lambda conn: conn.receive_buffer(),
    "send": lambda conn: conn.send(9, OkReply()),
}


@pytest.mark.parametrize("next_call", list(CALLS))
@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_a_good_frame_then_garbage_in_one_chunk_gives_the_event_then_the_error(
    garbage: str, next_call: str
) -> None:
    client, server = _pair()
    bad, kind = GARBAGE[garbage]
    good = join_buffers(client.send(5, Set("k", b"v")))
    events, n, _ = _receive(server, _Chunks([good + bad]))
    assert n == len(good + bad)
    assert [(ev.request_id, normalize(ev.message)) for ev in events] == [(5, ("Set", "k", b"v"))]
    error = server.error
    assert type(error) is kind and isinstance(error, KVSyncError)
    assert not server.handshake_complete
    with pytest.raises(LocalProtocolError, match="earlier error"):
        CALLS[next_call](server)
    with pytest.raises(LocalProtocolError):
        _receive(server, _Chunks([b""]))
    assert server.error is error


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_a_bad_first_frame_raises_at_once(garbage: str) -> None:
    _, server = _pair()
    bad, kind = GARBAGE[garbage]
    with pytest.raises(kind) as raised:
        _receive(server, _Chunks([bad]))
    assert server.error is raised.value
    with pytest.raises(LocalProtocolError, match="earlier error"):
        _receive(server, _Chunks([b""]))


def _undecodable_set(client: Connection, request_id: int) -> bytes:
    frame = bytearray(join_buffers(client.send(request_id, Set("kk", b"v"))))
    frame[HEADER_SIZE + 4] = 0xFF  # the key's first byte: not UTF-8
    return bytes(frame)


def _undecodable_get(client: Connection, request_id: int) -> bytes:
    frame = bytearray(join_buffers(client.send(request_id, Get("kk", False, 5))))
    frame[HEADER_SIZE + 4 + 2] = 2  # the block byte: a bool is 0 or 1
    return bytes(frame)


BAD_MESSAGES = {
    "Set key not UTF-8": (_undecodable_set, "UTF-8"),
    "Get block byte 2": (_undecodable_get, "bool"),
}


@pytest.mark.parametrize("bad", list(BAD_MESSAGES))
@pytest.mark.parametrize("followed", [False, True], ids=["last", "followed by a good frame"])
def test_a_message_that_fails_to_decode_is_answered_at_its_request_id(
    bad: str, followed: bool
) -> None:
    client, server = _pair()
    make, match = BAD_MESSAGES[bad]
    stream = join_buffers(client.send(7, Ping())) + make(client, 42)
    if followed:
        stream += join_buffers(client.send(9, Ping()))
    events, _, _ = _receive(server, _Chunks([stream]))
    assert events == [Event(7, Ping())]
    assert isinstance(server.error, RemoteProtocolError)
    assert match in str(server.error)
    assert server.last_request_id == 42
    with pytest.raises(LocalProtocolError, match=match):
        _receive(server, _Chunks([b""]))


@pytest.mark.parametrize("bad", list(BAD_MESSAGES))
def test_a_first_message_that_fails_to_decode_raises_at_its_request_id(bad: str) -> None:
    client, server = _pair()
    make, match = BAD_MESSAGES[bad]
    stream = make(client, 42) + join_buffers(client.send(9, Ping()))
    with pytest.raises(RemoteProtocolError, match=match) as raised:
        _receive(server, _Chunks([stream]))
    assert server.error is raised.value and server.last_request_id == 42


def test_a_message_refused_by_the_role_is_answered_at_its_request_id() -> None:
    client, server = _pair()
    stream = join_buffers(client.send(7, Ping())) + join_buffers(encode_frame(13, OkReply()))
    stream += join_buffers(client.send(9, Ping()))
    events, _, _ = _receive(server, _Chunks([stream]))
    assert events == [Event(7, Ping())]
    assert isinstance(server.error, RemoteProtocolError) and server.last_request_id == 13
    reference = _pair()[1]
    assert _via_next_event(reference, [stream]) == ([(7, ("Ping",))], "RemoteProtocolError")
    assert reference.last_request_id == 13


def test_a_message_that_fails_to_decode_before_a_bad_header_is_answered_at_its_id() -> None:
    client, server = _pair()
    stream = join_buffers(client.send(7, Ping())) + _undecodable_set(client, 42)
    stream += HEADER.pack(MAGIC, PROTOCOL_VERSION, PING, 1, 77, 0)  # flags: a bad header
    events, _, _ = _receive(server, _Chunks([stream]))
    assert events == [Event(7, Ping())]
    assert "UTF-8" in str(server.error)
    reference = _pair()[1]
    assert _via_next_event(reference, [stream])[1] == "RemoteProtocolError"
    assert reference.last_request_id == 42
    assert server.last_request_id == 42


def test_a_payload_after_its_header_alone_is_decoded_as_that_frame() -> None:
    _, server = _pair()
    inner = pack_header(PING, 2, 0)  # a Set payload that happens to look like a frame
    chunks = [pack_header(SET, 1, len(inner)), inner]
    expected = _via_next_event(_pair()[1], chunks)
    assert expected == ([], "LimitExceededError")  # the Set's "key length" is b"KVSY"
    events, _, _ = _receive(server, _Chunks(chunks[:1]))
    assert events == []
    with pytest.raises(LimitExceededError):
        _receive(server, _Chunks(chunks[1:]))


# --- recv_into results ------------------------------------------------------------------------


@pytest.mark.parametrize("pending", [0, 10], ids=["empty buffer", "partial frame pending"])
def test_a_recv_into_that_returns_0_gives_no_events(pending: int) -> None:
    client, server = _pair()
    frame = join_buffers(client.send(3, Set("k", b"value")))
    if pending:
        assert _receive(server, _Chunks([frame[:pending]]))[0] == []
    feed = _Chunks([b""])
    assert _receive(server, feed) == ([], 0, feed.offered[0])
    assert feed.offered[0] > 0 and server.error is None
    events, _, _ = _receive(server, _Chunks([frame[pending:]]))
    assert [ev.request_id for ev in events] == [3]


def test_recv_into_errors_propagate_and_record_nothing() -> None:
    client, server = _pair()
    frames = join_buffers(client.send(1, Ping())) + join_buffers(client.send(2, Ping()))
    assert [ev.request_id for ev in _receive(server, _Chunks([frames]))[0]] == [1, 2]
    for exc in (BlockingIOError(), ConnectionResetError("reset")):
        with pytest.raises(type(exc)):
            _receive(server, _raising(exc))  # (no advance: nothing recorded)
    assert server.error is None and server.handshake_complete
    events, n, _ = _receive(server, _Chunks([join_buffers(client.send(3, Ping()))]))
    assert events == [Event(3, Ping())] and n == HEADER_SIZE


def test_the_handshake_and_requests_in_one_recv_are_all_handled() -> None:
    client, hello = _ready_client_and_hello(SMALL_LIMITS)
    stream = (
        hello + join_buffers(client.send(1, Ping())) + join_buffers(client.send(2, Set("a", b"b")))
    )
    server = Connection(Role.SERVER, limits=SMALL_LIMITS)
    events, n, _ = _receive(server, _Chunks([stream]))
    assert [ev.request_id for ev in events] == [1, 2] and n == len(stream)
    assert server.handshake_complete
    assert join_buffers(server.data_to_send())[5] == Opcode.HELLO_REPLY


def test_a_reply_registered_with_register_landing_lands_through_recv_into() -> None:
    from kvsync.client.client import array_landing

    client, server = _pair()
    arr = np.arange(6000, dtype=np.float32).reshape(60, 100)
    out = np.zeros_like(arr)
    landing = array_landing(out)
    assert landing is not None
    client.register_landing(4, landing)
    stream = join_buffers(server.send(4, PSValuesReply(values=(arr,)))) + join_buffers(
        server.send(5, OkReply())
    )
    feed, events = _Chunks([stream[i : i + 5000] for i in range(0, len(stream), 5000)]), []
    while feed:
        events += _receive(client, feed)[0]
    assert [ev.request_id for ev in events] == [4, 5]
    assert events[0].message.values[0] is out and np.array_equal(out, arr)
    assert events[1].message == OkReply()


def test_a_request_sent_to_a_client_is_refused_even_with_an_awaited_id() -> None:
    client, _ = _pair(WIDE_LIMITS)
    with pytest.raises(RemoteProtocolError, match="may not send Ping"):
        _receive(client, _Chunks([join_buffers(encode_frame(9, Ping()))]))
