"""``kvsync bench kvstore --type dist_sync --model mlp40|resnet50 [--vs gloo]``.

A training step of a real model's parameter shapes, not one array: every worker pushes
every gradient and pulls every weight (one ``push`` and one ``pull`` call over all keys;
rows "a call per key": one ``push`` per key, then one ``pull`` per key, with priority ``-i``
as gluon's ``Trainer`` calls them), with the update on the servers (rows "SGD on the
server") or none ("no optimizer"). Beside it, the same bytes as one key, so the per-key
cost is visible. With ``--vs gloo`` the same
tensors go through a DDP-style step: the gradients copied into 25 MB buckets (in reverse
order, as DDP fills them during backward), gloo ``all_reduce`` of each bucket (all in
flight at once), the averaged gradients copied back, and ``torch.optim.SGD`` on each worker.

A step's time is the slowest worker's median over ``--repeat`` steps.

Example:
    >>> shapes = model_shapes("resnet50")
    >>> len(shapes), sum(int(np.prod(s)) for s in shapes)
    (161, 25557032)
    >>> len(model_shapes("mlp40")), model_shapes("mlp40")[:2]
    (40, [(512, 512), (512,)])
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kvsync import env
from kvsync.bench.kvstore_dist import free_port, run_children, run_job
from kvsync.bench.report import format_table, human_bytes, human_seconds, results_of

__all__ = ["DDP_BUCKET_BYTES", "MODELS", "model_shapes", "run_model", "worker_main"]

#: DDP's default ``bucket_cap_mb``.
DDP_BUCKET_BYTES = 25 << 20
MODELS = ("mlp40", "resnet50")
_MODULE = "kvsync.bench.kvstore_model"
_LR = 0.01


def _resnet50() -> list[tuple[int, ...]]:
    """torchvision's ``resnet50().parameters()`` shapes, in its order: the stem, 16
    bottlenecks (1x1, 3x3, 1x1 convolutions, each with a batch norm's weight and bias; the
    first block of each stage with a 1x1 downsample and its batch norm), the classifier."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            cin = inplanes if b == 0 else width * 4
            shapes += [
                (width, cin, 1, 1),
                (width,),
                (width,),
                (width, width, 3, 3),
                (width,),
                (width,),
                (width * 4, width, 1, 1),
                (width * 4,),
                (width * 4,),
            ]
            if b == 0:
                shapes += [(width * 4, inplanes, 1, 1), (width * 4,), (width * 4,)]
        inplanes = width * 4
    return [*shapes, (1000, 2048), (1000,)]


def model_shapes(model: str) -> list[tuple[int, ...]]:
    """The float32 parameter shapes of ``model`` (one of :data:`MODELS`).

    Raises:
        ValueError: an unknown model name.
    """
    if model == "mlp40":
        return [(512, 512), (512,)] * 20
    if model == "resnet50":
        return _resnet50()
    raise ValueError(f"unknown model {model!r}; known: {list(MODELS)}")


def _steps(step: Callable[[], object], barrier: Callable[[], object], repeat: int) -> list[float]:
    step()  # warm-up: first-touch pages, segments, optimizer states
    barrier()
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _kv_worker(kind: str, model: str, repeat: int) -> dict[str, list[float]]:
    from kvsync import kv as kvmod
    from kvsync.optimizer import SGD

    shapes = model_shapes(model)
    total = sum(int(np.prod(s)) for s in shapes)
    kv: Any = kvmod.create(kind)
    rng = np.random.default_rng(kv.rank)
    layouts: dict[str, tuple[list[Any], list[tuple[int, ...]]]] = {
        "keys": (list(range(len(shapes))), shapes),
        "one key": ([len(shapes)], [(total,)]),
    }
    arrays = {}
    for name, (keys, shp) in layouts.items():
        kv.init(keys, [np.zeros(s, np.float32) for s in shp])
        arrays[name] = (
            keys,
            [rng.standard_normal(s, np.float32) for s in shp],
            [np.empty(s, np.float32) for s in shp],
        )

    def per_key(k: Any, g: Any, w: Any) -> None:
        for i, (key, grad) in enumerate(zip(k, g, strict=True)):
            kv.push(key, grad, priority=-i)
        for i, (key, weight) in enumerate(zip(k, w, strict=True)):
            kv.pull(key, out=weight, priority=-i)

    out: dict[str, list[float]] = {}
    for opt in ("no optimizer", "SGD on the server"):
        if opt != "no optimizer":
            kv.set_optimizer(SGD(learning_rate=_LR))
        for name, (keys, grads, weights) in arrays.items():

            def step(k: Any = keys, g: Any = grads, w: Any = weights) -> None:
                kv.push(k, g)
                kv.pull(k, out=w)

            out[f"{name}, {opt}"] = _steps(step, kv.barrier, repeat)
            kv.barrier()
        out[f"keys, a call per key, {opt}"] = _steps(
            functools.partial(per_key, *arrays["keys"]), kv.barrier, repeat
        )
        kv.barrier()
    kv.close()
    return out


