"""Specification of the event-loop server: real sockets on 127.0.0.1, ports from the OS."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import threading
import time

import numpy as np
import pytest
from transport_helpers import RawClient, join, wait_until

from kvsync.client import Client
from kvsync.errors import ErrorCode, StoreConnectionError
from kvsync.protocol.codec import encode_frame
from kvsync.protocol.framing import HEADER, MAGIC, PROTOCOL_VERSION
from kvsync.protocol.messages import (
    Add,
    ErrorReply,
    Get,
    Hello,
    IntReply,
    OkReply,
    Opcode,
    Ping,
    Set,
    ValueReply,
    Wait,
)
from kvsync.server import StoreServer
from kvsync.server.router import Outgoing
from kvsync.server.state import StoreState


class RecordingLogic(StoreState):
    """The real store logic, also recording which connections were dropped."""

    def __init__(self) -> None:
        super().__init__(max_key_bytes=64, max_value_bytes=1 << 20)
        self.dropped: list[int] = []

    def drop_connection(self, conn_id: int) -> None:
        self.dropped.append(conn_id)
        super().drop_connection(conn_id)


@pytest.fixture
def server() -> StoreServer:
    with StoreServer(port=0, max_key_bytes=64, max_value_bytes=1 << 20).start() as srv:
        yield srv


def _error(events: list[object]) -> ErrorReply:
    (ev,) = events
    msg = ev.message  # type: ignore[attr-defined]
    assert isinstance(msg, ErrorReply)
    return msg


def test_server_answers_requests_with_request_ids(server: StoreServer) -> None:
    c = RawClient(server.port)
    c.send(7, Set("k", b"v"))
    c.send(8, Get("k", False, 0))
    got = {ev.request_id: ev.message for ev in c.events(2)}
    assert got[7] == OkReply()
    assert isinstance(got[8], ValueReply) and bytes(got[8].value) == b"v"
    c.close()


def test_large_values_survive_partial_sends_both_ways(server: StoreServer) -> None:
    big = np.random.default_rng(0).integers(0, 255, size=1 << 20, dtype=np.uint8).tobytes()
    with Client("127.0.0.1", server.port, timeout=10) as client:
        client.call(Set("big", big))
        reply = client.call(Get("big", False, 0))
        assert isinstance(reply, ValueReply) and bytes(reply.value) == big


def test_parked_requests_expire_through_the_logic_deadline(server: StoreServer) -> None:
    with Client("127.0.0.1", server.port, timeout=10) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="missing"):
            client.call(Wait(("nope",), 200))
        assert 0.15 < time.monotonic() - start < 3.0
        assert client.call(Ping()) == OkReply()


def test_a_set_wakes_a_parked_wait_of_another_connection(server: StoreServer) -> None:
    with (
        Client("127.0.0.1", server.port, timeout=10) as a,
        Client("127.0.0.1", server.port, timeout=10) as b,
    ):
        rid = a.submit(Wait(("go",), 10_000))
        time.sleep(0.05)
        b.call(Set("go", b"1"))
        assert a.result(rid, timeout=5) == OkReply()


@pytest.mark.parametrize(
    ("bad", "code", "text"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", ErrorCode.VERSION_MISMATCH, "b'GET '"),
        (HEADER.pack(MAGIC, PROTOCOL_VERSION + 1, Opcode.PING, 0, 4, 0), ErrorCode.VERSION_MISMATCH,
         f"version {PROTOCOL_VERSION + 1}"),
        (HEADER.pack(MAGIC, PROTOCOL_VERSION, 0x7E, 0, 4, 0), ErrorCode.PROTOCOL, "opcode 0x7e"),
        (HEADER.pack(MAGIC, PROTOCOL_VERSION, Opcode.SET, 0, 4, 1 << 63), ErrorCode.LIMIT_EXCEEDED,
         "max_frame_bytes"),
        (join(encode_frame(4, Set("k" * 65, b""))), ErrorCode.LIMIT_EXCEEDED, "limit of 64 bytes"),
        (join(encode_frame(4, Set("k", bytes((1 << 20) + 1)))), ErrorCode.LIMIT_EXCEEDED,
         "limit of 1048576 bytes"),
        (HEADER.pack(MAGIC, PROTOCOL_VERSION, Opcode.DELETE_KEY, 0, 4, 6) + struct.pack("<I", 2)
         + b"\xff\xfe", ErrorCode.PROTOCOL, "UTF-8"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_typed_error_and_only_that_connection_closes(
    server: StoreServer, bad: bytes, code: ErrorCode, text: str
) -> None:
    with Client("127.0.0.1", server.port, timeout=10) as other:
        other.call(Set("keep", b"1"))
        rid = other.submit(Wait(("later",), 10_000))
        c = RawClient(server.port)
        c.sock.sendall(bad)
        err = _error(c.events(1))
        assert err.code == code and text in err.message
        assert c.read_until_eof() == b""
        c.close()
        other.call(Set("later", b"1"))
        assert other.result(rid, timeout=5) == OkReply()
        assert bytes(other.call(Get("keep", False, 0)).value) == b"1"  # type: ignore[attr-defined]


def test_garbage_before_the_handshake_is_refused(server: StoreServer) -> None:
    c = RawClient(server.port, handshake=False)
    c.sock.sendall(join(encode_frame(1, Ping())))
    data = c.read_until_eof()  # an ErrorReply frame, then end of stream
    assert data.startswith(MAGIC) and b"expected Hello" in data
    c.close()


def test_disconnect_mid_frame_and_mid_wait_leaves_no_state() -> None:
    logic = RecordingLogic()
    with StoreServer(port=0, logic=logic).start() as srv:
        a = RawClient(srv.port)
        a.send(1, Wait(("x",), 60_000))
        assert wait_until(lambda: logic.parked == 1)
        a.close()
        assert wait_until(lambda: logic.parked == 0 and len(logic.dropped) == 1)
        b = RawClient(srv.port)
        b.sock.sendall(join(encode_frame(2, Set("k", bytes(50_000))))[:30_000])
        b.close()
        assert wait_until(lambda: len(logic.dropped) == 2)
        assert wait_until(lambda: srv.connections == 0)


def test_a_reply_for_a_client_that_left_is_dropped_quietly() -> None:
    with StoreServer(port=0).start() as srv:
        srv.logic.handle(999, 1, Ping(), now=0.0)
        srv._deliver([Outgoing(999, 1, OkReply())])  # no such connection
        with Client("127.0.0.1", srv.port, timeout=5) as c:
            assert c.call(Ping()) == OkReply()


def test_close_wakes_the_loop_and_disconnects_clients() -> None:
    srv = StoreServer(port=0).start()
    client = Client("127.0.0.1", srv.port, timeout=5)
    rid = client.submit(Wait(("never",), 60_000))
    start = time.monotonic()
    srv.close()
    with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{srv.port}"):
        client.result(rid, timeout=30)
    assert time.monotonic() - start < 2.0
    assert repr(srv).endswith("closed)")
    srv.close()  # idempotent


def test_server_takes_over_an_already_bound_listening_socket() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with StoreServer(listen_fd=sock.detach()).start() as srv:
        assert srv.port == port
        with Client("127.0.0.1", port, timeout=5) as c:
            assert c.call(Ping()) == OkReply()


def test_binding_an_address_in_use_fails_fast_naming_it(server: StoreServer) -> None:
    start = time.monotonic()
    with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{server.port}"):
        StoreServer(port=server.port)
    assert time.monotonic() - start < 1.0


def test_unresolvable_host_fails_fast_naming_it() -> None:
    with pytest.raises(StoreConnectionError, match=r"no-such-host\.invalid:1234"):
        StoreServer("no-such-host.invalid", 1234)


@pytest.mark.slow
def test_server_holds_a_thousand_concurrent_connections() -> None:
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * n + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        with StoreServer(port=0).start() as srv:
            clients = [RawClient(srv.port, handshake=False) for _ in range(n)]
            hello = join(encode_frame(0, Hello(PROTOCOL_VERSION, b"")))
            for c in clients:
                c.sock.sendall(hello)
            for c in clients:
                c.events()
            assert wait_until(lambda: srv.connections == n)
            for i, c in enumerate(clients):
                c.send(i, Wait(("all",), 30_000))
            assert wait_until(lambda: srv.logic.parked == n)  # type: ignore[attr-defined]
            with Client("127.0.0.1", srv.port, timeout=5) as setter:
                setter.call(Set("all", b"1"))
            for i, c in enumerate(clients):
                (ev,) = c.events(1)
                assert ev.request_id == i and ev.message == OkReply()
            for c in clients:
                c.send(1, Get("all", False, 0))
            assert all(bytes(c.events(1)[0].message.value) == b"1" for c in clients)
            for c in clients:
                c.close()
            assert wait_until(lambda: srv.connections == 0, timeout=10)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_many_threads_share_one_client(server: StoreServer) -> None:
    from kvsync.protocol.messages import Add

    with Client("127.0.0.1", server.port, timeout=10) as client:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(200):
                    assert isinstance(client.call(Add("n", 1)), IntReply)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors
        assert client.call(Add("n", 0)) == IntReply(1600)


def test_a_client_that_does_not_read_its_replies_is_not_read_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kvsync.server.loop as loop_module

    monkeypatch.setattr(loop_module, "_HIGH_WATER", 1 << 20)
    handled: list[str] = []

    class Counting(StoreState):
        def handle(self, conn_id: int, request_id: int, msg: object, now: float) -> list[Outgoing]:
            handled.append(type(msg).__name__)
            return super().handle(conn_id, request_id, msg, now)

    value = bytes(4 << 20)
    with StoreServer(port=0, logic=Counting()).start() as srv:
        with Client("127.0.0.1", srv.port, timeout=10) as setter:
            setter.call(Set("v", value))
        slow = RawClient(srv.port)
        try:
            # The 8 requests go out in one write, so the server reads them together before the
            # first 4 MiB reply crosses the high-water mark (sent one by one, the server may
            # read only the first before it stops reading this client, as it should).
            slow.sock.sendall(b"".join(join(encode_frame(i, Get("v", False, 0))) for i in range(8)))
            assert wait_until(lambda: handled.count("Get") == 8)
            slow.send(99, Ping())
            time.sleep(0.3)
            assert "Ping" not in handled  # not read while 32 MiB of replies are unsent
            with Client("127.0.0.1", srv.port, timeout=10) as other:  # others are served
                assert other.call(Ping()) == OkReply()
            events = slow.events(9)
            assert [e.request_id for e in events] == [*range(8), 99]
            assert all(bytes(e.message.value) == value for e in events[:8])  # type: ignore[attr-defined]
        finally:
            slow.close()


def test_out_of_descriptors_pauses_accepts_without_spinning_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import os

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with StoreServer(port=0).start() as srv:
        used = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 16, hard))
        socks: list[socket.socket] = []
        try:
            with caplog.at_level("WARNING", logger="kvsync.server.loop"):
                with contextlib.suppress(OSError):  # until this process is out of fds too
                    for _ in range(40):
                        socks.append(socket.create_connection(("127.0.0.1", srv.port), 5))  # noqa: PERF401 - keep the ones made before EMFILE
                time.sleep(0.5)
            pauses = [r for r in caplog.records if "pausing accepts" in r.getMessage()]
            assert 1 <= len(pauses) <= 10  # ~0.1 s pauses, not a busy loop
        finally:
            for s in socks:
                s.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert wait_until(lambda: srv.connections == 0)
        with Client("127.0.0.1", srv.port, timeout=5) as c:
            assert c.call(Ping()) == OkReply()


def test_a_failing_logic_answers_a_server_error_and_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kvsync.errors import ServerError

    class Buggy(StoreState):
        def handle(self, conn_id: int, request_id: int, msg: object, now: float) -> list[Outgoing]:
            if isinstance(msg, Get):
                raise RuntimeError("boom")
            return super().handle(conn_id, request_id, msg, now)

    with StoreServer(port=0, logic=Buggy()).start() as srv:
        with Client("127.0.0.1", srv.port, timeout=5) as c, caplog.at_level("ERROR"):
            with pytest.raises(ServerError, match="boom"):
                c.call(Get("k", False, 0))
            assert c.call(Ping()) == OkReply()


def test_a_request_split_across_many_writes_is_answered(server: StoreServer) -> None:
    c = RawClient(server.port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = join(encode_frame(5, Set("split", b"v" * 16)))
    for i in range(len(frame)):  # byte by byte: most arrive in separate reads
        c.sock.sendall(frame[i : i + 1])
        if i % 8 == 0:
            time.sleep(0.002)
    assert [(e.request_id, e.message) for e in c.events(1)] == [(5, OkReply())]
    c.close()


def test_pipelined_requests_and_wakeups_keep_their_order_per_connection(
    server: StoreServer,
) -> None:
    a, b = RawClient(server.port), RawClient(server.port)
    a.send(1, Wait(("go",), 10_000))
    b.send(2, Wait(("go",), 10_000))
    time.sleep(0.05)
    # One write: b's own Wait is answered by its own Set, between its other replies, and a's
    # Wait is answered on the other connection.
    b.sock.sendall(
        join(encode_frame(3, Ping())) + join(encode_frame(4, Set("go", b"1")))
        + join(encode_frame(5, Get("go", False, 0)))
    )  # fmt: skip
    got = [(e.request_id, type(e.message).__name__) for e in b.events(4)]
    assert got == [(3, "OkReply"), (4, "OkReply"), (2, "OkReply"), (5, "ValueReply")]
    assert [(e.request_id, e.message) for e in a.events(1)] == [(1, OkReply())]
    a.close()
    b.close()


def test_handshake_and_a_request_in_one_write_are_answered_in_order(server: StoreServer) -> None:
    c = RawClient(server.port, handshake=False)
    c.sock.sendall(join(c.proto.data_to_send()) + join(encode_frame(9, Ping())))
    data = b""
    while data.count(MAGIC) < 2:
        chunk = c.sock.recv(65536)
        assert chunk
        data += chunk
    first, second = HEADER.unpack_from(data, 0), HEADER.unpack_from(data, data.rindex(MAGIC))
    assert first[2] == Opcode.HELLO_REPLY and (second[2], second[4]) == (Opcode.OK, 9)
    c.close()


class _TrickleSocket:
    """A socket stand-in that accepts at most ``limit`` bytes per send (0: would block)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = bytearray()

    def send(self, data: bytes | memoryview) -> int:
        if not self.limit:
            raise BlockingIOError
        n = min(self.limit, len(data))
        self.sent += bytes(data[:n])
        return n

    def sendmsg(self, buffers: list[bytes | memoryview]) -> int:
        return self.send(b"".join(bytes(b) for b in buffers))


