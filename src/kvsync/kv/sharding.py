"""Which parameter server holds which part of each key.

A key whose array has at most ``bound`` elements lives whole on one server, chosen by a
stable hash of its wire key (the same in every process, unlike Python's ``hash``). A
bigger array is cut into contiguous blocks of rows (axis 0) over all servers, so both the
bytes on the wire and the update work of big arrays scale with the number of servers
(MXNet's ``MXNET_KVSTORE_BIGARRAY_BOUND`` rule). A block of rows of a C-contiguous array is
a contiguous view, so slicing and reassembling copy nothing; each server holds at most one
block of a key, and servers get no block when an array has fewer rows than servers.

Example:
    >>> p = plan_key(7, (10, 3), "float32", num_servers=3, bound=20)
    >>> [(s.lo, s.hi) for s in p.slices], sorted(s.server for s in p.slices)
    ([(0, 3), (3, 6), (6, 10)], [0, 1, 2])
    >>> len(plan_key("w", (4,), "float32", num_servers=3, bound=20).slices)
    1
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvsync import defaults
from kvsync.errors import InvalidArgumentError
from kvsync.protocol.wire_keys import Key, wire_key

__all__ = ["KeyPlan", "Slice", "chunks", "home_server", "plan_key"]


@dataclass(frozen=True, slots=True)
class Slice:
    """Rows ``[lo, hi)`` of a key's array, held by server ``server``."""

    server: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class KeyPlan:
    """Where one key's array lives: its shape, dtype and row blocks (one when small)."""

    key: Key
    wire: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    slices: tuple[Slice, ...]

    @property
    def split(self) -> bool:
        """Whether the array is cut over several servers."""
        return len(self.slices) > 1

    def parts(self, array: np.ndarray) -> Iterator[tuple[Slice, np.ndarray]]:
        """Each slice with its block of ``array`` (views, no copy; scalars whole).

        Example:
            >>> p = plan_key(1, (4,), "float64", num_servers=2, bound=2)
            >>> [b.tolist() for _, b in p.parts(np.arange(4.0))]
            [[0.0, 1.0], [2.0, 3.0]]
        """
        if not self.split:
            yield self.slices[0], array
            return
        for s in self.slices:
            yield s, array[s.lo : s.hi]


    def pieces(self, array: np.ndarray, chunk_bytes: int = defaults.PS_CHUNK_BYTES
               ) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(server, first row within that server's slice, rows)`` parts of ``array`` of at
        most ``chunk_bytes`` each (at least one row), in row order; views, no copy.

        Example:
            >>> p = plan_key(1, (6, 2), "float64", num_servers=1, bound=100)
            >>> [(s, lo, b.shape) for s, lo, b in p.pieces(np.zeros((6, 2)), chunk_bytes=64)]
            [(0, 0, (4, 2)), (0, 4, (2, 2))]
        """
        if len(self.slices) == 1 and array.nbytes <= chunk_bytes:  # the common small key
            yield self.slices[0].server, 0, array
            return
        for s, block in self.parts(array):
            for lo, rows in chunks(block, chunk_bytes):
                yield s.server, lo, rows


def chunks(block: np.ndarray, chunk_bytes: int = defaults.PS_CHUNK_BYTES
           ) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` of ``block`` in parts of at most ``chunk_bytes`` (>= 1 row).

    Example:
        >>> [(lo, b.tolist()) for lo, b in chunks(np.arange(3.0), chunk_bytes=16)]
        [(0, [0.0, 1.0]), (2, [2.0])]
    """
    if block.ndim == 0:
        yield 0, block
        return
    step = max(1, chunk_bytes // max(1, block[:1].nbytes))
    for lo in range(0, max(block.shape[0], 1), step):
        yield lo, block[lo : lo + step]


def home_server(wire: str, num_servers: int) -> int:
    """The server a small key lives on: a stable hash of its wire key.

    Example:
        >>> home_server("i3", 1)
        0
    """
    return zlib.crc32(wire.encode("utf-8")) % num_servers


def plan_key(key: Key, shape: tuple[int, ...], dtype: Any, *, num_servers: int,
             bound: int = defaults.BIGARRAY_BOUND) -> KeyPlan:
    """Plan where ``key``'s array of ``shape`` and ``dtype`` lives over ``num_servers``.

    Raises:
        InvalidArgumentError: ``num_servers`` < 1 or ``bound`` < 1.
        TypeError: ``key`` is not an int or str.
    """
    if num_servers < 1 or bound < 1:
        raise InvalidArgumentError(
            f"need at least one server and a positive bound, got {num_servers} and {bound}")
    wire = wire_key(key)
    shape_t = tuple(int(d) for d in shape)
    size = int(np.prod(shape_t, dtype=np.int64))
    home = home_server(wire, num_servers)
    rows = shape_t[0] if shape_t else 1
    if size <= bound or num_servers == 1 or not shape_t or rows < 2:
        slices: tuple[Slice, ...] = (Slice(home, 0, rows),)
    else:
        cuts = [(i * rows) // num_servers for i in range(num_servers + 1)]
        slices = tuple(Slice((home + i) % num_servers, cuts[i], cuts[i + 1])
                       for i in range(num_servers) if cuts[i + 1] > cuts[i])
    return KeyPlan(key, wire, shape_t, np.dtype(dtype), slices)
