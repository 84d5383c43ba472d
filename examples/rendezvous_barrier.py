"""Rendezvous and barriers on kvsync's TCPStore, the way a training script starts up.

Run it on four local ranks (the launcher hosts the store and sets RANK, WORLD_SIZE, ...):

    kvsync-run --nproc-per-node 4 examples/rendezvous_barrier.py

or alone, where ``TCPStore()`` hosts an embedded single-process store:

    python examples/rendezvous_barrier.py
"""

from __future__ import annotations

import json
import os
import socket

from kvsync import env
from kvsync.store.tcp import TCPStore


def main() -> None:
    job = env.read()  # the variables kvsync-run (or torchrun) exported
    rank, world_size = job.rank or 0, job.world_size or 1

    # With no arguments the store's address, this rank and the world size come from the
    # environment; every rank is a client of the store the launcher hosts.
    with TCPStore(timeout=30) as store:
        # 1. Rendezvous: every rank publishes how to reach it, then reads everyone's.
        store.set(f"peer/{rank}", f"{socket.gethostname()}:{os.getpid()}")
        arrival = store.add("arrivals", 1)  # an atomic counter: the order ranks arrived in
        peer_keys = [f"peer/{r}" for r in range(world_size)]
        store.wait(peer_keys)  # blocks (on the server, not by polling) until all are set
        peers = [p.decode() for p in store.multi_get(peer_keys)]

        # 2. One rank decides, the others wait for its decision.
        if rank == 0:
            store.set("config", json.dumps({"learning_rate": 0.1, "seed": 1234}))
        store.wait(["config"])
        config = json.loads(store.get("config"))

        # 3. A barrier: nobody leaves before everyone has arrived (reusable by key).
        store.barrier("setup-done", world_size)
        print(f"rank {rank}/{world_size}: arrived #{arrival}, {len(peers)} peers, "
              f"config {config}")

        # 4. A second barrier before leaving, so the store is not torn down under a rank.
        store.barrier("finished", world_size)


if __name__ == "__main__":
    main()
