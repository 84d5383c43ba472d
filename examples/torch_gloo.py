"""torch.distributed (gloo backend) initialised through a kvsync store.

``kvsync.compat.torch.TCPStore`` is a ``torch.distributed.Store``, so it can replace torch's
own store in ``init_process_group``. Run it on two local ranks (torch must be installed):

    kvsync-run --nproc-per-node 2 examples/torch_gloo.py
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from kvsync import env
from kvsync.compat.torch import TCPStore


def main() -> None:
    job = env.read()
    rank, world_size = job.rank or 0, job.world_size or 1

    # The address comes from the environment kvsync-run exported; the launcher hosts it.
    store = TCPStore(timeout=datetime.timedelta(seconds=60))
    dist.init_process_group(
        backend="gloo", store=store, rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        tensor = torch.tensor([float(rank + 1)])
        dist.all_reduce(tensor)  # sum over ranks: 1 + 2 + ... + world_size
        expected = world_size * (world_size + 1) / 2
        assert tensor.item() == expected, (tensor.item(), expected)
        print(f"rank {rank}/{world_size}: all_reduce gave {tensor.item():g}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
