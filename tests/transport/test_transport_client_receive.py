"""How a client call takes its reply off the wire: whole, split, late, mixed, bad or missing.

A scripted server (a listening socket and a server-role Connection in a thread) answers the
client's first request exactly as each test says, so every branch of ``Client.call`` is
reached with real sockets: the one-receive common case and the general loop behind it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from transport_helpers import join

import kvsync.client.client as client_module
from kvsync.client import Client
from kvsync.errors import (
    ErrorCode,
    KVSyncError,
    LimitExceededError,
    RemoteProtocolError,
    StoreConnectionError,
    StoreTimeoutError,
)
from kvsync.protocol.codec import encode_frame
from kvsync.protocol.connection import NEED_DATA, Connection, Event, Role
from kvsync.protocol.framing import pack_header
from kvsync.protocol.messages import ErrorReply, IntReply, OkReply, Opcode, Ping, Set, ValueReply

Script = Callable[[socket.socket, Event], None]


def _read_event(sock: socket.socket, proto: Connection) -> Event | None:
    """Read until one event (the handshake is answered on the way); None at EOF."""
    for _ in range(1_000):
        ev = proto.next_event()
        out = proto.data_to_send()
        if out:
            sock.sendall(join(out))
        if ev is not NEED_DATA:
            assert isinstance(ev, Event)
            return ev
        data = sock.recv(65536)
        if not data:
            return None
        proto.receive_data(data)
    raise AssertionError("unbounded read")


@contextmanager
def scripted_server(script: Script) -> Iterator[int]:
    """A one-connection server on a free port: handshake, then ``script(sock, request)``
    for the first request; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(10)
                proto = Connection(Role.SERVER)
                request = _read_event(sock, proto)
                assert request is not None
                script(sock, request)
                sock.recv(1)  # until the client closes (or the test ends)
        except (OSError, AssertionError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(10)
    assert not thread.is_alive()
    assert not [e for e in errors if not isinstance(e, OSError)], errors


def _reply(request: Event, msg: object) -> bytes:
    return join(encode_frame(request.request_id, msg))


def test_a_reply_sent_in_two_pieces_is_put_together() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        frame = _reply(request, ValueReply(b"v" * 40))
        sock.sendall(frame[:10])
        time.sleep(0.05)
        sock.sendall(frame[10:])

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        assert c.call(Ping()) == ValueReply(b"v" * 40)


def test_a_stray_reply_before_ours_in_one_segment_is_dropped() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        stray = join(encode_frame(request.request_id + 1000, IntReply(7)))
        sock.sendall(stray + _reply(request, IntReply(42)))

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        assert c.call(Ping()) == IntReply(42)
        assert not c.closed


def test_ours_then_stray_replies_in_one_segment_gives_ours_and_drops_the_rest() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        strays = [join(encode_frame(request.request_id + k, IntReply(k))) for k in (1000, 1001)]
        sock.sendall(_reply(request, IntReply(42)) + b"".join(strays))

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        assert c.call(Ping()) == IntReply(42)
        assert not c.closed


def test_a_stray_reply_alone_then_ours_in_a_later_segment_gives_ours() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        sock.sendall(join(encode_frame(request.request_id + 1000, IntReply(7))))
        time.sleep(0.05)  # so the stray reply is received alone
        sock.sendall(_reply(request, IntReply(42)))

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        assert c.call(Ping()) == IntReply(42)
        assert not c.closed


def test_an_error_reply_alone_is_raised_as_its_class_and_the_client_keeps_working() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        sock.sendall(_reply(request, ErrorReply(int(ErrorCode.LIMIT_EXCEEDED), "too big")))

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        with pytest.raises(LimitExceededError, match="too big"):
            c.call(Ping())
        assert not c.closed


def test_a_reply_that_does_not_decode_fails_the_connection() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        sock.sendall(pack_header(int(Opcode.INT), request.request_id, 3) + b"abc")

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        with pytest.raises(RemoteProtocolError):
            c.call(Ping())
        assert c.closed


def test_bad_bytes_after_a_good_reply_fail_the_connection() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        sock.sendall(_reply(request, OkReply()) + b"this is not a kvsync frame at all")

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        with pytest.raises(KVSyncError, match="not speaking the kvsync protocol"):
            c.call(Ping())
        assert c.closed
        with pytest.raises(KVSyncError, match="not speaking the kvsync protocol"):
            c.call(Ping())  # later calls keep naming the first failure


def test_a_server_closing_instead_of_replying_is_a_connection_error() -> None:
    def script(sock: socket.socket, request: Event) -> None:
        sock.shutdown(socket.SHUT_RDWR)

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port} closed"):
            c.call(Set("k", b"v"))
        assert c.closed


def test_a_reply_later_than_one_kernel_read_slice_still_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "_READ_SLICE", 0.1)  # the first receive times out

    def script(sock: socket.socket, request: Event) -> None:
        time.sleep(0.35)
        sock.sendall(_reply(request, IntReply(3)))

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=5) as c:
        assert c._recv_timeout == 0.1
        assert c.call(Ping()) == IntReply(3)


def test_no_reply_within_the_timeout_is_a_timeout_naming_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "_READ_SLICE", 0.1)

    def script(sock: socket.socket, request: Event) -> None:
        time.sleep(1.0)

    with scripted_server(script) as port, Client("127.0.0.1", port, timeout=0.4) as c:
        t0 = time.monotonic()
        with pytest.raises(StoreTimeoutError, match=r"request 1 within 0\.4 s"):
            c.call(Ping())
        assert time.monotonic() - t0 < 2.0
        assert not c.closed  # a reply timeout leaves the connection usable
