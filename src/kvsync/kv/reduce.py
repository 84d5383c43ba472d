"""Fast dense sums and copies for the per-device values of one key.

Strategy: memory bandwidth, not arithmetic, bounds a KVStore on a CPU. Summing four
device copies naively (``out = a + b; out += c; out += d``) reads and writes ``out`` three
times; here the arrays are walked in cache-sized blocks, so each block of ``out`` stays in
cache while every input is added to it (one write of ``out`` in all). Copying one value
to several outputs is blocked the same way (the source is read once). Large arrays are
split between threads: numpy releases the GIL inside ``add``/``copyto``, so two cores
move memory in parallel. No temporaries are allocated.

Example:
    >>> import numpy as np
    >>> out = np.empty(5, np.float32)
    >>> sum_into(out, [np.ones(5, np.float32)] * 3)
    array([3., 3., 3., 3., 3.], dtype=float32)
    >>> outs = [np.zeros(5, np.float32), np.zeros(5, np.float32)]
    >>> copy_to_all(out, outs); print(outs[1])
    [3. 3. 3. 3. 3.]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["copy_to_all", "fusable", "run_split", "sum_into"]

Array = np.ndarray[Any, Any]

#: Bytes per block when summing / copying (fits in L2 with room for the inputs).
SUM_BLOCK_BYTES = 1 << 20
COPY_BLOCK_BYTES = 1 << 18
#: Arrays at least this big are split between threads, in parts of about PART_BYTES.
PARALLEL_MIN_BYTES = 8 << 20
PART_BYTES = 8 << 20

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_workers(), thread_name_prefix="kvsync-reduce")
        return _pool


def _flat(a: Array) -> Array:
    return a.reshape(-1)


def run_split(work: Callable[[int, int], None], n: int, nbytes: int) -> None:
    """Run ``work(lo, hi)`` over ``[0, n)``, split between threads when ``nbytes`` is large.

    Example:
        >>> seen = []
        >>> run_split(lambda lo, hi: seen.append((lo, hi)), 10, 0)
        >>> seen
        [(0, 10)]
    """
    workers = _workers() if nbytes >= PARALLEL_MIN_BYTES else 1
    if workers == 1 or n < 2:
        work(0, n)
        return
    # many small parts taken in turn: a thread whose core is busy elsewhere takes fewer
    parts = int(min(n, max(workers, nbytes // PART_BYTES)))
    bounds = [n * i // parts for i in range(parts + 1)]
    lock = threading.Lock()
    next_part = [0]

    def drain() -> None:
        while True:
            with lock:
                i = next_part[0]
                next_part[0] += 1
            if i >= parts:
                return
            work(bounds[i], bounds[i + 1])

    pool = _executor()
    futures: list[Future[None]] = [pool.submit(drain) for _ in range(workers - 1)]
    try:
        drain()
    finally:
        for f in futures:
            f.result()


def sum_into(out: Array, values: Sequence[Array], copies: Sequence[Array] = ()) -> Array:
    """Write the elementwise sum of ``values`` into ``out``, copy it to ``copies``; return ``out``.

    ``out`` may be one of ``values``, and ``copies`` may be some of ``values`` (each block is
    read before it is overwritten). Every array must have ``out``'s shape; all must be
    C-contiguous for the blocked path (others fall back to plain ``np.add``). With
    ``copies``, each summed block is copied while it is still in cache: a push and a pull
    in one pass over memory.

    Example:
        >>> import numpy as np
        >>> a = np.arange(3.0)
        >>> sum_into(a, [a, a])
        array([0., 2., 4.])
        >>> c = np.zeros(3)
        >>> _ = sum_into(np.empty(3), [a, a], copies=[c]); c
        array([0., 4., 8.])
    """
    alias = [v for v in values if v is out]
    if alias:  # out must be the first addend, or a later block would read what it overwrote
        values = [out, *(v for v in values if v is not out), *alias[1:]]
    targets = [c for c in copies if c is not out]
    arrays = [out, *values, *targets]
    if not all(a.flags.c_contiguous for a in arrays) or out.nbytes < 2 * SUM_BLOCK_BYTES:
        if len(values) == 1:
            if values[0] is not out:
                np.copyto(out, values[0])
        else:
            np.add(values[0], values[1], out=out)
            for v in values[2:]:
                np.add(out, v, out=out)
        for c in targets:
            np.copyto(c, out)
        return out
    o = _flat(out)
    flats = [_flat(v) for v in values]
    t_flats = [_flat(c) for c in targets]
    first_is_out = values[0] is out
    block = max(1, (COPY_BLOCK_BYTES if targets else SUM_BLOCK_BYTES) // out.itemsize)

    def work(lo: int, hi: int) -> None:
        for s in range(lo, hi, block):
            e = min(s + block, hi)
            ob = o[s:e]
            if len(flats) == 1:
                if not first_is_out:
                    np.copyto(ob, flats[0][s:e])
            else:
                np.add(flats[0][s:e], flats[1][s:e], out=ob)
                for f in flats[2:]:
                    np.add(ob, f[s:e], out=ob)
            for t in t_flats:
                np.copyto(t[s:e], ob)

    run_split(work, o.size, out.nbytes * (len(values) + len(targets)))
    return out


def _span(a: Array) -> tuple[int, int] | None:
    if not a.flags.c_contiguous:
        return None
    start = int(a.__array_interface__["data"][0])
    return start, start + a.nbytes


def fusable(values: dict[Any, list[Array]], outs: dict[Any, list[Array]]) -> bool:
    """Whether a push-then-pull may run key by key, each key's sum copied out at once.

    True when every array involved is contiguous, any two are either the same memory or
    disjoint, and no output of one key is the memory of another key's value (which the
    pull must only overwrite after every key has been pushed).

    Example:
        >>> import numpy as np
        >>> a, b = np.zeros(4), np.zeros(4)
        >>> fusable({"x": [a], "y": [b]}, {"x": [a], "y": [b]})
        True
        >>> fusable({"x": [a], "y": [b]}, {"x": [b], "y": [a]})
        False
        >>> fusable({"x": [a]}, {"x": [a[1:]]})
        False
    """
    spans: dict[tuple[int, int], list[tuple[Any, bool]]] = {}
    for is_out, table in ((False, values), (True, outs)):
        for key, arrays in table.items():
            for a in arrays:
                sp = _span(a)
                if sp is None:
                    return False
                if sp[1] > sp[0]:
                    spans.setdefault(sp, []).append((key, is_out))
    reach = -1
    for lo, hi in sorted(spans):
        if lo < reach:  # partly overlaps an earlier, different span
            return False
        reach = max(reach, hi)
    for users in spans.values():
        out_keys = {k for k, is_out in users if is_out}
        value_keys = {k for k, is_out in users if not is_out}
        if out_keys and value_keys and (len(value_keys) > 1 or out_keys != value_keys):
            return False
    return True


def copy_to_all(src: Array, outs: Sequence[Array]) -> None:
    """Copy ``src`` into every array of ``outs`` (same shape; dtype cast as ``np.copyto``).

    Example:
        >>> import numpy as np
        >>> o = [np.zeros(2), np.zeros(2)]
        >>> copy_to_all(np.ones(2), o); o[0]
        array([1., 1.])
    """
    targets = [o for o in outs if o is not src]
    if not targets:
        return
    contiguous = src.flags.c_contiguous and all(o.flags.c_contiguous for o in targets)
    total = src.nbytes * len(targets)
    if not contiguous or total < PARALLEL_MIN_BYTES:
        for o in targets:
            np.copyto(o, src)
        return
    s_flat = _flat(src)
    flats = [_flat(o) for o in targets]
    block = max(1, COPY_BLOCK_BYTES // src.itemsize)

    def work(lo: int, hi: int) -> None:
        for s in range(lo, hi, block):
            e = min(s + block, hi)
            sb = s_flat[s:e]
            for f in flats:
                np.copyto(f[s:e], sb)

    run_split(work, s_flat.size, total)
