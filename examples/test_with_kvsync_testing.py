"""Unit-testing distributed code with ``kvsync.testing``: N localhost ranks, a fresh store.

Run with kvsync's pytest plugin (loaded automatically when kvsync is installed):

    python -m pytest -p kvsync.testing.plugin examples/test_with_kvsync_testing.py
"""

from __future__ import annotations

from typing import Any

import pytest

from kvsync.errors import RankFailedError
from kvsync.store.tcp import TCPStore
from kvsync.testing import StoreAddress, spawn_ranks


def sum_of_ranks(rank: int, world_size: int, address: StoreAddress) -> int:
    """The code under test: every rank adds rank + 1, then reads the total after a barrier.

    Defined at module level so that mode="process" can import it in each rank process.
    """
    with TCPStore(*address, world_size=world_size, timeout=30) as store:
        store.add("total", rank + 1)
        store.barrier("summed", world_size)
        return int(store.get("total"))


def test_every_process_sees_the_same_total() -> None:
    # Four real processes, each with RANK / WORLD_SIZE set, talking to a fresh store.
    assert spawn_ranks(sum_of_ranks, 4, mode="process", timeout=30) == [10, 10, 10, 10]


@pytest.mark.parametrize("kvsync_world_size", [2, 3])
def test_the_fixture_runs_threads_for_a_parametrized_world_size(
    kvsync_ranks: Any, kvsync_world_size: int
) -> None:
    expected = kvsync_world_size * (kvsync_world_size + 1) // 2
    assert kvsync_ranks(sum_of_ranks, mode="thread") == [expected] * kvsync_world_size


def test_a_failing_rank_is_reported_with_its_rank_and_traceback(kvsync_ranks: Any) -> None:
    def half_broken(rank: int, world_size: int, address: StoreAddress) -> int:
        if rank == 1:
            raise ValueError("rank 1 has a bad shard")
        return rank

    with pytest.raises(RankFailedError, match="rank 1 of 2 failed: ValueError") as info:
        kvsync_ranks(half_broken, mode="thread")
    assert info.value.rank == 1
    assert "bad shard" in info.value.traceback_text


def test_the_store_server_fixture_serves_a_client(kvsync_store: TCPStore) -> None:
    kvsync_store.set("key", "value")
    assert kvsync_store.get("key") == b"value"