def _ddp_worker(model: str, repeat: int) -> dict[str, list[float]]:
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)  # a core per worker, as numpy's; spinning pools stall
    tdist.init_process_group("gloo", init_method="env://")
    world = tdist.get_world_size()
    gen = torch.Generator().manual_seed(tdist.get_rank())
    params = [torch.zeros(s, dtype=torch.float32, requires_grad=True) for s in model_shapes(model)]
    grads = [torch.randn(s, generator=gen) for s in model_shapes(model)]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt = torch.optim.SGD(params, lr=_LR)
    buckets: list[list[torch.Tensor]] = [[]]
    size = 0
    for g in reversed(grads):  # DDP fills buckets in reverse parameter order
        if buckets[-1] and size + g.nbytes > DDP_BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += g.nbytes
    flats = [torch.empty(sum(g.numel() for g in b)) for b in buckets]

    def step() -> None:
        works = []
        for flat, bucket in zip(flats, buckets, strict=True):
            torch.cat([g.reshape(-1) for g in bucket], out=flat)
            works.append(tdist.all_reduce(flat, async_op=True))
        for work, flat, bucket in zip(works, flats, buckets, strict=True):
            work.wait()
            flat.div_(world)
            at = 0
            for g in bucket:
                g.copy_(flat[at : at + g.numel()].view_as(g))
                at += g.numel()
        opt.step()

    out = {
        f"DDP-style step ({len(buckets)} buckets of <= 25 MB)": _steps(step, tdist.barrier, repeat)
    }
    tdist.destroy_process_group()
    return out


def worker_main(argv: list[str]) -> int:
    """Entry of the child processes (``python -m kvsync.bench.kvstore_model ROLE MODEL N``)."""
    role, model, repeat = argv[0], argv[1], int(argv[2])
    result = _ddp_worker(model, repeat) if role == "gloo" else _kv_worker(role, model, repeat)
    print(json.dumps(result), flush=True)
    return 0


def _ddp(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        print("--vs gloo: torch is not importable; the DDP-style row is skipped")
        return None
    common = {
        env.MASTER_ADDR: "127.0.0.1",
        env.MASTER_PORT: str(free_port()),
        env.WORLD_SIZE: str(args.workers),
    }
    cmd = [sys.executable, "-m", _MODULE, "gloo", args.model, str(args.repeat)]
    return run_children(
        [(cmd, env.child_environment({**common, env.RANK: str(r)})) for r in range(args.workers)],
        600,
    )


def _step_time(results: list[dict[str, Any]], row: str) -> float:
    """A step ends when the slowest worker is done: max over workers of their median."""
    return float(max(statistics.median(r[row]) for r in results))


@dataclasses.dataclass(frozen=True)
class StepRow:
    """One row of the model-step table: a way to run a step, its time (the slowest
    worker's median), GB/s of the model's bytes, and the time over the DDP-style step's
    (``None`` without ``--vs gloo``)."""

    step: str
    seconds: float
    gb_per_s: float
    x_ddp: float | None


def run_model(args: argparse.Namespace) -> int:
    """Run the model step benchmark and print its table; returns 0."""
    if getattr(args, "hosts", 1) != 1:
        print("--model runs on one host; --hosts 2 is for the array rows")
        return 1
    shapes = model_shapes(args.model)
    nbytes = 4 * sum(int(np.prod(s)) for s in shapes)
    cmd = [sys.executable, "-m", _MODULE, args.type, args.model, str(args.repeat)]
    kv = run_job(args, cmd)
    ddp = _ddp(args) if args.vs == "gloo" else None
    times = {row: _step_time(kv, row) for row in kv[0]}
    if ddp is not None:
        times.update({row: _step_time(ddp, row) for row in ddp[0]})
    ref = next((t for row, t in times.items() if row.startswith("DDP")), None)
    print(
        f"KVStore {args.type!r}, model {args.model}: {len(shapes)} float32 arrays, "
        f"{human_bytes(nbytes)}; {args.workers} workers, {args.servers} servers; one step = "
        "push every gradient + pull every weight (median of the slowest worker)"
    )
    headers = ["step", "time", "GB/s", *(["x DDP-style"] if ref is not None else [])]
    rows = [
        [
            row,
            human_seconds(t),
            f"{nbytes / t / 1e9:.2f}",
            *([f"{t / ref:.2f}"] if ref is not None else []),
        ]
        for row, t in times.items()
    ]
    print(format_table(headers, rows))
    results_of(args).add(
        f"KVStore {args.type!r}, model {args.model}: step (seconds)",
        [
            StepRow(row, t, nbytes / t / 1e9, None if ref is None else t / ref)
            for row, t in times.items()
        ],
        y="seconds",
        label=("step",),
    )
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
