"""A worker of the multi-host tests: SGD rounds on a big split key and a small key.

``python multihost_job.py KIND OUT_DIR [--until-killed]``: pushes :func:`gradient` for
:data:`ROUNDS` rounds, then writes the final weights, what the servers registered and the
servers' counters to ``OUT_DIR/rank<R>.npz`` / ``.json``. With ``--until-killed`` it keeps
training (up to a minute) so a test can kill it. Its pid goes to ``OUT_DIR/worker<R>.pid``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import kvsync.kv
from kvsync import env
from kvsync.kv.dist_connect import job_store, server_addresses
from kvsync.optimizer import SGD

BIG, SMALL, ROUNDS, LR = 600_000, 12, 4, 0.1  # BIG: 2.4 MB, 1.2 MB per server


def gradient(rank: int, step: int, n: int) -> np.ndarray:
    return ((np.arange(n) % 7) * (rank + 1) + step).astype(np.float32)


def main(kind: str, out: Path, until_killed: bool) -> int:
    kv = kvsync.kv.create(kind)
    rank = kv.rank
    (out / f"worker{rank}.pid").write_text(f"{os.getpid()}\n")
    kv.set_optimizer(SGD(learning_rate=LR))
    w = [np.zeros(BIG, np.float32), np.zeros(SMALL, np.float32)]
    kv.init(["big", "small"], w)
    deadline = time.monotonic() + 60
    step = 0
    while step < ROUNDS or (until_killed and time.monotonic() < deadline):
        kv.push(["big", "small"], [gradient(rank, step, BIG), gradient(rank, step, SMALL)])
        kv.pull(["big", "small"], out=w)
        step += 1
    kv.barrier()
    kv.pull(["big", "small"], out=w)
    e = env.read()
    with job_store(e, 10) as store:
        registered = [f"{s.host}:{s.port}" for s in server_addresses(store, kv.num_servers, 10)]
    stats = kv.server_stats()
    kv.barrier()
    np.savez(out / f"rank{rank}.npz", big=w[0], small=w[1])
    (out / f"rank{rank}.json").write_text(json.dumps({"registered": registered, "stats": stats}))
    kv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), "--until-killed" in sys.argv[3:]))
