"""The Store contract: every behaviour of the Store API, run against every flavour.

Each test reads as a specification; ``any_store`` is a fresh store of each flavour listed in
``conftest.FLAVOURS`` and ``connect()`` gives more clients of the same data.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from kvsync.errors import KVSyncError, LimitExceededError, StoreTimeoutError
from kvsync.store import Store, sync

from .conftest import Flavour

#: The ``connect`` fixture: a new client of the same store on each call.
Connect = Callable[[], Store]
JOIN_TIMEOUT = 20.0


def run_threads(n: int, target: Callable[[int], object]) -> list[object]:
    """Run ``target(i)`` in ``n`` threads; returns results or raises the first error."""
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still running after the deadline"
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def later(seconds: float, action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` in a thread after ``seconds``; on exit join it and re-raise its error."""
    errors: list[BaseException] = []

    def body() -> None:
        time.sleep(seconds)
        try:
            action()
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=JOIN_TIMEOUT)
    assert not thread.is_alive(), "delayed action still running after the deadline"
    if errors:
        raise errors[0]


# --- set / get ----------------------------------------------------------------------------


def test_set_then_get_returns_the_value_as_bytes(any_store: Store) -> None:
    any_store.set("first_key", "first_value")
    assert any_store.get("first_key") == b"first_value"


def test_values_may_be_str_bytes_bytearray_or_memoryview(any_store: Store) -> None:
    any_store.set("s", "héllo")
    any_store.set("b", b"\x00\xff")
    any_store.set("ba", bytearray(b"ba"))
    any_store.set("mv", memoryview(b"xmvx")[1:3])
    assert [any_store.get(k) for k in ("s", "b", "ba", "mv")] == [
        "héllo".encode(),
        b"\x00\xff",
        b"ba",
        b"mv",
    ]


def test_set_overwrites_the_previous_value(any_store: Store) -> None:
    any_store.set("k", "one")
    any_store.set("k", "two")
    assert any_store.get("k") == b"two"


def test_empty_and_large_values_round_trip(any_store: Store) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    any_store.set("empty", b"")
    any_store.set("big", big)
    assert any_store.get("big") == big
    assert any_store.check(["empty"])


def test_unicode_keys_are_distinct_keys(any_store: Store) -> None:
    any_store.set("ключ", "1")
    any_store.set("键", "2")
    assert (any_store.get("ключ"), any_store.get("键")) == (b"1", b"2")


@pytest.mark.nonblocking_get_only
def test_get_of_missing_key_returns_empty_bytes(any_store: Store) -> None:
    assert any_store.get("missing") == b""
    assert any_store.multi_get(["missing"]) == [b""]


@pytest.mark.blocking_get_only
def test_get_of_missing_key_waits_until_it_is_set(connect: Connect) -> None:
    reader, writer = connect(), connect()
    with later(0.1, lambda: writer.set("late", "here")):
        assert reader.get("late") == b"here"


@pytest.mark.blocking_get_only
def test_get_of_missing_key_raises_timeout_naming_it(any_store: Store) -> None:
    any_store.set_timeout(0.2)
    with pytest.raises(StoreTimeoutError, match="never_set"):
        any_store.get("never_set")


