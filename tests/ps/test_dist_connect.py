"""Specification of how a worker finds and dials its job's parameter servers."""

from __future__ import annotations

import logging
import socket

import pytest

from kvsync.errors import StoreTimeoutError
from kvsync.kv.dist_connect import SERVER_HOST_KEY, SERVER_KEY, connect, server_addresses
from kvsync.kv.shm import host_id
from kvsync.server import StoreServer
from kvsync.store.tcp import TCPStore


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(20)
def test_an_unreachable_server_is_logged_per_attempt_then_named_with_what_it_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _closed_port()
    with StoreServer().start() as job, TCPStore("127.0.0.1", job.port, timeout=5) as store:
        store.set(SERVER_HOST_KEY.format(0), "elsewhere/boot/net-1")
        store.set(SERVER_KEY.format(0), f"127.0.0.1:{port}")
        environ = {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(job.port),
            "RANK": "0",
            "WORLD_SIZE": "1",
            "DMLC_NUM_SERVER": "1",
        }
        with (
            caplog.at_level(logging.WARNING, "kvsync.client.connect"),
            pytest.raises(StoreTimeoutError) as info,
        ):
            connect(environ=environ, timeout=1.0)
    text = str(info.value)
    assert f"parameter server 0 (registered '127.0.0.1:{port}' from host " in text
    assert "'elsewhere/boot/net-1'" in text and f"tried 127.0.0.1:{port} for 1 s" in text
    assert "registered a loopback address" in text and "--node-addr" in text
    attempts = [r for r in caplog.records if f"127.0.0.1:{port}" in r.getMessage()]
    assert len(attempts) >= 2 and all(r.levelno == logging.WARNING for r in attempts)
    assert "attempt 1," in attempts[0].getMessage()


def test_registered_servers_carry_their_host_identity() -> None:
    with StoreServer().start() as job, TCPStore("127.0.0.1", job.port, timeout=5) as store:
        for i, (address, host) in enumerate([("10.77.0.1:5", host_id()), ("10.77.0.2:6", "")]):
            store.set(SERVER_KEY.format(i), address)
            if host:
                store.set(SERVER_HOST_KEY.format(i), host)
        got = server_addresses(store, 2, timeout=5)
    assert [(s.index, s.host, s.port) for s in got] == [(0, "10.77.0.1", 5), (1, "10.77.0.2", 6)]
    assert got[0].host_id == host_id() and got[1].host_id == ""  # unknown: never shared
