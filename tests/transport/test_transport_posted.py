"""Posted requests (``NO_REPLY`` request ids): the torch flavour's ``set``, like torch's SET,
does not wait for the server; the server answers such a request only when it fails, the
client raises that error at its next request, and ``close()`` confirms the posts first.
The kvsync flavour's ``set``, whose ``get`` does not wait for a key, still waits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from transport_helpers import RawClient, child_env, serve_subprocess

from kvsync import TCPStore as KVSyncTCPStore
from kvsync.client import Client
from kvsync.compat.torch import TCPStore
from kvsync.errors import LimitExceededError, StoreConnectionError
from kvsync.protocol.codec import Limits
from kvsync.protocol.framing import NO_REPLY
from kvsync.protocol.messages import ErrorReply, Get, Ping, Set, ValueReply, Wait
from kvsync.server import StoreServer

pytestmark = pytest.mark.timeout(30)


def test_the_server_answers_a_posted_request_only_when_it_fails() -> None:
    with StoreServer(max_value_bytes=8).start() as server:
        raw = RawClient(server.port)
        try:
            raw.send(NO_REPLY | 1, Set("k", b"v"))  # done, unanswered
            raw.send(2, Get("k", False, 0))
            raw.send(NO_REPLY | 3, Ping())  # any request may be posted
            raw.send(NO_REPLY | 4, Set("big", b"x" * 9))  # refused: answered, then closed
            events = raw.events(2)
            assert raw.read_until_eof() == b""
        finally:
            raw.close()
    assert [ev.request_id for ev in events] == [2, NO_REPLY | 4]
    assert isinstance(events[0].message, ValueReply) and bytes(events[0].message.value) == b"v"
    assert isinstance(events[1].message, ErrorReply)
    assert "over the limit of 8 bytes" in events[1].message.message


def test_a_posted_failure_is_raised_by_the_next_request() -> None:
    with StoreServer(max_value_bytes=8).start() as server:
        with Client("127.0.0.1", server.port, timeout=5) as c:
            c.call(Ping())  # the HelloReply is read (the first request reads it)
            c._proto.peer_limits = Limits()  # as if the client missed the server's cap
            c.post(Set("k", b"v"))
            c.post(Set("big", b"x" * 9))  # sent: the server refuses it and closes
            with pytest.raises(StoreConnectionError, match="connection: a request sent without"):
                c.call(Get("k", False, 0))  # the read that finds the refusal, then the end
            with pytest.raises(LimitExceededError, match=r"without waiting .*failed: .*8 bytes"):
                c.call(Ping())  # the next request: the refusal itself, once
            with pytest.raises(StoreConnectionError):
                c.post(Set("k", b"v"))


def test_a_posted_failure_read_by_another_request_is_kept_for_the_next() -> None:
    with StoreServer(max_value_bytes=8).start() as server:
        with Client("127.0.0.1", server.port, timeout=5) as c:
            c.call(Ping())  # the HelloReply is read (the first request reads it)
            c._proto.peer_limits = Limits()
            rid = c.submit(Wait(("never",), 60_000))  # parked: its reader sees the refusal
            c.post(Set("big", b"x" * 9))
            with pytest.raises(StoreConnectionError):
                c.result(rid)
            with pytest.raises(LimitExceededError, match="sent without waiting"):
                c.submit(Ping())


def test_a_store_set_returns_without_a_reply_and_its_store_reads_it_back() -> None:
    with StoreServer().start() as server, TCPStore("127.0.0.1", server.port) as s:
        for i in range(100):
            s.set(f"k{i}", str(i))
        assert s.add("n", 1) == 1
        assert [s.get(f"k{i}") for i in range(100)] == [str(i).encode() for i in range(100)]


def test_a_set_before_close_is_on_the_server_when_close_returns() -> None:
    with StoreServer().start() as server, TCPStore("127.0.0.1", server.port) as reader:
        for i in range(20):  # a race would show in some of these
            writer = TCPStore("127.0.0.1", server.port)
            writer.set(f"k{i}", b"v")
            writer.close()
            assert reader.check([f"k{i}"]), f"round {i}: the set was not on the server"


def test_a_set_in_a_process_that_exits_without_close_is_kept() -> None:
    with StoreServer().start() as server, TCPStore("127.0.0.1", server.port) as reader:
        script = textwrap.dedent(f"""
            from kvsync.compat.torch import TCPStore
            s = TCPStore("127.0.0.1", {server.port})
            s.set("from-child", b"done")
        """)  # no close(): the exit hook closes it
        subprocess.run([sys.executable, "-c", script], env=child_env(), check=True, timeout=20)
        assert reader.get("from-child") == b"done"  # no wait: it must be there already


def test_close_gives_up_confirming_on_a_server_that_is_gone() -> None:
    server = StoreServer().start()
    s = TCPStore("127.0.0.1", server.port, timeout=5)
    s.set("k", b"v")
    server.close()
    start = time.monotonic()
    s.close()  # the confirming Ping fails at once: no error, no wait
    assert time.monotonic() - start < 2.0
    with pytest.raises(StoreConnectionError):
        s.get("k")


def test_the_kvsync_flavour_set_waits_so_another_connection_reads_it_at_once() -> None:
    # (its get of a missing key answers b"" at once: a set that did not wait could be
    # missed by a get on another connection; regression of a posted set in this flavour)
    with StoreServer().start() as server, KVSyncTCPStore("127.0.0.1", server.port) as reader:
        with KVSyncTCPStore("127.0.0.1", server.port) as writer:
            assert writer._post.__func__ is KVSyncTCPStore._post  # type: ignore[attr-defined]
            for i in range(50):
                writer.set(f"k{i}", b"v")
                assert reader.get(f"k{i}") == b"v"


def test_a_forked_copy_closing_the_store_leaves_the_parents_connection_alone() -> None:
    # regression: close() in a forked child (a DataLoader worker holding the rank's store)
    # shut the shared socket down, and with posts unconfirmed it would send a Ping on it
    # and read the parent's replies
    with serve_subprocess() as (_, host, port):
        store = TCPStore(host, port, timeout=10)
        store.set("before-fork", b"1")  # posted, not confirmed yet: close() would Ping
        pid = os.fork()
        if pid == 0:  # the child: close its copy, nothing else
            code = 0
            try:
                store.close()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.get("before-fork") == b"1"  # the parent's connection still works
        store.set("after-fork", b"2")
        assert store.get("after-fork") == b"2"
        store.close()