@pytest.mark.parametrize("key", [1, b"k", None])
def test_non_str_key_raises_type_error(any_store: Store, key: object) -> None:
    with pytest.raises(TypeError):
        any_store.get(key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        any_store.set(key, "v")  # type: ignore[arg-type]


def test_non_buffer_value_raises_type_error(any_store: Store) -> None:
    with pytest.raises(TypeError, match="value"):
        any_store.set("k", 3)  # type: ignore[arg-type]


def test_key_over_the_cap_raises_limit_exceeded_naming_the_limit(
    any_store: Store, flavour: Flavour
) -> None:
    with pytest.raises(LimitExceededError, match=str(flavour.key_cap)):
        any_store.set("k" * (flavour.key_cap + 1), "v")
    assert any_store.num_keys() == 0


# --- add / compare_set --------------------------------------------------------------------


def test_add_creates_a_counter_and_returns_the_new_value(any_store: Store) -> None:
    assert any_store.add("n", 3) == 3
    assert any_store.add("n", -5) == -2
    assert any_store.get("n") == b"-2"


def test_add_to_a_decimal_value_set_as_text(any_store: Store) -> None:
    any_store.set("n", "41")
    assert any_store.add("n", 1) == 42


@pytest.mark.kvsync_server_only("it drops the connection (the error names the key)")
def test_add_to_a_non_integer_value_raises_naming_the_key(any_store: Store) -> None:
    any_store.set("word", "abc")
    with pytest.raises(KVSyncError, match="word"):
        any_store.add("word", 1)
    assert any_store.get("word") == b"abc"


def test_concurrent_adds_lose_nothing(connect: Connect) -> None:
    stores = [connect() for _ in range(4)]

    def adder(i: int) -> None:
        for _ in range(200):
            stores[i].add("counter", 1)

    run_threads(4, adder)
    assert stores[0].add("counter", 0) == 800


def test_compare_set_on_missing_key_with_empty_expected_sets_desired(any_store: Store) -> None:
    assert any_store.compare_set("k", "", "new") == b"new"
    assert any_store.get("k") == b"new"


def test_compare_set_on_missing_key_with_other_expected_returns_it(any_store: Store) -> None:
    assert any_store.compare_set("k", "exp", "new") == b"exp"
    assert not any_store.check(["k"])


def test_compare_set_with_matching_value_sets_desired(any_store: Store) -> None:
    any_store.set("k", "cur")
    assert any_store.compare_set("k", "cur", "new") == b"new"
    assert any_store.get("k") == b"new"


def test_compare_set_with_other_value_returns_current(any_store: Store) -> None:
    any_store.set("k", "cur")
    assert any_store.compare_set("k", "other", "new") == b"cur"
    assert any_store.get("k") == b"cur"


# --- wait / check -------------------------------------------------------------------------


def test_wait_returns_when_keys_exist(any_store: Store) -> None:
    any_store.multi_set(["a", "b"], ["1", "2"])
    any_store.wait(["a", "b"])
    any_store.wait("a")
    any_store.wait([])


def test_wait_blocks_until_another_client_sets_the_keys(connect: Connect) -> None:
    waiter, writer = connect(), connect()

    def set_both() -> None:
        writer.set("x", "1")
        writer.set("y", "2")

    start = time.monotonic()
    with later(0.1, set_both):
        waiter.wait(["x", "y"], timeout=5)
    assert time.monotonic() - start < 5


def test_wait_raises_naming_missing_keys_when_timeout(any_store: Store) -> None:
    any_store.set("present", "1")
    start = time.monotonic()
    with pytest.raises(StoreTimeoutError) as info:
        any_store.wait(["present", "absent"], timeout=timedelta(milliseconds=200))
    assert time.monotonic() - start >= 0.19
    message = str(info.value)
    assert "absent" in message and "still missing" in message
    assert "present'" not in message.split("still missing")[1]
    assert "timed out after 0.2" in message


def test_timeout_errors_are_builtin_timeout_errors(any_store: Store) -> None:
    with pytest.raises(TimeoutError):
        any_store.wait(["nope"], timeout=0.05)


def test_store_keeps_working_after_a_wait_timeout(any_store: Store) -> None:
    with pytest.raises(StoreTimeoutError):
        any_store.wait(["nope"], timeout=0.05)
    any_store.set("nope", "now")
    any_store.wait(["nope"], timeout=1)
    assert any_store.get("nope") == b"now"


def test_wait_uses_the_store_timeout_by_default(any_store: Store) -> None:
    any_store.set_timeout(timedelta(milliseconds=100))
    with pytest.raises(StoreTimeoutError):
        any_store.wait(["nope"])


def test_check_says_whether_every_key_exists(any_store: Store) -> None:
    any_store.set("a", "1")
    assert any_store.check(["a"]) is True
    assert any_store.check(["a", "b"]) is False


# --- delete / count / list ----------------------------------------------------------------


def test_delete_key_returns_whether_a_key_was_deleted(any_store: Store) -> None:
    any_store.set("first_key", "first_value")
    assert any_store.delete_key("first_key") is True
    assert any_store.delete_key("first_key") is False
    assert not any_store.check(["first_key"])


@pytest.mark.kvsync_server_only("queues are not keys there (not counted, listed or deleted)")
def test_num_keys_counts_values_and_queues(any_store: Store) -> None:
    any_store.set("a", "1")
    any_store.add("n", 1)
    any_store.queue_push("q", "x")
    assert any_store.num_keys() == 3
    any_store.delete_key("q")
    assert any_store.num_keys() == 2


@pytest.mark.kvsync_server_only("queues are not keys there (not counted, listed or deleted)")
def test_list_keys_lists_every_key(any_store: Store) -> None:
    any_store.multi_set(["b", "a"], ["1", "2"])
    any_store.queue_push("q", "x")
    assert sorted(any_store.list_keys()) == ["a", "b", "q"]


# --- multi / append -----------------------------------------------------------------------


def test_multi_set_then_multi_get_in_order(any_store: Store) -> None:
    any_store.multi_set(["k1", "k2", "k3"], ["v1", b"v2", bytearray(b"v3")])
    assert any_store.multi_get(["k3", "k1", "k2"]) == [b"v3", b"v1", b"v2"]


def test_multi_set_with_unequal_lengths_raises_value_error(any_store: Store) -> None:
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        any_store.multi_set(["a", "b"], ["1"])


def test_append_creates_then_extends(any_store: Store) -> None:
    any_store.append("log", "a")
    any_store.append("log", b"bc")
    assert any_store.get("log") == b"abc"


# --- queues -------------------------------------------------------------------------------


def test_queue_is_first_in_first_out(any_store: Store) -> None:
    for v in ("1", "2", "3"):
        any_store.queue_push("q", v)
    assert any_store.queue_len("q") == 3
    assert [any_store.queue_pop("q") for _ in range(3)] == [b"1", b"2", b"3"]
    assert any_store.queue_len("q") == 0


def test_queue_pop_blocks_until_an_item_is_pushed(connect: Connect) -> None:
    consumer, producer = connect(), connect()
    with later(0.1, lambda: producer.queue_push("jobs", "job-1")):
        assert consumer.queue_pop("jobs", timeout=5) == b"job-1"


def test_queue_pop_times_out_naming_the_queue(any_store: Store) -> None:
    with pytest.raises(StoreTimeoutError, match="jobs"):
        any_store.queue_pop("jobs", timeout=0.1)


def test_queue_pop_without_block_on_empty_queue_raises(any_store: Store) -> None:
    with pytest.raises(KVSyncError, match="empty"):
        any_store.queue_pop("jobs", block=False)


def test_each_item_goes_to_exactly_one_blocked_consumer(connect: Connect) -> None:
    consumers = [connect() for _ in range(4)]
    producer = connect()
    with later(0.1, lambda: [producer.queue_push("q", str(i)) for i in range(4)]):
        got = run_threads(4, lambda i: consumers[i].queue_pop("q", timeout=10))
    assert sorted(got) == [b"0", b"1", b"2", b"3"]  # type: ignore[type-var]


# --- barrier ------------------------------------------------------------------------------


def test_barrier_releases_everyone_and_is_reusable(connect: Connect) -> None:
    stores = [connect() for _ in range(4)]
    order: list[tuple[int, int]] = []

    def rank(i: int) -> None:
        for generation in range(3):
            order.append((generation, i))
            stores[i].barrier("sync", 4, timeout=10)

    run_threads(4, rank)
    generations = [g for g, _ in order]
    assert generations == sorted(generations)  # nobody entered generation g+1 early


def test_barrier_of_64_ranks(connect: Connect) -> None:
    stores = [connect() for _ in range(64)]
    run_threads(64, lambda i: stores[i].barrier("b64", 64, timeout=15))
    assert stores[0].add("b64/arrived", 0) == 64


def test_barrier_meets_ranks_using_the_add_set_wait_barrier(connect: Connect) -> None:
    stores = [connect() for _ in range(4)]

    def rank(i: int) -> None:
        for _ in range(2):
            if i % 2:
                stores[i].barrier("mixed", 4, timeout=10)
            else:
                sync.barrier(stores[i], "mixed", 4, timeout=10)

    run_threads(4, rank)
    assert stores[0].add("mixed/arrived", 0) == 8


def test_barrier_timeout_says_how_many_ranks_arrived(any_store: Store) -> None:
    # the server names the key it holds (a PrefixStore's, with its prefix, as for wait)
    with pytest.raises(
        StoreTimeoutError, match=r"1/3 ranks reached barrier '(pfx/)?lonely' after \d+\.\d\d s"
    ):
        any_store.barrier("lonely", 3, timeout=0.1)
    any_store.add("lonely/arrived", 1)  # the same client works on, and the count went on
    assert any_store.add("lonely/arrived", 0) == 2


# --- timeout, lifetime, repr --------------------------------------------------------------


def test_set_timeout_changes_the_timeout_property(any_store: Store) -> None:
    any_store.set_timeout(timedelta(seconds=42))
    assert any_store.timeout == timedelta(seconds=42)
    any_store.set_timeout(7)
    assert any_store.timeout.total_seconds() == 7


def test_context_manager_closes_and_repr_names_the_class(connect: Connect) -> None:
    store = connect()
    with store as s:
        assert type(s).__name__ in repr(s)
        s.set("k", "v")
