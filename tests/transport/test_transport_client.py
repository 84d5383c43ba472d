"""Specification of the client: connect retries, timeouts, server death, auth, pipelining."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable

import pytest
from transport_helpers import serve_subprocess

from kvsync.client import Backoff, Client, connect, resolve
from kvsync.errors import (
    AuthenticationError,
    ErrorCode,
    LimitExceededError,
    ServerError,
    StoreConnectionError,
    StoreTimeoutError,
)
from kvsync.protocol.connection import Connection, Event, Role
from kvsync.protocol.framing import NO_REPLY
from kvsync.protocol.messages import (
    Add,
    ErrorReply,
    Get,
    Identify,
    IntReply,
    OkReply,
    Ping,
    Set,
    Wait,
)
from kvsync.server import StoreServer
from kvsync.store.tcp import TCPStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_client_started_before_its_server_still_joins() -> None:
    port = free_port()
    result: list[object] = []

    def dial() -> None:
        with Client("127.0.0.1", port, timeout=10) as c:
            result.append(c.call(Ping()))

    t = threading.Thread(target=dial)
    t.start()
    time.sleep(0.3)
    with StoreServer(port=port).start():
        t.join(timeout=10)
    assert result == [OkReply()]


def test_connecting_to_nothing_times_out_naming_the_address() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(StoreTimeoutError, match=f"127.0.0.1:{port} within 0.3 s"):
        Client("127.0.0.1", port, timeout=0.3)
    assert time.monotonic() - start < 2.0


def test_an_unresolvable_host_fails_fast_naming_host_and_port() -> None:
    start = time.monotonic()
    with pytest.raises(StoreConnectionError, match=r"no-such-host\.invalid:4321"):
        Client("no-such-host.invalid", 4321, timeout=60)
    assert time.monotonic() - start < 10.0


def test_numeric_hosts_are_never_looked_up_in_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = socket.getaddrinfo

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(int(kwargs.get("flags", 0)))  # type: ignore[call-overload]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    with StoreServer(port=0).start() as srv, Client("127.0.0.1", srv.port, timeout=5) as c:
        assert c.call(Ping()) == OkReply()
    assert calls and all(f & socket.AI_NUMERICHOST for f in calls)


def test_backoff_is_full_jitter_under_the_cap() -> None:
    import random

    b = Backoff(lo=0.01, hi=0.5, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(50)]
    assert all(0.0 <= d <= 0.5 for d in delays) and max(delays[10:]) > 0.1


def test_connect_gives_up_at_its_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(StoreTimeoutError):
        connect("127.0.0.1", free_port(), 0.2)
    assert time.monotonic() - start < 1.5


@pytest.mark.slow
def test_when_the_server_dies_a_blocked_client_learns_it_within_2_s() -> None:
    with serve_subprocess() as (proc, host, port):
        client = Client(host, port, timeout=30)
        rid = client.submit(Wait(("never",), 60_000))
        killed: list[float] = []

        def kill() -> None:
            time.sleep(0.3)
            killed.append(time.monotonic())
            proc.send_signal(signal.SIGKILL)

        t = threading.Thread(target=kill)
        t.start()
        with pytest.raises(ConnectionError, match=f"{host}:{port}"):
            client.result(rid, timeout=30)
        elapsed = time.monotonic() - killed[0]
        t.join()
        assert elapsed < 2.0
        with pytest.raises(StoreConnectionError, match=f"{host}:{port}"):
            client.call(Ping())


def test_after_a_reply_timeout_the_client_keeps_working() -> None:
    with StoreServer(port=0).start() as srv, Client("127.0.0.1", srv.port, timeout=5) as c:
        with pytest.raises(StoreTimeoutError, match=r"no reply .* within 0\.2 s"):
            c.call(Wait(("late",), 60_000), timeout=0.2)
        c.call(Set("late", b"1"))  # the server now answers the abandoned request
        assert c.call(Add("n", 2)) == IntReply(2)
        assert c.call(Ping()) == OkReply()


def test_pipelined_requests_are_answered_by_request_id() -> None:
    with StoreServer(port=0).start() as srv, Client("127.0.0.1", srv.port, timeout=5) as c:
        waiting = c.submit(Wait(("go",), 5_000))
        adds = [c.submit(Add("n", 1)) for _ in range(50)]
        c.submit(Set("go", b"1"))
        assert [c.result(r).value for r in reversed(adds)] == list(range(50, 0, -1))  # type: ignore[attr-defined]
        assert c.result(waiting) == OkReply()


def test_a_call_waiting_alone_delivers_the_replies_of_other_threads() -> None:
    # The first call finds nothing in flight and reads its own reply directly; calls made
    # meanwhile by other threads must get their replies from that reader, not after it.
    with StoreServer(port=0).start() as srv, Client("127.0.0.1", srv.port, timeout=10) as c:
        parked: list[object] = []
        waiter = threading.Thread(target=lambda: parked.append(c.call(Wait(("go",), 10_000))))
        waiter.start()
        deadline = time.monotonic() + 5
        while not c._reading and time.monotonic() < deadline:  # the waiter holds the read
            time.sleep(0.001)
        assert c._reading
        assert [c.call(Add("n", 1)).value for _ in range(20)] == list(range(1, 21))  # type: ignore[attr-defined]
        c.call(Set("go", b"1"))
        waiter.join(10)
        assert parked == [OkReply()]


def test_threads_sharing_a_client_lose_no_reply() -> None:
    with StoreServer(port=0).start() as srv, Client("127.0.0.1", srv.port, timeout=10) as c:
        results: list[list[int]] = []

        def worker(use_submit: bool) -> None:
            mine = []
            for _ in range(200):
                reply = c.result(c.submit(Add("n", 1))) if use_submit else c.call(Add("n", 1))
                mine.append(reply.value)  # type: ignore[attr-defined]
            results.append(mine)

        threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        seen = sorted(v for mine in results for v in mine)
        assert seen == list(range(1, 1601))
        assert all(mine == sorted(mine) for mine in results)


def test_the_client_refuses_a_key_over_the_server_cap_before_sending() -> None:
    with StoreServer(port=0, max_key_bytes=8).start() as srv:
        with Client("127.0.0.1", srv.port, timeout=5) as c:
            with pytest.raises(LimitExceededError, match="limit of 8 bytes"):
                c.call(Get("k" * 9, False, 0))
            assert c.call(Ping()) == OkReply()


def test_matching_secrets_connect_and_others_are_refused() -> None:
    with StoreServer(port=0, secret="s3cret").start() as srv:
        with Client("127.0.0.1", srv.port, timeout=5, secret="s3cret") as c:
            assert c.call(Ping()) == OkReply()
        with pytest.raises(AuthenticationError):
            Client("127.0.0.1", srv.port, timeout=5, secret="wrong")
        with Client("127.0.0.1", srv.port, timeout=5) as none:  # no round trip made yet:
            with pytest.raises(AuthenticationError, match="KVSYNC_SECRET"):
                none.call(Ping())  # the first request reads the HelloReply's challenge
            with pytest.raises(AuthenticationError, match="KVSYNC_SECRET"):
                none.call(Ping())  # and the client stays failed
        with Client("127.0.0.1", srv.port, timeout=5, secret=b"s3cret") as c:
            assert c.call(Ping()) == OkReply()


def test_a_closed_client_raises_connection_error() -> None:
    with StoreServer(port=0).start() as srv:
        c = Client("127.0.0.1", srv.port, timeout=5)
        c.close()
        assert c.closed and "closed" in repr(c)
        with pytest.raises(StoreConnectionError, match="closed"):
            c.call(Ping())


def test_connect_and_reply_timeouts_are_separate() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(StoreTimeoutError):
        Client("127.0.0.1", port, timeout=30, connect_timeout=0.2)
    assert time.monotonic() - start < 1.5
    with StoreServer(port=0).start() as srv:
        with Client("127.0.0.1", srv.port, timeout=0.2, connect_timeout=5) as c:
            with pytest.raises(StoreTimeoutError, match=r"0\.2 s"):
                c.call(Wait(("x",), 60_000))


# --- the handshake's round trip and requests sent ahead ---------------------------------


class _ScriptedServer:
    """A kvsync server on a thread that answers one connection from a script: for each
    request (in order) the reply the script gives (to a posted request, NO_REPLY, only an
    error); it stops when the client closes."""

    def __init__(self, answer: Callable[[object], object]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.requests: list[Event] = []
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        sock, _ = self.listener.accept()
        sock.settimeout(10)
        proto = Connection(Role.SERVER)
        with sock:
            for _ in range(1000):
                data = sock.recv(65536)
                if not data:
                    return
                proto.receive_data(data)
                out = []
                for _ in range(100):
                    event = proto.next_event()
                    out += proto.data_to_send()  # the HelloReply, once the Hello is in
                    if not isinstance(event, Event):
                        break
                    self.requests.append(event)
                    reply = self._answer(event.message)
                    if event.request_id < NO_REPLY or isinstance(reply, ErrorReply):
                        out += proto.send(event.request_id, reply)
                sock.sendall(b"".join(bytes(b) for b in out))

    def close(self) -> None:
        self._thread.join(10)
        self.listener.close()


def test_without_a_secret_the_constructor_makes_no_round_trip() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        start = time.monotonic()
        with Client("127.0.0.1", silent.getsockname()[1], timeout=0.5) as c:
            assert time.monotonic() - start < 0.4  # not a timeout's worth of waiting
            with pytest.raises(StoreTimeoutError, match=r"handshake within 0\.5 s"):
                c.call(Ping())  # the first request waits for the HelloReply
            assert not c.closed  # a timeout, as any other: the client stays usable
            with pytest.raises(StoreTimeoutError, match="dialect='torch'"):
                c.result(c.submit(Ping()), timeout=0.5)
            with pytest.raises(StoreTimeoutError, match="dialect='torch'"):
                c.post(Ping())  # a post reads it first too


def test_the_first_request_reads_the_server_caps_before_it_is_sent() -> None:
    with StoreServer(port=0, max_key_bytes=8).start() as srv:
        with Client("127.0.0.1", srv.port, timeout=5) as c:  # HelloReply unread yet
            with pytest.raises(LimitExceededError, match="limit of 8 bytes"):
                c.submit(Get("k" * 9, False, 0))  # refused here, nothing sent
            assert c.call(Ping()) == OkReply()


def test_a_store_with_a_rank_posts_its_identify_and_a_refusal_surfaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refusal = ErrorReply(int(ErrorCode.INVALID_ARGUMENT), "rank refused")
    server = _ScriptedServer(lambda msg: refusal if isinstance(msg, Identify) else IntReply(1))
    monkeypatch.setenv("RANK", "5")
    store = TCPStore("127.0.0.1", server.port, timeout=5)  # the Identify is not waited for
    with pytest.raises(ServerError, match="rank refused"):
        store.add("k", 1)
        store.add("k", 1)  # (the refusal is raised by the request after it arrived)
    store.close()
    server.close()
    first = server.requests[0]
    assert first.message == Identify(5) and first.request_id >= NO_REPLY


def test_a_store_with_a_rank_is_named_by_its_posted_identify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = _ScriptedServer(lambda msg: IntReply(1) if isinstance(msg, Add) else OkReply())
    monkeypatch.setenv("RANK", "3")
    with TCPStore("127.0.0.1", server.port, timeout=5) as store:
        assert store.add("k", 1) == 1  # no reply to the Identify came first
    server.close()
    assert [type(e.message).__name__ for e in server.requests] == ["Identify", "Add"]


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "::1", "::ffff:127.0.0.1", "127.1"])
def test_a_numeric_host_resolves_as_getaddrinfo_would_without_a_lookup(host: str) -> None:
    expected = socket.getaddrinfo(
        host, 29500, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )[0]
    assert resolve(host, 29500)[0] == expected
