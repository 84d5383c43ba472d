"""Specification of TCPStore: constructor paths, joining, tenants, env, processes, failures."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from transport_helpers import serve_subprocess

from kvsync import env
from kvsync.compat.torch import TCPStore as TorchTCPStore
from kvsync.errors import AuthenticationError, LimitExceededError, StoreTimeoutError
from kvsync.protocol.codec import Limits
from kvsync.protocol.connection import Connection, Role
from kvsync.server import StoreServer
from kvsync.store.tcp import JOINED_KEY, TCPStore
from kvsync.testing import StoreAddress, spawn_ranks


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No kvsync variable set: each test sets exactly what it needs."""
    for name in env.__all__:
        value = getattr(env, name)
        if isinstance(value, str) and name.isupper():
            monkeypatch.delenv(value, raising=False)
    return monkeypatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_threads(n: int, target: object, timeout: float = 30.0) -> list[object]:
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            results[i] = target(i)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def master(clean_env: pytest.MonkeyPatch) -> Iterator[TCPStore]:
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=10) as store:
        yield store


def test_master_on_port_0_reports_the_bound_port_and_serves(master: TCPStore) -> None:
    assert master.port > 0 and master.host == "127.0.0.1" and master.world_size is None
    with TCPStore("127.0.0.1", master.port, timeout=5) as client:
        client.set("first_key", "first_value")
        assert master.get("first_key") == b"first_value"
        assert master.get("missing") == b""
        assert client.delete_key("first_key") is True
        assert client.num_keys() == 0  # clients of a store without world_size add no keys
    assert f"port={master.port}" in repr(master) and "is_master=True" in repr(master)


def test_timeouts_accept_seconds_and_timedelta(master: TCPStore) -> None:
    with TCPStore("127.0.0.1", master.port, timeout=timedelta(seconds=7), use_libuv=False) as s:
        assert s.timeout == timedelta(seconds=7)
        s.set_timeout(timedelta(milliseconds=200))
        assert s.timeout == timedelta(milliseconds=200)
        start = time.monotonic()
        with pytest.raises(StoreTimeoutError, match="never"):
            s.wait(["never"])
        assert time.monotonic() - start < 3.0


def test_a_wait_timeout_names_the_missing_keys_and_the_time_and_the_store_keeps_working(
    master: TCPStore,
) -> None:
    master.set("here", "1")
    with pytest.raises(StoreTimeoutError) as info:
        master.wait(["here", "absent"], timeout=0.2)
    text = str(info.value)
    assert "absent" in text and "0.2" in text
    assert master.add("c", 1) == 1


def test_close_is_idempotent_and_later_calls_fail(clean_env: pytest.MonkeyPatch) -> None:
    store = TCPStore("127.0.0.1", 0, is_master=True, timeout=5)
    store.close()
    store.close()
    with pytest.raises(ConnectionError):
        store.get("k")


def test_wait_for_workers_returns_once_every_client_joined(clean_env: pytest.MonkeyPatch) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def client(i: int) -> int:
        with TCPStore("127.0.0.1", port, world_size=4, timeout=10) as s:
            s.barrier("joined", 3)
            return s.add("x", 1)

    threads = threading.Thread(target=run_threads, args=(3, client))
    threads.start()
    with TCPStore(
        "127.0.0.1",
        port,
        world_size=4,
        is_master=True,
        timeout=10,
        master_listen_fd=listener.detach(),
    ) as master:
        assert master.port == port
        assert master.get(JOINED_KEY) == b"3"
        threads.join(timeout=20)
    assert not threads.is_alive()


def test_wait_for_workers_timeout_says_how_many_clients_joined(
    clean_env: pytest.MonkeyPatch,
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    joined = threading.Event()

    def one_client() -> None:
        with TCPStore("127.0.0.1", port, world_size=3, timeout=10):
            joined.set()
            time.sleep(1.0)

    t = threading.Thread(target=one_client)
    t.start()
    with pytest.raises(StoreTimeoutError, match="1/2 clients joined"):
        TCPStore("127.0.0.1", port, world_size=3, is_master=True, timeout=0.6,
                 master_listen_fd=listener.detach())  # fmt: skip
    t.join(timeout=10)
    assert joined.is_set()


def test_wait_for_workers_false_returns_at_once(clean_env: pytest.MonkeyPatch) -> None:
    start = time.monotonic()
    with TCPStore("127.0.0.1", 0, world_size=5, is_master=True, wait_for_workers=False, timeout=5):
        pass
    assert time.monotonic() - start < 1.0


def test_multi_tenant_stores_share_one_server(clean_env: pytest.MonkeyPatch) -> None:
    a = TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, timeout=5)
    b = TCPStore("127.0.0.1", a.port, is_master=True, multi_tenant=True, timeout=5)
    assert a._server is b._server
    a.set("k", "shared")
    a.close()
    assert b.get("k") == b"shared"  # the server lives while a tenant remains
    server = b._server
    b.close()
    assert server is not None and "closed" in repr(server)


