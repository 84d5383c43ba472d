"""Specification of kvsync.testing.spawn_ranks (threads and real processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from kvsync import env
from kvsync.errors import RankFailedError, StoreTimeoutError
from kvsync.store.tcp import TCPStore
from kvsync.testing import StoreAddress, spawn_ranks

pytestmark = pytest.mark.slow


def gather_ranks(rank: int, world_size: int, address: StoreAddress) -> dict[str, object]:
    with TCPStore(*address, world_size=world_size, timeout=20) as store:
        store.set(f"r{rank}", str(rank))
        store.wait([f"r{r}" for r in range(world_size)])
        seen = sorted(int(store.get(f"r{r}")) for r in range(world_size))
    return {"rank": rank, "seen": seen, "weights": np.full((2, 2), rank, dtype=np.float32),
            "raw": bytes([rank]), "pair": (rank, "x")}


def report_environment(rank: int, world_size: int, address: StoreAddress) -> list[object]:
    e = env.read()
    with TCPStore(timeout=20) as store:  # no arguments: the environment names the store
        store.add("hello", 1)
        store.barrier("met", world_size)
        count = int(store.get("hello"))
    return [e.rank, e.world_size, e.master_port == address.port, count]


def fail_on_rank_one(rank: int, world_size: int, address: StoreAddress) -> int:
    if rank == 1:
        raise ValueError(f"bad shard on rank {rank}")
    with TCPStore(*address, world_size=world_size, timeout=30) as store:
        store.wait(["never-set"])  # blocks until the run is torn down
    return rank


def write_pid_then_sleep(rank: int, world_size: int, address: StoreAddress) -> None:
    Path(os.environ["KVSYNC_TEST_PID_DIR"], f"{rank}.pid").write_text(str(os.getpid()))
    time.sleep(30)


def return_a_set(rank: int, world_size: int, address: StoreAddress) -> object:
    return {rank}


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_results_come_back_in_rank_order_with_arrays_bytes_and_tuples(mode: str) -> None:
    results = spawn_ranks(gather_ranks, 3, mode=mode, timeout=30)  # type: ignore[arg-type]
    assert [r["rank"] for r in results] == [0, 1, 2]
    for rank, r in enumerate(results):
        assert r["seen"] == [0, 1, 2]
        assert r["raw"] == bytes([rank]) and r["pair"] == (rank, "x")
        np.testing.assert_array_equal(r["weights"], np.full((2, 2), rank, np.float32))
        assert r["weights"].dtype == np.float32


def test_rank_processes_get_the_launcher_environment() -> None:
    assert spawn_ranks(report_environment, 2, timeout=30) == [[0, 2, True, 2], [1, 2, True, 2]]


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_the_first_failure_is_raised_with_its_rank_and_traceback(mode: str) -> None:
    started = time.monotonic()
    with pytest.raises(RankFailedError, match=r"rank 1 of 3 failed: ValueError: bad shard"
                       ) as info:
        spawn_ranks(fail_on_rank_one, 3, mode=mode, timeout=30)  # type: ignore[arg-type]
    assert time.monotonic() - started < 15.0  # the blocked ranks did not wait out 30 s
    assert info.value.rank == 1
    assert "fail_on_rank_one" in info.value.traceback_text
    assert 'raise ValueError(f"bad shard' in info.value.traceback_text
    if mode == "thread":
        assert isinstance(info.value.__cause__, ValueError)


def test_a_run_past_its_timeout_names_the_ranks_and_kills_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVSYNC_TEST_PID_DIR", str(tmp_path))
    with pytest.raises(StoreTimeoutError, match=r"rank\(s\) \[0, 1\] of 2 still running"):
        spawn_ranks(write_pid_then_sleep, 2, timeout=1.5)
    for pid_file in tmp_path.glob("*.pid"):
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


def test_a_result_that_needs_pickle_is_a_failure_naming_its_type() -> None:
    with pytest.raises(RankFailedError, match="returned a set, which cannot cross"):
        spawn_ranks(return_a_set, 1, timeout=30)


def test_process_mode_refuses_a_lambda_and_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="module-level function"):
        spawn_ranks(lambda rank, world_size, address: None, 2)
    with pytest.raises(ValueError, match="world_size must be at least 1"):
        spawn_ranks(gather_ranks, 0)
    with pytest.raises(ValueError, match="mode must be"):
        spawn_ranks(gather_ranks, 1, mode="fiber")  # type: ignore[arg-type]