@pytest.mark.parametrize("limit", [0, 7, 1000])
def test_a_reply_the_socket_takes_only_in_part_is_queued_and_finished_in_order(
    limit: int,
) -> None:
    from kvsync.server.loop import _Peer

    srv = StoreServer(port=0)
    try:
        sock = _TrickleSocket(limit)
        peer = _Peer(1, sock, "test", object())  # type: ignore[arg-type]
        first, second = b"a" * 40, b"b" * 30
        srv._send(peer, [first])
        srv._send(peer, [second])
        sock.limit = 7
        for _ in range(20):
            srv._flush(peer)
        assert bytes(sock.sent) == first + second and not peer.outq and peer.pending == 0
    finally:
        srv.close()


def test_wake_ups_go_out_as_they_are_made_and_a_part_sent_is_finished_in_order() -> None:
    """Replies to parked requests (``_deliver``) are sent at once, not at the end of the
    turn; what the socket does not take stays queued, with EVENT_WRITE watched."""
    import selectors

    from kvsync.server.loop import _Peer

    srv = StoreServer(port=0)
    a, b = socket.socketpair()
    try:
        sock = _TrickleSocket(0)  # would block: the replies stay queued
        sock.fileno = a.fileno  # type: ignore[attr-defined]  # (registered as the real one)
        peer = _Peer(1, sock, "test", object())  # type: ignore[arg-type]
        srv._peers[1] = peer
        srv._selector.register(sock, selectors.EVENT_READ, peer)  # type: ignore[arg-type]
        peer.inflight = 3
        srv._deliver([Outgoing(1, 5, OkReply()), Outgoing(1, 6, ValueReply(b"x" * 40))])
        assert not sock.sent and peer.events & selectors.EVENT_WRITE and peer.inflight == 1
        sock.limit = 7  # the socket drains: the flush EVENT_WRITE triggers sends the rest
        srv._flush(peer)
        expected = join(encode_frame(5, OkReply())) + join(encode_frame(6, ValueReply(b"x" * 40)))
        assert bytes(sock.sent) == expected and not peer.outq and peer.pending == 0
        assert peer.events == selectors.EVENT_READ
        srv._deliver([Outgoing(1, 7, OkReply())])  # nothing queued: out at once, no flush
        assert bytes(sock.sent) == expected + join(encode_frame(7, OkReply()))
        assert not peer.outq and peer.inflight == 0
    finally:
        srv._peers.clear()
        srv.close()
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        (b"not a kvsync frame at all", "b'not '"),
        (HEADER.pack(MAGIC, PROTOCOL_VERSION, Opcode.DELETE_KEY, 0, 9, 6) + struct.pack("<I", 2)
         + b"\xff\xfe", "UTF-8"),
    ],
)  # fmt: skip
def test_good_requests_before_a_bad_frame_in_one_write_are_answered_first(
    server: StoreServer, bad: bytes, text: str
) -> None:
    c = RawClient(server.port)
    good = join(encode_frame(7, Set("batch", b"1"))) + join(encode_frame(8, Add("batch_n", 5)))
    c.sock.sendall(good + bad)
    events = c.events(3)
    assert [e.request_id for e in events[:2]] == [7, 8]
    assert events[0].message == OkReply() and events[1].message == IntReply(5)
    err = _error(events[2:])
    assert text in err.message
    if text == "UTF-8":  # a message that fails to decode is answered at its own id
        assert events[2].request_id == 9
    assert c.read_until_eof() == b""
    c.close()
    with Client("127.0.0.1", server.port, timeout=5) as other:  # the good ones took effect
        assert bytes(other.call(Get("batch", False, 0)).value) == b"1"  # type: ignore[attr-defined]