def test_a_second_master_on_a_used_port_fails_fast_naming_it(master: TCPStore) -> None:
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{master.port}"):
        TCPStore("127.0.0.1", master.port, is_master=True, timeout=30)
    assert time.monotonic() - start < 2.0


def test_a_client_started_before_its_master_still_joins(clean_env: pytest.MonkeyPatch) -> None:
    port = free_port()
    got: list[bytes] = []

    def client() -> None:
        with TCPStore("127.0.0.1", port, timeout=10) as s:
            s.wait(["ready"])
            got.append(s.get("ready"))

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.3)
    with TCPStore("127.0.0.1", port, is_master=True, timeout=10) as m:
        m.set("ready", "yes")
        t.join(timeout=10)
    assert got == [b"yes"]


def test_oversize_keys_and_values_raise_and_the_store_keeps_working() -> None:
    with serve_subprocess("--max-value-bytes", "1000", "--max-key-bytes", "16") as (_, h, p):
        with TCPStore(h, p, timeout=5) as s:
            with pytest.raises(LimitExceededError, match="limit of 16 bytes"):
                s.set("k" * 17, "v")
            with pytest.raises(LimitExceededError, match="limit of 1000 bytes"):
                s.set("k", b"x" * 1001)
            s.set("k", b"x" * 1000)
            assert s.get("k") == b"x" * 1000


# --- environment -----------------------------------------------------------------------


def test_no_arguments_and_no_environment_hosts_an_embedded_store(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with TCPStore() as store:
        assert store.is_master and store.host == "127.0.0.1" and store.port > 0
        store.set("k", "v")
        assert store.get("k") == b"v"


def test_no_arguments_rank_0_hosts_on_master_addr_port(clean_env: pytest.MonkeyPatch) -> None:
    port = free_port()
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0",
                        "WORLD_SIZE": "2"}.items():  # fmt: skip
        clean_env.setenv(name, value)
    joined: list[int] = []

    def rank1() -> None:
        with TCPStore("127.0.0.1", port, world_size=2, timeout=10) as s:
            joined.append(s.add("ranks", 1))

    t = threading.Thread(target=rank1)
    t.start()
    with TCPStore(timeout=10) as store:
        assert store.is_master and store.port == port and store.world_size == 2
        t.join(timeout=10)
    assert joined == [1]


def test_no_arguments_other_ranks_are_clients(clean_env: pytest.MonkeyPatch) -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, world_size=2, wait_for_workers=False,
                  timeout=5) as master:  # fmt: skip
        for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master.port),
                            "RANK": "1", "WORLD_SIZE": "2"}.items():  # fmt: skip
            clean_env.setenv(name, value)
        with TCPStore(timeout=5) as store:
            assert not store.is_master and store.world_size == 2
        assert master.get(JOINED_KEY) == b"1"


def test_kvsync_store_address_makes_every_rank_a_client(clean_env: pytest.MonkeyPatch) -> None:
    with StoreServer(port=0).start() as srv:
        clean_env.setenv("KVSYNC_STORE_ADDR", "127.0.0.1")
        clean_env.setenv("KVSYNC_STORE_PORT", str(srv.port))
        clean_env.setenv("RANK", "0")
        with TCPStore(timeout=5) as store:
            assert not store.is_master and store.port == srv.port
            store.set("k", "v")


