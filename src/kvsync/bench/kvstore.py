"""``kvsync bench kvstore``: push, pull and pushpull bandwidth of a KVStore.

For each array size and number of device copies, times ``push`` (sum the copies into the
store), ``pull`` (copy the stored value into every copy) and ``pushpull`` on float32
arrays, and reports GB/s per array (one array's bytes over the time of one call: MXNet's
convention, so 4 copies move 4x that). Also times 2-bit compression (quantise +
dequantise) and numpy's copy bandwidth in the same run, the yardstick for all of it.

:func:`bench_store` works on any KVStore object, so other store types reuse it.

Example:
    >>> from kvsync import kv
    >>> rows = bench_store(kv.create("local"), sizes=[256], copies=[2], repeat=1)
    >>> [(r.op, r.size, r.copies) for r in rows]
    [('push', 256, 2), ('pull', 256, 2), ('pushpull', 256, 2)]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvsync import kv
from kvsync.bench.report import format_table, human_seconds, progress, results_of
from kvsync.kv.base import KVStoreBase
from kvsync.kv.compression import TwoBitCompression

__all__ = [
    "Row",
    "add_arguments",
    "bench_compression",
    "bench_store",
    "copy_bandwidth",
    "parse_size",
    "run",
]

#: MXNet's C++ ``local`` store on a 2-core machine, 4 copies of 64M float32 (GB/s/array).
MXNET_REFERENCE = {"push": 2.4, "pull": 3.5, "pushpull": 1.4}
DEFAULT_SIZES = "1K,1M,16M,64M"
_MIN_SAMPLE_SECONDS = 0.02
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class Row:
    """One measurement: ``seconds`` per call moving arrays of ``size`` float32 elements."""

    op: str
    size: int
    copies: int
    seconds: float
    best: float = 0.0

    @property
    def gbps(self) -> float:
        """GB/s per array (one array's bytes / median seconds per call)."""
        return self.size * 4 / self.seconds / 1e9

    @property
    def best_gbps(self) -> float:
        """GB/s per array at the fastest sample (the least disturbed by other load)."""
        return self.size * 4 / (self.best or self.seconds) / 1e9


def parse_size(text: str) -> int:
    """``"16M"`` -> 16777216 elements (binary K/M/G suffixes).

    Raises:
        ValueError: not a positive count.

    Example:
        >>> parse_size("1K"), parse_size("64M"), parse_size("100")
        (1024, 67108864, 100)
    """
    t = text.strip().upper()
    mult = _SUFFIX.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in _SUFFIX else t
    n = int(digits) * mult if digits.isdigit() else 0
    if n <= 0:
        raise ValueError(f"bad size {text!r}: use a count like 1024, 1K, 16M")
    return n


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, best) seconds per call over ``repeat`` samples of calls lasting ~20 ms."""
    fn()  # warm up: first-touch page faults, buffer allocation
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(_MIN_SAMPLE_SECONDS / once))
    samples = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples), min(samples)


def bench_store(
    store: KVStoreBase, sizes: Sequence[int], copies: Sequence[int], repeat: int = 5
) -> list[Row]:
    """Time push, pull and pushpull on ``store`` for every size and copy count.

    Keys ``"bench/<size>x<copies>"`` are initialised on ``store``; arrays are float32.
    """
    rows: list[Row] = []
    for n in sizes:
        for c in copies:
            key = f"bench/{n}x{c}"
            store.init(key, np.zeros(n, np.float32))
            vals = [np.full(n, 1.0 / (i + 1), np.float32) for i in range(c)]
            outs = [np.zeros(n, np.float32) for _ in range(c)]
            ops: dict[str, Callable[[], Any]] = {
                "push": functools.partial(store.push, key, vals),
                "pull": functools.partial(store.pull, key, out=outs),
                "pushpull": functools.partial(store.pushpull, key, vals, out=outs),
            }
            rows.extend(Row(op, n, c, *_time(fn, repeat)) for op, fn in ops.items())
            del vals, outs, ops
    return rows


def bench_compression(sizes: Sequence[int], repeat: int = 5) -> list[Row]:
    """Time 2-bit quantise (``compress``) and ``decompress`` of float32 arrays."""
    rows: list[Row] = []
    for n in sizes:
        gc = TwoBitCompression(0.5)
        grad = np.random.default_rng(0).normal(0, 0.5, n).astype(np.float32)
        packed = gc.compress("g", grad)
        out = np.empty(n, np.float32)
        t_c = _time(functools.partial(gc.compress, "g", grad), repeat)
        t_d = _time(functools.partial(gc.decompress, packed, n, np.float32, out), repeat)
        rows += [
            Row("2bit quantise", n, 1, *t_c),
            Row("2bit dequantise", n, 1, *t_d),
            Row("2bit both", n, 1, t_c[0] + t_d[0], t_c[1] + t_d[1]),
        ]
    return rows


def copy_bandwidth(size: int, repeat: int = 5) -> float:
    """numpy ``copyto`` bandwidth in GB/s for float32 arrays of ``size`` elements."""
    src = np.ones(size, np.float32)
    dst = np.empty_like(src)
    return src.nbytes / _time(lambda: np.copyto(dst, src), repeat)[0] / 1e9


def _rates(r: Row) -> list[str]:
    return [f"{r.gbps:.2f}", f"{r.best_gbps:.2f}"]


def _table(rows: Sequence[Row]) -> str:
    body = [[r.op, f"{r.size:,}", r.copies, human_seconds(r.seconds), *_rates(r)] for r in rows]
    headers = ["op", "elements", "copies", "median time", "GB/s/array", "best GB/s"]
    return format_table(headers, body)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvsync bench kvstore``."""
    parser.add_argument(
        "--type", default="local", help="KVStore type to measure (local, device, ...)"
    )
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help=f"float32 element counts (default {DEFAULT_SIZES})"
    )
    parser.add_argument("--copies", default="1,4", help="device copies per push (default 1,4)")
    parser.add_argument("--repeat", type=int, default=5, help="samples per measurement")
    parser.add_argument(
        "--no-compression", action="store_true", help="skip the 2-bit compression rows"
    )
    dist = parser.add_argument_group("dist types (kvsync.bench.kvstore_dist)")
    dist.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    dist.add_argument("--servers", type=int, default=1, help="server processes (default 1)")
    dist.add_argument("--small-keys", type=int, default=1000, help="small keys per step")
    dist.add_argument(
        "--vs",
        choices=["gloo"],
        help="also time torch gloo all_reduce (with --model: a DDP-style step)",
    )
    dist.add_argument(
        "--hosts",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: run the job on two hosts made of network namespaces joined by "
        "a veth pair (root), beside gloo all_reduce across the same two",
    )
    dist.add_argument(
        "--model",
        choices=["mlp40", "resnet50"],
        help="time a training step of this model's parameter shapes instead "
        "(kvsync.bench.kvstore_model)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the tables; returns 0."""
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.type.startswith("dist") and args.model:
        from kvsync.bench.kvstore_model import run_model

        return run_model(args)
    if args.type.startswith("dist") and getattr(args, "hosts", 1) > 1:
        from kvsync.bench.kvstore_hosts import run_hosts  # its module imports kvstore_dist

        return run_hosts(args, sizes)
    if args.type.startswith("dist"):
        from kvsync.bench.kvstore_dist import run_dist

        return run_dist(args, sizes)
    copies = [int(c) for c in args.copies.split(",")]
    store = kv.create(args.type)
    print(f"numpy copy bandwidth: {copy_bandwidth(max(sizes), args.repeat):.2f} GB/s")
    print(
        f"KVStore {store.type!r}: float32, GB/s per array (one array's bytes / time of a call;"
        " median and best of the samples)"
    )
    progress(f"kvstore {store.type}: push/pull/pushpull of {len(sizes)} sizes x "
             f"{len(copies)} copy counts")
    rows = bench_store(store, sizes, copies, args.repeat)
    print(_table(rows))
    results = results_of(args)
    results.add(f"KVStore {store.type!r} (seconds per call)", rows, y="seconds",
                label=("op", "size", "copies"))
    ref = ", ".join(f"{k} {v}" for k, v in MXNET_REFERENCE.items())
    print(f"MXNet C++ local, 2 cores, 4 copies of 64M: {ref} GB/s/array")
    if not args.no_compression:
        progress("kvstore: 2-bit compression")
        rows = bench_compression(sizes, args.repeat)
        print()
        print(_table(rows))
        results.add("2-bit compression (seconds per call)", rows, y="seconds",
                    label=("op", "size"))
    close = getattr(store, "close", None)
    if close is not None:
        close()
    return 0
