"""A worker process of the multi-process dist KVStore tests: ``dist_worker.py SCENARIO``.

Prints one JSON line (its result) last; any failed check exits non-zero."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from kvsync import errors, kv, optimizer
from kvsync.kv.dist import DistKVStore
from kvsync.optimizer import SGD
from kvsync.protocol.ps_messages import PSPush
from kvsync.sparse import RowSparseArray

SCENARIOS: dict[str, Callable[[DistKVStore], dict[str, object]]] = {}


def scenario(fn: Callable[[DistKVStore], dict[str, object]]) -> Callable[..., dict[str, object]]:
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def sync(store: DistKVStore) -> dict[str, object]:
    n, r = store.num_workers, store.rank
    store.init([3, 4], [np.zeros((50, 4), np.float32), np.zeros(7, np.float64)])  # 3 is split
    store.init(5, np.zeros(5, np.int64))  # one key type per store (MXNet's rule)
    for step in range(3):
        store.push([3, 4], [np.full((50, 4), r + step, np.float32), np.ones(7)], priority=step)
        store.push(5, [np.full(5, r, np.int64), np.full(5, 1, np.int64)])  # two devices
        w = store.pull(3)
        assert np.array_equal(w, np.full((50, 4), sum(range(n)) + n * step, np.float32)), w
        assert np.array_equal(store.pull(4), np.full(7, float(n)))
        b = np.zeros(5, np.int64)
        store.pull(5, out=b)
        assert np.array_equal(b, np.full(5, sum(range(n)) + n)), b
    store.barrier()
    return {"stats": store.server_stats() if r == 0 else []}


@scenario
def big(store: DistKVStore) -> dict[str, object]:
    """A 12 MB array over the servers: shared memory, or 4 MiB socket parts."""
    n, r = 3_000_000, store.rank
    store.init("big", np.zeros(n, np.float32))
    ramp = np.arange(n, dtype=np.float32)
    out = np.empty(n, np.float32)
    for step in range(3):
        store.push("big", ramp + r + step)
        store.pull("big", out=out)
        want = store.num_workers * ramp + sum(range(store.num_workers)) + store.num_workers * step
        assert np.array_equal(out, want), step
    return {"shm": bool(store._segments_of)}


@scenario
def asynchronous(store: DistKVStore) -> dict[str, object]:
    store.set_optimizer(SGD(learning_rate=1.0))
    store.init("w", np.zeros(4))
    for _ in range(5):
        store.push("w", np.ones(4))
    store.wait()
    store.barrier()
    w = store.pull("w")
    assert np.array_equal(w, np.full(4, -5.0 * store.num_workers)), w
    return {}


#: Shapes of the bucketing scenario (bound 300,000 elements): whole keys that travel through
#: shared memory (1 MiB), a key split over both servers in socket parts, one split into two
#: shared-memory slices, and small keys the sender packs.
BUCKET_SHAPES = [(512, 512), (7,), (1024, 400), (33, 5), (1200, 512), (512, 512), (3, 2, 2)]


def _bucket_grads(rank: int, step: int) -> list[np.ndarray]:
    rng = np.random.default_rng([rank, step])
    return [rng.standard_normal(s).astype(np.float32) for s in BUCKET_SHAPES]


@scenario
def bucketed(store: DistKVStore) -> dict[str, object]:
    """Every update rule (and none) x every compression: a step's keys pushed and pulled in
    one call each (bucketed: one message per server and kind) give the same bits as the same
    keys pushed and pulled one call per key (one message each), and as the same keys pushed
    one call per key in gluon's style (priority -i, held in the per-server buckets until
    the pulls) and pulled one call per key. In dist_async the ranks take turns, so the
    order of the updates is fixed."""
    r, async_ = store.rank, store.type == "dist_async"
    n = len(BUCKET_SHAPES)
    together, alone = list(range(n)), list(range(n, 2 * n))  # same values all along
    apart = list(range(2 * n, 3 * n))
    init = [np.linspace(-1, 1, int(np.prod(s)), dtype=np.float32).reshape(s) for s in BUCKET_SHAPES]
    store.init(together + alone + apart, init * 3)
    mismatched, step = [], 0
    for comp in ("none", "1bit", "2bit"):
        store.set_gradient_compression({"type": comp, "threshold": 0.5})
        for rule in [None, *optimizer.names()]:  # a new rule starts with fresh states
            if rule is not None:
                store.set_optimizer(optimizer.create(rule, learning_rate=0.1, wd=0.01))
            for _ in range(2):
                step += 1
                grads = _bucket_grads(r, step)
                for turn in range(store.num_workers) if async_ else [r]:
                    if turn == r:
                        store.push(together, grads)
                        for k, g in zip(alone, grads, strict=True):
                            store.push(k, g)
                            store.wait()  # nothing else queued: a message of its own
                        for i, (k, g) in enumerate(zip(apart, grads, strict=True)):
                            store.push(k, g, priority=-i)  # held until the pulls
                    if async_:
                        store.barrier()
                got = store.pull(together)
                for k, g in zip(alone, got, strict=True):
                    if not np.array_equal(store.pull(k), g):
                        mismatched.append(f"{comp} {rule} step {step} key {k}")
                for i, (k, g) in enumerate(zip(apart, got, strict=True)):
                    out = np.empty_like(g)
                    store.pull(k, out=out, priority=-i)
                    if not np.array_equal(out, g):
                        mismatched.append(f"{comp} {rule} step {step} key {k} (apart)")
                if async_:  # nobody's next push may land while another rank still pulls
                    store.barrier()
            store.barrier()
    return {"mismatched": mismatched, "shm": bool(store._segments_of)}


@scenario
def features(store: DistKVStore) -> dict[str, object]:
    """Optimizer on the servers, save/load, compression, row-sparse, bad pushes."""
    r = store.rank
    store.set_optimizer(SGD(learning_rate=0.5, momentum=0.5))
    store.init(0, np.ones((40, 2), np.float32))  # split over the servers (bound 20)
    store.push(0, np.ones((40, 2), np.float32))
    w1 = store.pull(0)
    assert np.allclose(w1, 1 - 0.5 * store.num_workers), w1
    fname = os.path.join(tempfile.gettempdir(), f"kvsync-states-{os.environ['MASTER_PORT']}")
    if r == 0:
        store.save_optimizer_states(fname)
    store.barrier()
    store.push(0, np.ones((40, 2), np.float32))
    w2 = store.pull(0)
    store.barrier()
    if r == 0:
        store.load_optimizer_states(fname)
        os.remove(fname)
    store.barrier()
    store.push(0, np.ones((40, 2), np.float32))
    w3 = store.pull(0)
    g = store.num_workers  # summed gradient; momentum restored to after step 1
    assert np.allclose(w3 - w2, (w2 - w1)), (w1, w2, w3)
    # the server refuses a bad push and keeps its state
    try:
        store._links[0].call(
            PSPush(keys=("i0",), values=(np.ones(3),), offsets=(0,), counts=(3,), compressed=False)
        )
        raise AssertionError("bad push accepted")
    except errors.ShapeMismatchError as exc:
        shape_error = str(exc)
    assert np.array_equal(store.pull(0), w3)
    # row-sparse push and pull of requested rows only
    store.init(1, np.zeros((30, 3), np.float32))
    store.push(1, RowSparseArray(np.ones((2, 3), np.float32), [2, 25], (30, 3)))
    out = RowSparseArray.zeros((30, 3), np.float32)
    store.row_sparse_pull(1, out=out, row_ids=np.array([25, 2, 7]))
    assert out.indices.tolist() == [2, 7, 25], out
    assert np.allclose(out.data[[0, 2]], -0.5 * g) and np.allclose(out.data[1], 0), out.data
    # 2-bit compression: the servers decompress
    store.set_gradient_compression({"type": "2bit", "threshold": 0.25})
    store.init(2, np.zeros(64, np.float32))
    store.push(2, np.full(64, 0.3, np.float32))
    c = store.pull(2)
    assert np.allclose(c, -0.5 * 0.25 * g), c
    return {"shape_error": shape_error}


@scenario
def uneven(store: DistKVStore) -> dict[str, object]:
    store.init("k", np.zeros(3))
    if store.rank == 0:
        store.push("k", np.ones(3))
    t0 = time.monotonic()
    try:
        store.pull("k") if store.rank == 0 else store.barrier()
        raise AssertionError("uneven pushes went unnoticed")
    except errors.KVSyncError as exc:
        return {"error": str(exc), "type": type(exc).__name__, "seconds": time.monotonic() - t0}


@scenario
def uneven_across_servers(store: DistKVStore) -> dict[str, object]:
    """Rank 1 skips a push of key b; then each rank waits on a different server: rank 0 for
    b's round 1 (on b's server), rank 1 for a's round 2 (on a's server)."""
    return _uneven_across(store, rows=False)


@scenario
def uneven_across_servers_rows(store: DistKVStore) -> dict[str, object]:
    """As ``uneven_across_servers``, rank 1 waiting in a row_sparse_pull of a."""
    return _uneven_across(store, rows=True)


def _uneven_across(store: DistKVStore, *, rows: bool) -> dict[str, object]:
    a = 0
    b = next(k for k in range(1, 64) if _home(store, k) != _home(store, a))
    store.init([a, b], [np.zeros((2, 3)), np.zeros((2, 3))])
    store.push([a, b], [np.ones((2, 3)), np.ones((2, 3))])
    store.pull([a, b])
    t0 = time.monotonic()
    try:
        store.push(a, np.ones((2, 3)))
        if store.rank == 0:
            store.push(b, np.ones((2, 3)))
        store.pull([a, b])  # rank 0 waits here for b's round 1
        store.push(a, np.ones((2, 3)))
        if rows:  # rank 1 waits here for a's round 2
            out = RowSparseArray.zeros((2, 3), np.float64)
            store.row_sparse_pull(a, out=out, row_ids=np.array([1]))
        else:
            store.pull(a)
        raise AssertionError("uneven pushes went unnoticed")
    except errors.KVSyncError as exc:
        return {"error": str(exc), "type": type(exc).__name__, "seconds": time.monotonic() - t0}


def _home(store: DistKVStore, key: int) -> int:
    from kvsync.kv.sharding import home_server
    from kvsync.protocol.wire_keys import wire_key

    return home_server(wire_key(key), store.num_servers)


@scenario
def worker_dies(store: DistKVStore) -> dict[str, object]:
    store.init(1, np.zeros(8))
    store.barrier()
    if store.rank == store.num_workers - 1:
        os.kill(os.getpid(), signal.SIGKILL)  # dies mid-round, without pushing
    store.push(1, np.ones(8))
    t0 = time.monotonic()
    try:
        store.pull(1)
        raise AssertionError("pull returned although a worker died")
    except errors.StoreConnectionError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - t0}


@scenario
def server_dies(store: DistKVStore) -> dict[str, object]:
    keys = list(range(16))
    store.init(keys, [np.zeros(4)] * 16)
    t0 = time.monotonic()
    try:
        store.barrier()  # the others may see the server die while leaving the barrier
        if store.rank == 0:
            victim = int(os.environ["KVSYNC_TEST_SERVER_PIDS"].split(",")[-1])
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
        for _ in range(1000):
            store.push(keys, [np.ones(4)] * 16)
            store.pull(keys)
        raise AssertionError("no error although a server died")
    except ConnectionError as exc:
        return {"error": str(exc), "seconds": time.monotonic() - t0}


@scenario
def custom(store: DistKVStore) -> dict[str, object]:
    """Optimizers and updaters registered only in the server processes."""
    from kvsync.optimizer import register

    @register
    class TripleSGD(SGD):  # the worker only needs its name and parameters
        pass

    @register
    class WorkerOnlySGD(SGD):
        pass

    try:
        store.set_optimizer(WorkerOnlySGD(learning_rate=0.1))
        raise AssertionError("an optimizer unknown to the servers was accepted")
    except errors.UnknownNameError as exc:
        unknown = str(exc)
    store.set_optimizer(TripleSGD(learning_rate=0.1))
    store.init(0, np.zeros(30, np.float32))  # split over both servers (bound 10)
    store.push(0, np.ones(30, np.float32))
    w = store.pull(0)
    assert np.allclose(w, -0.3 * store.num_workers), w
    store.barrier()
    store.set_server_updater("negate")
    store.push(0, np.ones(30, np.float32))
    w = store.pull(0)
    assert np.array_equal(w, np.full(30, -store.num_workers, np.float32)), w
    try:
        store.set_server_updater("nope")
        raise AssertionError("an unknown updater was accepted")
    except errors.UnknownNameError as exc:
        unknown_updater = str(exc)
    return {"unknown": unknown, "unknown_updater": unknown_updater}


def main() -> int:
    name = sys.argv[1]
    kind = os.environ.get("KVSYNC_TEST_KV_TYPE", "dist_sync")
    store = kv.create(kind)
    assert isinstance(store, DistKVStore)
    result = SCENARIOS[name](store)
    if name not in ("server_dies", "worker_dies"):
        store.close()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