def test_ms_receive_msg_timeout_is_the_reply_timeout_and_its_error_says_to_raise_it(
    clean_env: pytest.MonkeyPatch,
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def mute_server() -> None:  # completes the handshake, then never answers
        conn, _ = listener.accept()
        proto = Connection(Role.SERVER, limits=Limits())
        conn.settimeout(5)
        while not proto.handshake_complete:
            proto.receive_data(conn.recv(4096))
            proto.next_event()
        conn.sendall(b"".join(bytes(b) for b in proto.data_to_send()))
        stop.wait(10)
        conn.close()

    t = threading.Thread(target=mute_server)
    t.start()
    clean_env.setenv("MS_RECEIVE_MSG_TIMEOUT", "0.3")
    try:
        with TCPStore("127.0.0.1", port, timeout=30) as store:
            start = time.monotonic()
            with pytest.raises(StoreTimeoutError, match="raise it") as info:
                store.set("k", "v")
            assert "MS_RECEIVE_MSG_TIMEOUT=0.3" in str(info.value)
            assert time.monotonic() - start < 2.0
    finally:
        stop.set()
        t.join(timeout=10)
        listener.close()


def test_kvsync_secret_from_the_environment_authenticates(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("KVSYNC_SECRET", "team-secret")
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=5) as master:
        master.set("k", "v")
        with TCPStore("127.0.0.1", master.port, timeout=5) as client:
            assert client.get("k") == b"v"
        clean_env.setenv("KVSYNC_SECRET", "other")
        with pytest.raises(AuthenticationError):
            TCPStore("127.0.0.1", master.port, timeout=5)


# --- torch flavour, concurrency, failures --------------------------------------------------


def test_torch_flavour_get_waits_for_the_key(clean_env: pytest.MonkeyPatch) -> None:
    with TorchTCPStore("127.0.0.1", 0, is_master=True, timeout=10) as master:
        assert master.libuvBackend is False
        threading.Timer(0.2, master.set, args=("late", "value")).start()
        with TorchTCPStore("127.0.0.1", master.port, timeout=10) as client:
            assert client.get("late") == b"value"
            client.set_timeout(0.2)
            with pytest.raises(StoreTimeoutError):
                client.get("never")
            assert client.get("late") == b"value"


def _barrier_twice(rank: int, world_size: int, address: StoreAddress) -> int:
    with TCPStore(address.host, address.port, timeout=20) as store:
        for _ in range(2):
            store.barrier("sync", world_size, timeout=20)
        return int(store.get("sync/arrived"))


def test_barrier_of_64_ranks() -> None:
    results = spawn_ranks(_barrier_twice, 64, mode="thread", timeout=40)
    assert len(results) == 64 and all(64 <= r <= 128 for r in results)


def _adder(rank: int, world_size: int, address: StoreAddress) -> int:
    with TCPStore(address.host, address.port, timeout=30) as store:
        for _ in range(1000):
            store.add("counter", 1)
        store.barrier("done", world_size, timeout=30)
        return int(store.get("counter"))


@pytest.mark.slow
def test_8_processes_adding_1000_times_lose_nothing() -> None:
    assert spawn_ranks(_adder, 8, mode="process", timeout=50) == [8000] * 8


@pytest.mark.slow
def test_a_store_blocked_in_wait_gets_connection_error_within_2_s_when_the_server_dies(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with serve_subprocess() as (proc, host, port):
        store = TCPStore(host, port, timeout=60)
        threading.Timer(0.3, proc.send_signal, args=(signal.SIGKILL,)).start()
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=f"{host}:{port}"):
            store.wait(["never"])
        assert time.monotonic() - start < 2.3
        store.close()


def test_a_store_dropped_without_close_releases_its_socket_and_server(
    clean_env: pytest.MonkeyPatch,
) -> None:
    import gc

    store = TCPStore("127.0.0.1", 0, is_master=True, timeout=5)
    server = store._server
    store.set("k", "v")
    del store
    gc.collect()
    assert server is not None and "closed" in repr(server)


def test_bad_constructor_arguments_are_refused_before_connecting(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="needs a port"):
        TCPStore("127.0.0.1")
    with pytest.raises(ValueError, match="world_size"):
        TCPStore("127.0.0.1", 1, world_size=0)
    with pytest.raises(TypeError, match="timeout"):
        TCPStore("127.0.0.1", 1, timeout="soon")  # type: ignore[arg-type]


def test_host_given_and_port_from_master_port(clean_env: pytest.MonkeyPatch) -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=5) as master:
        clean_env.setenv("MASTER_PORT", str(master.port))
        with TCPStore("127.0.0.1", timeout=5) as client:
            assert client.port == master.port and not client.is_master
