"""The dist KVStore with real processes: 2-4 workers x 1-2 servers on localhost."""

from __future__ import annotations

import pytest
from dist_procs import ps_job

from kvsync.kv.shm import shm_supported

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("workers", "servers"), [(2, 1), (4, 2)])
def test_sync_rounds_with_several_and_split_keys(workers: int, servers: int) -> None:
    with ps_job(servers, bound=100) as job:
        job.start_workers("sync", workers)
        stats = job.results()[0]["stats"]
    assert isinstance(stats, list) and len(stats) == servers
    if servers == 2:  # key 3 (200 float32) is split: each server carries about half
        ins = [s["bytes_in"] for s in stats]
        assert min(ins) > 0.25 * sum(ins), ins


@pytest.mark.torch
def test_sync_rounds_with_torchs_store_as_the_job_registry() -> None:
    pytest.importorskip("torch.distributed")
    with ps_job(1, bound=100, torch_store=True) as job:
        assert job.env["TORCHELASTIC_USE_AGENT_STORE"] == "True"
        job.start_workers("sync", 2)
        stats = job.results()[0]["stats"]
        registered = job.store.get("kvsync/ps/server/0").decode()  # torch's client reads it
    assert isinstance(stats, list) and len(stats) == 1
    assert registered.startswith("127.0.0.1:")


def test_async_applies_every_push_on_the_server() -> None:
    with ps_job(2) as job:
        job.start_workers("asynchronous", 2, KVSYNC_TEST_KV_TYPE="dist_async")
        job.results()


def test_optimizer_states_rowsparse_compression_and_bad_pushes() -> None:
    with ps_job(2, bound=20) as job:
        job.start_workers("features", 2)
        res = job.results()
    assert "key 0" in str(res[0]["shape_error"])


def test_uneven_pushes_give_a_clear_error_not_a_hang() -> None:
    with ps_job(1, stall=1.0) as job:
        job.start_workers("uneven", 2)
        res = job.results()
    for r in res:
        assert "uneven" in str(r["error"]) and r["type"] == "InvalidArgumentError", r
        assert float(r["seconds"]) < 10  # type: ignore[arg-type]


@pytest.mark.parametrize("scenario", ["uneven_across_servers", "uneven_across_servers_rows"])
def test_uneven_pushes_on_different_servers_give_a_clear_error_within_seconds(
    scenario: str,
) -> None:
    # rank 0 waits on one server for b's round 1, rank 1 on the other for a's round 2 (in a
    # pull, or a row_sparse_pull): neither server has every worker parked, but each hears
    # the other rank is blocked
    with ps_job(2, stall=1.0) as job:
        job.start_workers(scenario, 2)
        res = job.results()
    expected = [
        "round 1 has pushes from ranks [0] but not from [1]",
        "round 2 has pushes from ranks [1] but not from [0]",
    ]
    uneven = 0
    for rank, r in enumerate(res):
        text = str(r["error"])
        assert float(r["seconds"]) < 6, r  # type: ignore[arg-type]
        if "uneven" in text:  # the first server to break its stall
            assert r["type"] == "InvalidArgumentError", r
            assert expected[rank] in text and "blocked on other servers" in text, r
            uneven += 1
        else:  # the other rank got its error first and left
            assert f"ranks [{1 - rank}] disconnected" in text, r
    assert uneven >= 1, res


def test_a_killed_worker_makes_the_others_fail_naming_its_rank() -> None:
    with ps_job(2) as job:
        job.start_workers("worker_dies", 3)
        out = job.results_of(range(2))
    for r in out:
        assert "ranks [2] disconnected" in str(r["error"]), r
        assert float(r["seconds"]) < 5  # type: ignore[arg-type]


def test_a_killed_server_gives_connection_errors_within_two_seconds() -> None:
    with ps_job(2) as job:
        job.start_workers("server_dies", 2)
        res = job.results()
    for r in res:
        assert "127.0.0.1:" in str(r["error"]), r
        assert float(r["seconds"]) < 2.0  # type: ignore[arg-type]


def test_server_setup_module_registers_custom_optimizers_and_updaters() -> None:
    with ps_job(2, bound=10, setup="ps_server_setup") as job:  # kvsync serve --role server
        job.start_workers("custom", 2)
        res = job.results()
    assert "workeronlysgd" in str(res[0]["unknown"]) and "triplesgd" in str(res[0]["unknown"])
    assert "negate" in str(res[0]["unknown_updater"])


@pytest.mark.parametrize("shm", ["1", "0"])
def test_big_arrays_through_shared_memory_or_socket_parts(shm: str) -> None:
    with ps_job(2) as job:
        job.start_workers("big", 2, KVSYNC_PS_SHM=shm)
        res = job.results()
    assert all(r["shm"] is (shm == "1" and shm_supported()) for r in res)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("kind", "shm"), [("dist_sync", "1"), ("dist_async", "1"), ("dist_sync", "0")]
)
def test_bucketed_steps_give_the_bits_of_per_key_steps_for_every_rule_and_compression(
    kind: str, shm: str
) -> None:
    """With shared memory off, the big keys' pulls of one call travel one per message and
    land in the outputs (kvsync.kv.comm.LAND_BYTES): the same bits again."""
    with ps_job(2, bound=300_000) as job:
        job.start_workers("bucketed", 2, KVSYNC_TEST_KV_TYPE=kind, KVSYNC_PS_SHM=shm)
        res = job.results(timeout=140)
    assert all(r["mismatched"] == [] for r in res), res
    assert all(r["shm"] is (shm == "1" and shm_supported()) for r in res)
