"""PrefixStore specifics and the coordination helpers of kvsync.store.sync."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from kvsync.errors import StoreConnectionError, StoreTimeoutError
from kvsync.store import HashStore, PrefixStore
from kvsync.store.sync import barrier, rendezvous


def _run_threads(n: int, target: Callable[[int], object]) -> None:
    """Run ``target(i)`` in ``n`` threads; all must finish within 10 s."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_prefix_store_keys_live_under_the_prefix_of_the_underlying_store() -> None:
    base = HashStore()
    a, b = PrefixStore("a", base), PrefixStore("b", base)
    a.set("k", "1")
    b.set("k", "2")
    assert (a.get("k"), b.get("k")) == (b"1", b"2")
    assert sorted(base.list_keys()) == ["a/k", "b/k"]
    assert a.list_keys() == ["k"]
    assert a.underlying_store is base and a.prefix == "a"


def test_prefix_store_num_keys_counts_the_whole_underlying_store_like_torch() -> None:
    base = HashStore()
    base.set("other", "x")
    p = PrefixStore("p", base)
    p.set("k", "1")
    assert p.num_keys() == 2


def test_prefix_store_rewrites_multi_key_requests_and_errors_name_full_keys() -> None:
    p = PrefixStore("job", HashStore())
    p.multi_set(["x", "y"], ["1", "2"])
    assert p.multi_get(["y", "x"]) == [b"2", b"1"]
    assert p.check(["x", "y"])
    with pytest.raises(StoreTimeoutError, match=r"still missing: \['job/z'\]"):
        p.wait(["x", "z"], timeout=0.05)


def test_nested_prefix_stores_compose() -> None:
    base = HashStore()
    inner = PrefixStore("outer", PrefixStore("mid", base))
    inner.queue_push("q", "v")
    assert base.list_keys() == ["mid/outer/q"]
    assert inner.queue_pop("q") == b"v"


def test_prefix_store_inherits_timeout_and_get_flavour() -> None:
    base = HashStore(timeout=12)
    p = PrefixStore("p", base)
    assert p.timeout.total_seconds() == 12
    assert "prefix='p'" in repr(p) and "HashStore(timeout=12)" in repr(p)


def test_prefix_store_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="prefix must be str"):
        PrefixStore(1, HashStore())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kvsync Store"):
        PrefixStore("p", {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("world_size", "exc"), [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_barrier_checks_world_size(world_size: object, exc: type[Exception]) -> None:
    store = HashStore()
    with pytest.raises(exc, match="world_size"):
        barrier(store, "b", world_size)  # type: ignore[arg-type]
    with pytest.raises(exc, match="world_size"):
        store.barrier("b", world_size)  # type: ignore[arg-type]
    assert store.num_keys() == 0  # refused before anything was sent


def test_store_barrier_refuses_a_key_that_is_not_str() -> None:
    with pytest.raises(TypeError, match="key must be str"):
        HashStore().barrier(7, 2)  # type: ignore[arg-type]


def test_rendezvous_returns_every_ranks_value_in_rank_order() -> None:
    store = HashStore()
    results: list[list[bytes]] = [[] for _ in range(3)]

    def rank(r: int) -> None:
        results[r] = rendezvous(store, "addrs", r, 3, f"host{r}", timeout=10)

    _run_threads(3, rank)
    assert results == [[b"host0", b"host1", b"host2"]] * 3


def test_rendezvous_timeout_names_the_ranks_that_did_not_publish() -> None:
    with pytest.raises(StoreTimeoutError, match=r"ranks \[1, 2\] did not publish .*1/3 did"):
        rendezvous(HashStore(), "r", 0, 3, "x", timeout=0.05)
    with pytest.raises(ValueError, match="rank 3"):
        rendezvous(HashStore(), "r", 3, 3, "x")


class _RecordingStore(HashStore):
    """A HashStore that records which requests each thread sent, and can fail waits."""

    def __init__(self) -> None:
        super().__init__(timeout=10)
        self.sent: dict[int, list[str]] = {}
        self.server_gone = threading.Event()

    def _call(self, msg: object, timeout: float) -> object:
        self.sent.setdefault(threading.get_ident(), []).append(type(msg).__name__)
        if self.server_gone.is_set():
            raise StoreConnectionError("store server 127.0.0.1:1 closed the connection")
        return super()._call(msg, timeout)


def test_barrier_last_arrival_returns_after_its_set_without_touching_the_store_again() -> None:
    # Regression: the last rank used to set the done key and then wait on the server too;
    # under torchrun, when that rank hosts the store and leaves at once, the wait hit a
    # closed server. Here the store "closes" as soon as the done key is set.
    store = _RecordingStore()
    first = threading.Thread(target=barrier, args=(store, "b", 2, 5))
    first.start()
    for _ in range(1000):  # until the first rank is parked on the done flag
        if store.sent.get(first.ident or 0, [])[-1:] == ["Wait"]:
            break
        threading.Event().wait(0.005)
    original_set = store.set

    def set_then_close(key: str, value: object) -> None:
        original_set(key, value)  # type: ignore[arg-type]
        store.server_gone.set()

    store.set = set_then_close  # type: ignore[method-assign]
    barrier(store, "b", 2)  # the last arrival: must not raise StoreConnectionError
    first.join(timeout=10)
    assert not first.is_alive()
    assert store.sent[threading.get_ident()] == ["Add", "Set"]


def test_store_barrier_is_one_request_per_caller() -> None:
    store = _RecordingStore()
    _run_threads(3, lambda _: store.barrier("b", 3, 10))
    assert sorted(store.sent.values()) == [["Barrier"]] * 3


def test_store_barrier_through_a_prefix_store_counts_under_the_prefix() -> None:
    base = HashStore()
    PrefixStore("job", base).barrier("b", 1)
    assert sorted(base.list_keys()) == ["job/b/arrived", "job/b/done/0"]
