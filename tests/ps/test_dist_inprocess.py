"""Specification of the dist KVStore types against in-process servers (real PS logic and
codec, no sockets): fast checks of the semantics the multi-process tests repeat for real."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from dist_fakes import FakeLink, FakeServer, SilentLink, run_workers

from kvsync import defaults, errors
from kvsync.kv.dist import DistKVStore
from kvsync.kv.shm import shm_supported
from kvsync.optimizer import SGD
from kvsync.protocol.ps_messages import PSPullRows
from kvsync.sparse import RowSparseArray


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Iterator[list[FakeServer]]:
    n = getattr(request, "param", 2)
    ss = [FakeServer(i, stall_seconds=1.0) for i in range(n)]
    yield ss
    for s in ss:
        s.stop()


@pytest.mark.parametrize("servers", [1, 2], indirect=True)
@pytest.mark.parametrize("key", [3, "w"])
def test_sync_pull_returns_the_sum_of_every_workers_push(
    servers: list[FakeServer], key: int | str
) -> None:
    def step(kv: DistKVStore) -> list[np.ndarray]:
        kv.init(key, np.zeros((40, 3), np.float32))  # 120 > bound 50: split over servers
        got = []
        for r in range(3):
            kv.push(key, np.full((40, 3), kv.rank + 1 + 10 * r, np.float32))
            got.append(kv.pull(key))
        return got

    res = run_workers(3, servers, step, bound=50)
    for got in res:
        for r, a in enumerate(got):
            np.testing.assert_array_equal(a, np.full((40, 3), 6 + 30 * r, np.float32))


@pytest.mark.parametrize("kind", ["dist_sync", "dist_device_sync", "dist_sync_device"])
def test_multi_device_values_are_summed_and_outs_all_filled(
    servers: list[FakeServer], kind: str
) -> None:
    def step(kv: DistKVStore) -> np.ndarray:
        kv.init(["a", "b"], [np.zeros(4), np.zeros(4)])
        kv.push(["a", "b"], [[np.ones(4), np.ones(4)], np.ones(4)])
        outs = [np.zeros(4), np.zeros(4)]
        kv.pull("a", out=outs)
        assert np.array_equal(outs[0], outs[1])
        return outs[0] + kv.pull("b")

    for a in run_workers(2, servers, step, kind=kind):
        np.testing.assert_array_equal(a, np.full(4, 4 + 2))


def test_optimizer_runs_on_the_servers(servers: list[FakeServer]) -> None:
    def step(kv: DistKVStore) -> np.ndarray:
        kv.set_optimizer(SGD(learning_rate=0.1))
        kv.init(0, np.ones(100, np.float32))  # split over both servers
        kv.push(0, np.full(100, kv.rank + 1.0, np.float32))
        return kv.pull(0)

    for w in run_workers(2, servers, step, bound=10):
        np.testing.assert_allclose(w, np.full(100, 1 - 0.1 * 3, np.float32), rtol=1e-6)


@pytest.mark.parametrize("kind", ["dist_async", "dist_async_device"])
def test_async_applies_each_push(servers: list[FakeServer], kind: str) -> None:
    def step(kv: DistKVStore) -> np.ndarray:
        kv.init(1, np.zeros(3))
        kv.push(1, np.ones(3))
        kv.barrier()
        return kv.pull(1)

    for w in run_workers(2, servers, step, kind=kind):
        np.testing.assert_array_equal(w, np.ones(3))  # no optimizer: the last push is stored


def test_priority_order_and_batching_keep_each_keys_program_order(
    servers: list[FakeServer],
) -> None:
    keys = list(range(300))

    def step(kv: DistKVStore) -> list[np.ndarray]:
        kv.init(keys, [np.zeros(2) for _ in keys])
        for k in keys:
            kv.push(k, np.full(2, float(k)), priority=-k)
        return kv.pull(keys)

    for got in run_workers(2, servers, step):
        for k, a in zip(keys, got, strict=True):
            np.testing.assert_array_equal(a, np.full(2, 2.0 * k))


def test_row_sparse_push_and_pull_of_requested_rows(servers: list[FakeServer]) -> None:
    def step(kv: DistKVStore) -> RowSparseArray:
        kv.init("emb", np.zeros((10, 2)))
        kv.push("emb", RowSparseArray(np.ones((2, 2)), [1, 8], (10, 2)))
        out = RowSparseArray.zeros((10, 2), np.float64)
        kv.row_sparse_pull("emb", out=out, row_ids=np.array([8, 1, 8, 5]))
        return out

    for out in run_workers(2, servers, step, bound=4):
        assert out.indices.tolist() == [1, 5, 8]
        np.testing.assert_array_equal(out.data, [[2, 2], [0, 0], [2, 2]])


def test_compressed_pushes_are_decompressed_on_the_server(servers: list[FakeServer]) -> None:
    def step(kv: DistKVStore) -> np.ndarray:
        kv.set_gradient_compression({"type": "2bit", "threshold": 0.5})
        kv.init(2, np.zeros(64, np.float32))
        kv.push(2, np.full(64, 0.7, np.float32))
        return kv.pull(2)

    for w in run_workers(2, servers, step, bound=16):
        np.testing.assert_array_equal(w, np.full(64, 1.0, np.float32))  # 2 * threshold


def test_save_and_load_optimizer_states(servers: list[FakeServer], tmp_path) -> None:  # type: ignore[no-untyped-def]
    fname = str(tmp_path / "states.npz")

    def step(kv: DistKVStore) -> np.ndarray:
        kv.set_optimizer(SGD(learning_rate=0.1, momentum=0.9))
        kv.init(0, np.zeros(20, np.float32))
        kv.push(0, np.ones(20, np.float32))
        kv.pull(0)
        if kv.rank == 0:
            kv.save_optimizer_states(fname)
        kv.barrier()
        kv.push(0, np.ones(20, np.float32))
        kv.pull(0)
        if kv.rank == 0:
            kv.load_optimizer_states(fname)  # momentum back to after step 1
        kv.barrier()
        kv.push(0, np.ones(20, np.float32))
        return kv.pull(0)

    w = run_workers(2, servers, step, bound=10)[0]
    # step1: m=-0.2, w=-0.2; step2: m=-0.38, w=-0.58; reload m=-0.2; step3: m=-0.38
    np.testing.assert_allclose(w, np.full(20, -0.96, np.float32), rtol=1e-5)


def test_bad_push_raises_before_anything_is_sent(servers: list[FakeServer]) -> None:
    def step(kv: DistKVStore) -> None:
        kv.init(1, np.zeros(3))
        with pytest.raises(errors.ShapeMismatchError, match="key 1"):
            kv.push(1, np.zeros(4))
        with pytest.raises(errors.UninitializedKeyError, match="9"):
            kv.push(9, np.zeros(3))
        with pytest.raises(errors.InvalidArgumentError, match="set_optimizer"):
            kv.set_updater(lambda k, g, w: None)

    run_workers(1, servers, step)


def test_pushing_a_key_twice_in_a_sync_round_is_reported_by_the_next_call(
    servers: list[FakeServer],
) -> None:
    def step(kv: DistKVStore) -> None:
        kv.init(1, np.zeros(3))
        if kv.rank == 0:
            kv.push(1, np.ones(3))
            kv.push(1, np.ones(3))
            with pytest.raises(errors.InvalidArgumentError, match="twice"):
                kv.wait()
        kv.barrier()
        if kv.rank == 1:
            kv.push(1, np.ones(3))
        np.testing.assert_array_equal(kv.pull(1), np.full(3, 2.0))

    run_workers(2, servers, step)


def test_uneven_pushes_fail_with_a_clear_error_instead_of_hanging(
    servers: list[FakeServer],
) -> None:
    def step(kv: DistKVStore) -> str:
        kv.init("k", np.zeros(3))
        if kv.rank == 0:
            kv.push("k", np.ones(3))
        with pytest.raises(errors.KVSyncError) as info:
            kv.pull("k") if kv.rank == 0 else kv.barrier()
        return str(info.value)

    for text in run_workers(2, [servers[0]], step, timeout=20):
        assert "uneven" in text


def test_a_worker_leaving_mid_round_fails_the_others_naming_it(
    servers: list[FakeServer],
) -> None:
    def step(kv: DistKVStore) -> str | None:
        kv.init(5, np.zeros(3))
        if kv.rank == 2:
            return None  # leaves (closes its links) without pushing
        kv.push(5, np.ones(3))
        with pytest.raises(errors.StoreConnectionError) as info:
            kv.pull(5)
        return str(info.value)

    for text in run_workers(3, servers, step)[:2]:
        assert "ranks [2] disconnected" in text


def test_a_dead_server_gives_connection_errors(servers: list[FakeServer]) -> None:
    def step(kv: DistKVStore) -> None:
        kv.init(list(range(20)), [np.zeros(2)] * 20)
        servers[1].kill()
        with pytest.raises(errors.StoreConnectionError, match="server 1"):
            kv.pull(list(range(20)))

    run_workers(1, servers, step)


@pytest.mark.parametrize("shm", [True, False])
@pytest.mark.parametrize("kind", ["dist_sync", "dist_async"])
def test_big_slices_through_shared_memory_or_socket_parts(
    servers: list[FakeServer], shm: bool, kind: str
) -> None:
    n = 700_000  # 2.8 MB, split over 2 servers: 1.4 MB slices (shared memory when shm)

    def step(kv: DistKVStore) -> list[np.ndarray]:
        kv.set_optimizer(SGD(learning_rate=1.0))
        kv.init("big", np.zeros(n, np.float32))
        got = []
        for r in range(2):
            kv.push("big", np.arange(n, dtype=np.float32) + r)
            kv.wait()
            kv.barrier()
            got.append(kv.pull("big"))
            kv.barrier()  # async: nobody pushes the next round before everyone pulled
        assert bool(kv._segments_of) is (shm and shm_supported())  # pushed through shm
        return got

    for got in run_workers(2, servers, step, kind=kind, bound=1000, shm=shm):
        ramp = np.arange(n, dtype=np.float32)
        np.testing.assert_array_equal(got[0], -2 * ramp)
        np.testing.assert_array_equal(got[1], -4 * ramp - 2)
    if shm_supported():  # big slices live in shared memory on the servers
        assert all(s.logic._keys["sbig"].value_path for s in servers)


@pytest.mark.skipif(not shm_supported(), reason="no /dev/shm and /proc/<pid>/fd here")
def test_only_servers_flagged_as_on_this_host_get_slices_through_shared_memory(
    servers: list[FakeServer],
) -> None:
    n = 700_000  # 1.4 MB slices: big enough for shared memory on both servers

    def step(kv: DistKVStore) -> np.ndarray:
        kv.set_optimizer(SGD(learning_rate=1.0))
        kv.init("big", np.zeros(n, np.float32))
        kv.push("big", np.arange(n, dtype=np.float32))
        return kv.pull("big")

    [got] = run_workers(1, servers, step, bound=1000, shm=[True, False])
    np.testing.assert_array_equal(got, -np.arange(n, dtype=np.float32))
    assert [s.logic.stats()["shm_pushes"] for s in servers] == [1, 0]


def test_one_shm_flag_per_server_is_required(servers: list[FakeServer]) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="1 shm flags for 2 servers"):
        DistKVStore(
            "dist_sync", rank=0, num_workers=1, links=[FakeLink(s) for s in servers], shm=[True]
        )


def test_row_sparse_pull_from_a_stuck_server_fails_after_timeout_plus_grace(
    servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One deadline for the whole call, PSWaiting notice included (and the same grace as
    # the link's own wait, so neither outlasts the other).
    monkeypatch.setattr(defaults, "PS_REPLY_GRACE_SECONDS", 0.5)
    kv = DistKVStore("dist_sync", rank=0, num_workers=1, timeout=1.0,
                     links=[SilentLink(s, (PSPullRows,)) for s in servers])  # fmt: skip
    try:
        kv.init("emb", np.zeros((4, 2)))  # small: on one server, so the other is told
        out = RowSparseArray.zeros((4, 2), np.float64)
        start = time.monotonic()
        # (the link's own wait, timeout + grace as well, may be the one that gives up)
        with pytest.raises(errors.StoreTimeoutError, match=r"(unanswered after|within) 1\.5 s"):
            kv.row_sparse_pull("emb", out=out, row_ids=np.array([1]))
        elapsed = time.monotonic() - start
    finally:
        kv.close()
    assert 1.4 <= elapsed < 2.5  # timeout + grace: 1.5 s
