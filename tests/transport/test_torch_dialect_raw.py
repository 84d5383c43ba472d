"""torch's protocol on kvsync's port, spoken by hand (no torch needed): the first byte picks
the dialect, garbage closes only its own connection, a secret keeps torch clients out."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from transport_helpers import closed_by_peer, torch_bytes

from kvsync.client import Client
from kvsync.protocol import torch_wire as tw
from kvsync.protocol.messages import Add, IntReply
from kvsync.server import StoreServer
from kvsync.store.tcp import TCPStore

pytestmark = pytest.mark.timeout(30)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    for _ in range(1000):
        if len(data) >= n:
            break
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def server() -> Iterator[StoreServer]:
    with StoreServer(port=0).start() as srv:
        yield srv


def test_a_raw_torch_client_and_a_kvsync_client_share_the_port_and_the_keys(
    server: StoreServer,
) -> None:
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as t,
        TCPStore("127.0.0.1", server.port, timeout=10) as k,
    ):
        t.sendall(torch_bytes(tw.Validate(tw.MAGIC), tw.Ping(0xDEADBEEF), tw.Set("/a", b"t")))
        assert _recv_exactly(t, 4) == (0xDEADBEEF).to_bytes(4, "little")
        assert k.get("a") == b"t"
        k.set("b", b"k")
        t.sendall(torch_bytes(tw.Get("/b")))
        assert _recv_exactly(t, 9) == b"\x01" + bytes(7) + b"k"


def test_a_wrong_magic_closes_only_that_connection(server: StoreServer) -> None:
    with TCPStore("127.0.0.1", server.port, timeout=10) as k:
        bad = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        bad.sendall(b"\x00\x01\x02\x03\x04")
        assert closed_by_peer(bad)
        bad.close()
        k.set("still", b"here")
        assert k.get("still") == b"here"


def test_a_server_with_a_secret_refuses_torch_clients() -> None:
    with StoreServer(port=0, secret="s3cret").start() as server:
        t = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        t.sendall(torch_bytes(tw.Validate(tw.MAGIC), tw.Ping(1)))
        assert closed_by_peer(t)
        t.close()
        with Client("127.0.0.1", server.port, timeout=10, secret="s3cret") as k:
            assert k.call(Add("n", 1)) == IntReply(1)
