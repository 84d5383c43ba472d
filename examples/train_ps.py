"""Data-parallel training with kvsync's parameter servers (``dist_sync``), checked exactly.

A softmax-regression model in numpy learns synthetic data. Every step each of the W
workers computes the gradient of its share of a global batch, pushes it, and pulls the
weights the servers updated with the optimizer (SGD) once every worker's gradient of the
round arrived. Rank 0 prints the loss per epoch and, at the end, replays the same training
in one process with large-batch SGD (the same optimizer code on the whole batch): the
weights agree to 1e-6.

Run it with 4 workers and 2 parameter servers:

    kvsync-run --nproc-per-node 4 --num-servers 2 examples/train_ps.py

or just ``python examples/train_ps.py``, which starts exactly that through the launcher.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np

import kvsync.kv
from kvsync import env
from kvsync.kv.dist import DistKVStore
from kvsync.optimizer import SGD

SAMPLES, FEATURES, CLASSES = 4096, 64, 10


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic classification data: a random linear teacher plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, FEATURES))
    teacher = rng.normal(size=(FEATURES, CLASSES))
    y = np.argmax(x @ teacher + rng.normal(scale=0.5, size=(SAMPLES, CLASSES)), axis=1)
    return x, y


def gradients(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray,
              scale: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Softmax cross-entropy: ``scale`` times the summed gradients, and the summed loss."""
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = -float(np.log(p[np.arange(len(y)), y]).sum())
    p[np.arange(len(y)), y] -= 1.0
    return scale * (x.T @ p), scale * p.sum(axis=0), loss


def loss_of(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return gradients(w, b, x, y, 1.0)[2] / len(y)


def reference(x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> list[np.ndarray]:
    """The same training in one process: large-batch SGD with a local store."""
    kv = kvsync.kv.create("local")
    kv.set_optimizer(SGD(learning_rate=args.lr))
    kv.init(["w", "b"], [np.zeros((FEATURES, CLASSES)), np.zeros(CLASSES)])
    w, b = np.zeros((FEATURES, CLASSES)), np.zeros(CLASSES)
    for _ in range(args.epochs):
        for start in range(0, SAMPLES, args.batch):
            xb, yb = x[start : start + args.batch], y[start : start + args.batch]
            gw, gb, _ = gradients(w, b, xb, yb, 1.0 / len(yb))
            kv.push(["w", "b"], [gw, gb])
            kv.pull(["w", "b"], out=[w, b])
    return [w, b]


def train(args: argparse.Namespace) -> int:
    x, y = make_data()
    kv = kvsync.kv.create("dist_sync")
    assert isinstance(kv, DistKVStore)
    rank, workers = kv.rank, kv.num_workers
    kv.set_optimizer(SGD(learning_rate=args.lr))
    w, b = np.zeros((FEATURES, CLASSES)), np.zeros(CLASSES)
    kv.init(["w", "b"], [w, b])  # rank 0's values win
    for epoch in range(args.epochs):
        for start in range(0, SAMPLES, args.batch):
            batch = slice(start, min(start + args.batch, SAMPLES))
            n = batch.stop - batch.start
            mine = slice(batch.start + rank * n // workers, batch.start + (rank + 1) * n // workers)
            gw, gb, _ = gradients(w, b, x[mine], y[mine], 1.0 / n)  # summed over workers
            kv.push(["w", "b"], [gw, gb], priority=0)
            kv.pull(["w", "b"], out=[w, b])
        if rank == 0:
            print(f"epoch {epoch}: loss {loss_of(w, b, x, y):.4f}", flush=True)
    kv.barrier()
    if rank == 0:
        stats = kv.server_stats()
        print("bytes pushed to each server:", [s["bytes_in"] for s in stats], flush=True)
        w_ref, b_ref = reference(x, y, args)
        diff = max(float(np.abs(w - w_ref).max()), float(np.abs(b - b_ref).max()))
        print(f"max |w - w_single_process| = {diff:.3g}", flush=True)
        if diff > 1e-6:
            print("MISMATCH with single-process large-batch SGD", flush=True)
            return 1
        print("OK: equal to single-process large-batch SGD to 1e-6", flush=True)
    kv.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="global batch size")
    parser.add_argument("--lr", type=float, default=0.5)
    args = parser.parse_args()
    if env.read().rank is None:  # not under a launcher: start 4 workers and 2 servers
        cmd = [sys.executable, "-m", "kvsync.run", "--nproc-per-node", "4", "--num-servers",
               "2", __file__, *sys.argv[1:]]
        return subprocess.call(cmd)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
