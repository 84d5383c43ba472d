"""kvsync's store under torch.distributed (skipped cleanly when torch is not installed)."""

from __future__ import annotations

import multiprocessing
import queue

import pytest
from transport_helpers import child_env

from kvsync.compat.torch import TCPStore


def _rank(rank: int, port: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    import datetime

    import torch
    import torch.distributed as dist

    from kvsync.compat.torch import TCPStore, as_torch_store

    with TCPStore("127.0.0.1", port, timeout=30) as store:
        dist.init_process_group(
            "gloo", store=as_torch_store(store), rank=rank, world_size=2,
            timeout=datetime.timedelta(seconds=30),
        )  # fmt: skip
        x = torch.tensor([rank + 1.0])
        dist.all_reduce(x)
        dist.barrier()
        results.put((rank, float(x.item())))
        dist.destroy_process_group()


@pytest.mark.torch
@pytest.mark.slow
def test_torch_process_groups_meet_through_a_kvsync_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("torch.distributed")
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=30) as master:
        procs = [ctx.Process(target=_rank, args=(r, master.port, results)) for r in range(2)]
        for p in procs:
            p.start()
        try:
            got = sorted(results.get(timeout=45) for _ in procs)
        except queue.Empty:
            got = []
        for p in procs:
            p.join(15)
            if p.is_alive():
                p.kill()
                p.join(5)
    assert got == [(0, 3.0), (1, 3.0)]
    assert all(p.exitcode == 0 for p in procs)


@pytest.mark.torch
def test_as_torch_store_forwards_the_whole_store_api() -> None:
    pytest.importorskip("torch.distributed")
    import datetime

    from kvsync.compat.torch import as_torch_store
    from kvsync.store import HashStore

    inner = HashStore(timeout=10)
    t = as_torch_store(inner)
    t.set("a", "1")
    t.set("b", b"2")
    t.multi_set(["c", "d"], ["3", "4"])
    assert t.multi_get(["a", "b", "c", "d"]) == [b"1", b"2", b"3", b"4"]
    t.append("a", "x")
    assert t.get("a") == b"1x" and t.add("n", 5) == 5
    t.queue_push("q", "i1")
    t.queue_push("q", b"i2")
    assert t.queue_len("q") == 2 and t.queue_pop("q") == b"i1" and t.queue_pop("q", False) == b"i2"
    t.barrier("bar", 1, datetime.timedelta(seconds=5))
    assert sorted(t.list_keys()) == sorted(inner.list_keys())
    assert "bar/arrived" in inner.list_keys()  # kvsync's own one-request barrier, not torch's
