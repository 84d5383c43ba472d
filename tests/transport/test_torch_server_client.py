"""kvsync's client of torch's own store server (torch's protocol), beyond the contract suite.

The Store contract runs against torch's server too (flavours ``*torch-server`` in
tests/store/conftest.py); these are the specs of where the two meet and where they differ.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kvsync import TCPStore
from kvsync.errors import LimitExceededError, StoreConnectionError, StoreTimeoutError

pytestmark = [pytest.mark.torch, pytest.mark.timeout(60)]


@pytest.fixture
def torch_server() -> Iterator[Any]:
    dist = pytest.importorskip("torch.distributed")
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=datetime.timedelta(seconds=10))  # fmt: skip
    yield server
    del server


def test_keys_are_shared_with_torchs_own_clients_under_the_same_names(torch_server: Any) -> None:
    with TCPStore("127.0.0.1", torch_server.port, timeout=5, dialect="torch") as store:
        torch_server.set("from_torch", "t")
        store.set("from_kvsync", "k")
        store.queue_push("q", "item")
        store.wait(["from_torch"])  # torch's SET has no reply: it may still be in flight
        assert store.get("from_torch") == b"t"
        assert torch_server.get("from_kvsync") == b"k"
        assert torch_server.queue_pop("q") == b"item"
        assert sorted(store.list_keys()) == sorted(torch_server.list_keys())
        assert store.add("n", 2) == 2 and torch_server.add("n", 3) == 5
        assert store.dialect == "torch" and not store.is_master


def test_under_torchruns_variables_every_rank_is_a_client_of_the_agent_store(
    torch_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(torch_server.port), "RANK": "0",
                        "WORLD_SIZE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with TCPStore(timeout=5) as store:  # rank 0, yet it hosts nothing
        assert (store.dialect, store.is_master, store.port) == ("torch", False, torch_server.port)
        store.set("hello/0", "0")
    with TCPStore("127.0.0.1", torch_server.port, timeout=5) as explicit:  # same address
        assert explicit.dialect == "torch"
        assert explicit.get("hello/0") == b"0"


def test_kvsync_store_dialect_steers_an_explicit_address(
    torch_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVSYNC_STORE_DIALECT", "torch")
    with TCPStore("127.0.0.1", torch_server.port, timeout=5) as store:
        store.set("k", "v")
        assert store.dialect == "torch" and torch_server.get("k") == b"v"


def test_kvsyncs_protocol_against_a_torch_server_times_out_saying_which_dialect_to_use(
    torch_server: Any,
) -> None:
    with TCPStore("127.0.0.1", torch_server.port, timeout=0.5) as store:  # (no round trip)
        with pytest.raises(StoreTimeoutError, match="dialect='torch'"):
            store.set("k", "v")  # the first request waits for the HelloReply
    with pytest.raises(StoreTimeoutError, match="dialect='torch'"):  # a store that joins
        TCPStore("127.0.0.1", torch_server.port, world_size=2, timeout=0.5)


def test_an_add_to_a_non_integer_drops_the_connection_and_the_error_names_the_key(
    torch_server: Any,
) -> None:
    store = TCPStore("127.0.0.1", torch_server.port, timeout=5, dialect="torch")
    store.set("word", "abc")
    with pytest.raises(StoreConnectionError, match="add of 'word'"):
        store.add("word", 1)
    with pytest.raises(StoreConnectionError, match="add of 'word'"):
        store.get("word")  # the client is closed; the server and other clients are fine
    store.close()
    assert torch_server.get("word") == b"abc"


def test_values_over_torchs_cap_are_refused_before_sending(torch_server: Any) -> None:
    with TCPStore("127.0.0.1", torch_server.port, timeout=5, dialect="torch") as store:
        with pytest.raises(LimitExceededError, match="8388608"):
            store.set("big", b"x" * (8 * 1024 * 1024 + 1))
        store.set("big", b"x" * (8 * 1024 * 1024))  # the cap itself is fine
        assert len(store.get("big")) == 8 * 1024 * 1024


def test_calls_from_several_threads_share_one_connection_safely(torch_server: Any) -> None:
    with TCPStore("127.0.0.1", torch_server.port, timeout=10, dialect="torch") as store:

        def adder() -> None:
            for _ in range(50):
                store.add("n", 1)
                store.set("k", "v")

        threads = [threading.Thread(target=adder) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        assert store.add("n", 0) == 200


def test_a_timed_out_wait_is_cancelled_and_the_connection_stays_usable(
    torch_server: Any,
) -> None:
    with TCPStore("127.0.0.1", torch_server.port, timeout=5, dialect="torch") as store:
        store.set("here", "1")
        with pytest.raises(StoreTimeoutError, match=r"still missing: \['gone'\]"):
            store.wait(["here", "gone"], timeout=0.2)
        torch_server.set("gone", "now")  # wakes nobody: the wait was cancelled
        assert store.get("gone") == b"now"
        store.wait(["gone"], timeout=1)


def test_dialect_torch_for_a_master_or_with_a_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="not for a master"):
        TCPStore("127.0.0.1", 0, is_master=True, dialect="torch")
    with pytest.raises(ValueError, match="not one of kvsync, torch"):
        TCPStore("127.0.0.1", 1, dialect="grpc")
    monkeypatch.setenv("KVSYNC_SECRET", "s3cret")
    with pytest.raises(ValueError, match="cannot authenticate"):
        TCPStore("127.0.0.1", 1, dialect="torch")


def test_an_unclosed_client_closes_its_socket_when_collected(torch_server: Any) -> None:
    import weakref

    from kvsync.client.torch import TorchClient

    client = TorchClient("127.0.0.1", torch_server.port, timeout=5)
    sock, gone = client._sock, weakref.ref(client)
    del client  # no cycle holds a client, so this frees it: no gc.collect(), which would
    # also finalize other tests' garbage here (and fail this test for their warnings)
    assert gone() is None
    assert sock.fileno() == -1
