"""Per-key state of the parameter server: a key's row slice and its open sync round.

Keys arrive as wire keys (:mod:`kvsync.protocol.wire_keys`); what the server process plugs
in (updater, compression, shared memory) is described in :mod:`kvsync.server.ps_plugins`.

Example:
    >>> import numpy as np
    >>> ks = KeyState(3, np.zeros((4, 2)), wire="3")
    >>> ks.rows, ks.missing(2)
    (4, [0, 1])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import numpy as np

from kvsync import defaults
from kvsync.errors import ErrorCode
from kvsync.protocol.wire_keys import Key
from kvsync.server.router import RejectError

__all__ = ["Allocate", "KeyState", "check_pairs"]

#: ``nbytes -> (path, uint8 view)``: memory other processes of the host can map.
Allocate: TypeAlias = "Callable[[int], tuple[str, np.ndarray]]"


def rows_of(a: np.ndarray, lo: int, n: int) -> np.ndarray:
    """Rows ``[lo, lo + n)`` of ``a`` as a view (a 0-d array is its own single row)."""
    return a if a.ndim == 0 else a[lo : lo + n]


class KeyState:
    """One key's slice on a server and its open sync round.

    A worker's push may arrive in several parts (row blocks, in row order); the sum of the
    round is kept in one buffer reused from round to round (so no memory is allocated per
    round), written by the first part that reaches a row and added to by the others.

    Attributes:
        key: the original KVStore key (given to the updater).
        wire: its wire key (how requests name it).
        value: the stored slice (rows of the full array).
        round: how many updates were applied.
        pushed: ranks whose push into the open round is complete.
        partial: ranks part-way through a push -> rows received so far.
    """

    __slots__ = ("_acc", "_alloc", "_filled", "_own", "acc_path", "key", "partial", "pushed",
                 "round", "rows", "value", "value_path", "wire")

    def __init__(
        self, key: Key, value: np.ndarray, alloc: Allocate | None = None, *, wire: str
    ) -> None:
        self.key = key
        self.wire = wire
        self.value_path = self.acc_path = ""
        self._alloc = alloc if value.nbytes >= defaults.PS_SHM_MIN_BYTES else None
        if self._alloc is not None:  # big slices live in memory workers can map
            self.value_path, self.value = self._shared_like(value)
            np.copyto(self.value, value)
        else:
            self.value = np.array(value, copy=True, order="C")
        self.round = 0
        #: rows of the slice (1 for a 0-d value)
        self.rows = int(self.value.shape[0]) if self.value.ndim else 1
        self.pushed: set[int] = set()
        self.partial: dict[int, int] = {}
        self._acc: np.ndarray | None = None
        self._filled = 0
        self._own: dict[int, np.ndarray] = {}

    def _shared_like(self, a: np.ndarray) -> tuple[str, np.ndarray]:
        assert self._alloc is not None
        path, buf = self._alloc(a.nbytes)
        return path, buf.view(a.dtype).reshape(a.shape)

    def part_rows(self, lo: int, v: np.ndarray) -> int:
        """Check that ``v`` is rows ``lo...`` of the slice; return its row count.

        Raises:
            RejectError: SHAPE_MISMATCH naming the key and both shapes.
        """
        n = int(v.shape[0]) if v.ndim else 1
        want = self.value.shape if self.value.ndim == 0 else (n, *self.value.shape[1:])
        empty_part = self.value.ndim > 0 and n < 1 and self.rows > 0
        if v.shape != want or v.dtype != self.value.dtype or lo < 0 or lo + n > self.rows or (
                empty_part):
            raise RejectError(
                ErrorCode.SHAPE_MISMATCH,
                f"push of key {self.key!r}: got {v.dtype}{list(v.shape)} at row {lo}, the "
                f"stored slice is {self.value.dtype}{list(self.value.shape)}")
        return n

    def check_order(self, rank: int, lo: int) -> None:
        """Parts of one push must arrive in row order.

        Raises:
            RejectError: KVSTORE_USAGE naming the key and the rows expected.
        """
        expected = self.partial.get(rank, 0)
        if lo != expected:
            raise RejectError(ErrorCode.KVSTORE_USAGE,
                                 f"push of key {self.key!r} by rank {rank}: part at row {lo}, "
                                 f"expected row {expected}")

    def check_rows(self, rows: np.ndarray) -> np.ndarray:
        """Validate local row numbers (1-D integers within the slice).

        Raises:
            RejectError: KVSTORE_USAGE naming the key and the bad rows.
        """
        r = np.asarray(rows)
        n = self.value.shape[0] if self.value.ndim else 0
        if r.ndim != 1 or r.dtype.kind not in "iu":
            raise RejectError(ErrorCode.KVSTORE_USAGE,
                                 f"row ids of key {self.key!r} must be a 1-D integer array")
        if r.size and (int(r.min()) < 0 or int(r.max()) >= n):
            raise RejectError(ErrorCode.KVSTORE_USAGE,
                                 f"row ids of key {self.key!r} out of range [0, {n})")
        return r.astype(np.intp, copy=False)

    def check_range(self, lo: int, n: int) -> None:
        """Validate a pulled row range.

        Raises:
            RejectError: KVSTORE_USAGE naming the key and the range.
        """
        if lo < 0 or n < min(1, self.rows) or lo + n > self.rows:
            raise RejectError(ErrorCode.KVSTORE_USAGE,
                                 f"rows [{lo}, {lo + n}) of key {self.key!r} are outside its "
                                 f"{self.rows} rows")

    def add_part(self, rank: int, lo: int, grad: np.ndarray, sync: bool) -> np.ndarray | None:
        """Take rows ``lo...`` of ``rank``'s push; return the whole push once complete
        (sync: the round's sum when every rank is in, see :meth:`close_round`)."""
        n = int(grad.shape[0]) if grad.ndim else 1
        if sync:
            if self._acc is None:
                if self._alloc is not None:
                    self.acc_path, self._acc = self._shared_like(self.value)
                else:
                    self._acc = np.empty_like(self.value)
            acc = self._acc
            if n == self.rows and self._filled in (0, n):  # whole slice: small keys, shm
                if self._filled:
                    np.add(acc, grad, out=acc)
                else:
                    np.copyto(acc, grad)
                    self._filled = n
                self.pushed.add(rank)
                return acc
            seen = max(0, min(lo + n, self._filled) - lo)
            if seen:
                np.add(rows_of(acc, lo, seen), rows_of(grad, 0, seen),
                       out=rows_of(acc, lo, seen))
            if seen < n:
                np.copyto(rows_of(acc, lo + seen, n - seen), rows_of(grad, seen, n - seen))
            self._filled = max(self._filled, lo + n)
            buf = acc
        else:
            if rank not in self._own:
                self._own[rank] = np.empty_like(self.value)
            buf = self._own[rank]
            np.copyto(rows_of(buf, lo, n), grad)
        if lo + n < self.rows:
            self.partial[rank] = lo + n
            return None
        self.partial.pop(rank, None)
        if sync:
            self.pushed.add(rank)
        return buf

    def close_round(self) -> np.ndarray:
        """The open round's sum (the reused buffer); the round is emptied."""
        assert self._acc is not None
        self.pushed.clear()
        self._filled = 0
        return self._acc

    def discard_round(self) -> None:
        """Drop the open round's pushes and every half-received push; the value stays."""
        self.pushed.clear()
        self.partial.clear()
        self._filled = 0

    def store_sum(self) -> None:
        """Without an updater the round's sum becomes the value: swap the two buffers."""
        assert self._acc is not None
        self.value, self._acc = self._acc, self.value
        self.value_path, self.acc_path = self.acc_path, self.value_path

    def missing(self, num_workers: int) -> list[int]:
        """Ranks that have not completed a push into the open round."""
        return [r for r in range(num_workers) if r not in self.pushed]


def check_pairs(keys: tuple[str, ...], values: tuple[np.ndarray, ...]) -> None:
    """One value per key, no key twice.

    Raises:
        RejectError: KVSTORE_USAGE.
    """
    if len(keys) != len(values):
        raise RejectError(ErrorCode.KVSTORE_USAGE,
                             f"{len(keys)} keys but {len(values)} values")
    if len(set(keys)) != len(keys):
        raise RejectError(ErrorCode.KVSTORE_USAGE, "a key appears twice in one request")
