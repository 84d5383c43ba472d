"""kvsync.compat.torch.TCPStore is a torch.distributed.Store: gloo initialises through it."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvsync.testing import StoreAddress, spawn_ranks

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def gloo_all_reduce(rank: int, world_size: int, address: StoreAddress) -> list[float]:
    import torch
    import torch.distributed as dist

    from kvsync.compat.torch import TCPStore

    store = TCPStore(*address, world_size=world_size, timeout=30)
    dist.init_process_group(backend="gloo", store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=30))
    try:
        tensor = torch.tensor([float(rank + 1), 10.0 * rank])
        dist.all_reduce(tensor)
        return [float(x) for x in tensor.tolist()]
    finally:
        dist.destroy_process_group()
        store.close()


def test_the_torch_flavoured_store_is_a_torch_store() -> None:
    dist = pytest.importorskip("torch.distributed")
    from kvsync.compat.torch import TCPStore

    with TCPStore("127.0.0.1", 0, is_master=True, timeout=5) as store:
        assert isinstance(store, dist.Store)
        store.set("k", b"v")
        assert store.get("k") == b"v"


def test_gloo_all_reduce_over_a_kvsync_store_in_two_processes() -> None:
    pytest.importorskip("torch.distributed")
    results = spawn_ranks(gloo_all_reduce, 2, mode="process", timeout=50)
    assert results == [[3.0, 10.0], [3.0, 10.0]]


ENV_INIT_SCRIPT = """
    import datetime, os, sys

    import torch
    import torch.distributed as dist

    import kvsync

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=30))
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    with kvsync.TCPStore(timeout=30) as store:  # kvsync's own client, same launcher store
        store.set(f"sum/{rank}", str(int(tensor.item())))
        store.barrier("done", dist.get_world_size())
        sums = store.multi_get([f"sum/{r}" for r in range(dist.get_world_size())])
    dist.destroy_process_group()
    sys.stdout.write(f"rank {rank}: {[int(s) for s in sums]}\\n")
"""


@pytest.mark.timeout(90)
def test_torch_env_init_and_all_reduce_work_under_kvsync_run(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed")
    script = tmp_path / "env_init.py"
    script.write_text(textwrap.dedent(ENV_INIT_SCRIPT))
    done = subprocess.run([sys.executable, "-m", "kvsync.run", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=80)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(line for line in done.stdout.splitlines() if ": [" in line) == [
        "[worker 0] rank 0: [3, 3]",
        "[worker 1] rank 1: [3, 3]",
    ]
