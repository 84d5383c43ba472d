"""The single-process KVStore types ``local``, ``device`` and ``nccl`` (MXNet semantics over numpy).

Both keep one array per key. A push sums the per-device values of a key (blocked and
threaded, see :mod:`kvsync.kv.reduce`) and then either stores the sum or, with an updater
set, calls ``updater(key, merged, stored)``, which updates ``stored`` in place. Pulls copy
the stored value into the caller's arrays. ``device`` also accepts gradient compression
(each device's value is quantised with its own residual, then dequantised and summed),
as MXNet does; ``local`` refuses it, as MXNet does. ``nccl`` (MXNet's single-machine
multi-GPU store) has ``device`` semantics here: per-device values summed, in numpy; like
MXNet's, it refuses gradient compression.

Every call validates all of its keys and values before it changes anything, so a bad
call raises a :mod:`kvsync.errors` class and leaves the store as it was.

The reference's docstring examples, every one, run as a doctest in
``tests/kv/test_kv_reference_examples.txt``.

Example:
    >>> import numpy as np
    >>> from kvsync import kv
    >>> store = kv.create("local")
    >>> store.init("3", np.ones((2, 3)) * 2)
    >>> store.push("3", [np.ones((2, 3)) for _ in range(4)])  # one value per device
    >>> print(store.pull("3", out=np.zeros((2, 3))))
    [[4. 4. 4.]
     [4. 4. 4.]]
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

import numpy as np

from kvsync.errors import (
    InvalidArgumentError,
    UninitializedKeyError,
    UnknownNameError,
)
from kvsync.kv import rowsparse
from kvsync.kv.base import (
    Array,
    Key,
    KeyGroup,
    KVStoreBase,
    UpdateFunction,
    Value,
    check_matches,
    check_writable,
    normalize_key,
)
from kvsync.kv.compression import GradientCompression, create_compression
from kvsync.kv.local_optimizer import UpdaterMixin
from kvsync.kv.reduce import copy_to_all, fusable, sum_into
from kvsync.sparse import RowSparseArray, as_row_ids

__all__ = ["LocalKVStore"]

logger = logging.getLogger(__name__)

#: pushpull calls moving fewer bytes than this skip the fused pass (it only saves bandwidth).
FUSE_MIN_BYTES = 4 << 20


@KVStoreBase.register
class LocalKVStore(UpdaterMixin, KVStoreBase):
    """MXNet's ``local`` / ``device`` KVStore: one process, values summed over devices.

    Args:
        name: ``"local"``, ``"device"`` or ``"nccl"`` (what :attr:`type` reports).

    Raises:
        UnknownNameError: another name.
    """

    NAMES: ClassVar[tuple[str, ...]] = ("local", "device", "nccl")

    def __init__(self, name: str = "local") -> None:
        if name not in LocalKVStore.NAMES:
            raise UnknownNameError(
                f"LocalKVStore types are {list(LocalKVStore.NAMES)}, got {name!r}"
            )
        self._type = name
        self._store: dict[Key, Value] = {}
        self._merge: dict[Key, Array] = {}
        self._updater: UpdateFunction | None = None
        self._compression: GradientCompression | None = None
        self._warned_sparse: set[Key] = set()
        self._lock = threading.RLock()

    @classmethod
    def _create(cls, name: str, *, timeout: float | None = None) -> LocalKVStore:
        return cls(name)  # nothing to wait for: the timeout does not apply

    # -- properties ---------------------------------------------------------------------
    @property
    def type(self) -> str:
        """``"local"``, ``"device"`` or ``"nccl"``."""
        return self._type

    @property
    def rank(self) -> int:
        """Always 0: one worker."""
        return 0

    @property
    def num_workers(self) -> int:
        """Always 1."""
        return 1

    def is_capable(self, capability: str) -> bool:
        """Optimizers and row-sparse values: yes; gradient compression: ``device`` only.

        Example:
            >>> LocalKVStore("nccl").is_capable("gradient_compression")
            False


        Raises:
            UnknownNameError: an unknown capability name.
        """
        table = {
            self.OPTIMIZER: True,
            self.ROW_SPARSE: True,
            self.GRADIENT_COMPRESSION: self._type == "device",
        }
        cap = str(capability).lower()
        if cap not in table:
            raise UnknownNameError(f"unknown capability {capability!r}; known: {sorted(table)}")
        return table[cap]

    # -- init / broadcast -----------------------------------------------------------------
    def _check_init(self, key: Any, value: Any) -> list[KeyGroup]:
        groups = self._groups(key, value)
        for g in groups:
            if len(g.values) != 1:
                raise InvalidArgumentError(
                    f"key {g.key!r} is given {len(g.values)} values in one init; one is needed"
                )
            if g.key in self._store:
                raise InvalidArgumentError(
                    f"key {g.key!r} is already initialised (init or broadcast of a key twice)"
                )
            v = g.values[0]
            if v.dtype.kind not in "biufc":
                raise InvalidArgumentError(f"value for key {g.key!r} has dtype {v.dtype}")
        return groups

    def _store_init(self, groups: list[KeyGroup]) -> None:
        for g in groups:
            v = g.values[0]
            self._store[g.key] = v.copy() if isinstance(v, RowSparseArray) else np.array(v)

    def init(self, key: Any, value: Any) -> None:
        """Initialise one key or a sequence of keys with their values (copied).

        Raises:
            KeyTypeError: a key is not an int or str, or both kinds are mixed.
            InvalidArgumentError: a key is already initialised or given several values.
        """
        with self._lock:
            self._store_init(self._check_init(key, value))

    def broadcast(self, key: Any, value: Any, out: Any, priority: int = 0) -> Any:
        """Initialise ``key`` with ``value`` and pull it into ``out`` (returned).

        Example:
            >>> import numpy as np
            >>> store = LocalKVStore()
            >>> a = np.zeros((2, 3))
            >>> print(store.broadcast("3", np.ones((2, 3)) * 2, out=a))
            [[2. 2. 2.]
             [2. 2. 2.]]

        Raises:
            InvalidArgumentError: the key was initialised or broadcast before.
        """
        with self._lock:
            groups = self._check_init(key, value)
            shapes = {g.key: (g.values[0].shape, g.values[0].dtype) for g in groups}
            outs = self._groups(key, out, what="out")
            for g in outs:
                shape, dtype = shapes[g.key]
                for o in g.values:
                    _check_out(g.key, o, shape, dtype)
            self._store_init(groups)
            self._write_outs(outs, ignore_sparse=True)
        return out

    # -- push -------------------------------------------------------------------------------
    def _stored(self, key: Key) -> Value:
        try:
            return self._store[key]
        except KeyError:
            raise UninitializedKeyError(
                f"key {key!r} was never initialised; call init({key!r}, value) first"
            ) from None

    def _check_push(self, key: Any, value: Any) -> list[KeyGroup]:
        groups = self._groups(key, value)
        for g in groups:
            stored = self._stored(g.key)
            for v in g.values:
                check_matches(g.key, v, stored.shape, stored.dtype)
            if self._compression is not None and stored.dtype.kind != "f":
                raise InvalidArgumentError(
                    f"gradient compression needs float values; key {g.key!r} holds {stored.dtype}"
                )
        return groups

    def push(self, key: Any, value: Any, priority: int = 0) -> None:
        """Push values: per key, sum them and store the sum or hand it to the updater.

        Raises:
            UninitializedKeyError: a key was never initialised.
            ShapeMismatchError: a value's shape or dtype differs from the stored one.
            KeyTypeError, InvalidArgumentError: malformed keys or values.
        """
        with self._lock:
            for g in self._check_push(key, value):
                self._apply_push(g.key, g.values)

    def _merge_buffer(self, key: Key, like: Value) -> Array:
        buf = self._merge.get(key)
        if buf is None:
            buf = self._merge[key] = np.empty(like.shape, like.dtype)
        return buf

    def _reduce_dense(self, key: Key, values: list[Any], target: Array | None) -> Array:
        dense = [rowsparse.densify(v) for v in values]
        if self._compression is not None:
            buf = target if target is not None else self._merge_buffer(key, dense[0])
            return self._reduce_compressed(key, dense, buf)
        if target is None:
            if len(dense) == 1:
                return dense[0]  # no copy: the updater only reads it
            target = self._merge_buffer(key, dense[0])
        return sum_into(target, dense)

    def _reduce_compressed(self, key: Key, values: list[Array], buf: Array) -> Array:
        gc = self._compression
        assert gc is not None
        for i, v in enumerate(values):
            packed = gc.compress((key, i), v)
            if i == 0:
                gc.decompress(packed, v.shape, v.dtype, out=buf)
            else:
                buf += gc.decompress(packed, v.shape, v.dtype)
        return buf

    def _apply_push(self, key: Key, values: list[Any]) -> None:
        stored = self._store[key]
        sparse_push = all(isinstance(v, RowSparseArray) for v in values)
        if sparse_push:
            merged: Value = rowsparse.sum_rows(values)
        else:
            direct = stored if self._updater is None and isinstance(stored, np.ndarray) else None
            merged = self._reduce_dense(key, values, direct)
            if merged is stored:
                return
        if self._updater is not None:
            self._run_updater(key, merged, stored)
        elif isinstance(stored, RowSparseArray):
            self._store[key] = rowsparse.as_row_sparse(merged, copy=not sparse_push)
        else:
            rowsparse.write_dense(stored, merged)

    def _run_updater(self, key: Key, merged: Value, stored: Value) -> None:
        assert self._updater is not None
        grad = rowsparse.densify(merged)
        if isinstance(stored, RowSparseArray):
            weight = stored.todense()
            self._updater(key, grad, weight)
            self._store[key] = RowSparseArray.from_dense(weight)
        else:
            self._updater(key, grad, stored)

    # -- pull -------------------------------------------------------------------------------
    def _check_pull(self, key: Any, out: Any) -> list[KeyGroup]:
        groups = self._groups(key, out, what="out")
        for g in groups:
            stored = self._stored(g.key)
            for o in g.values:
                _check_out(g.key, o, stored.shape, stored.dtype)
        return groups

    def _write_outs(self, groups: list[KeyGroup], ignore_sparse: bool) -> None:
        for g in groups:
            stored = self._store[g.key]
            dense_outs = [o for o in g.values if isinstance(o, np.ndarray)]
            sparse_outs = [o for o in g.values if isinstance(o, RowSparseArray)]
            if dense_outs:
                copy_to_all(rowsparse.densify(stored), dense_outs)
            if sparse_outs and ignore_sparse:
                if g.key not in self._warned_sparse:
                    self._warned_sparse.add(g.key)
                    logger.info(
                        "pull of key %r ignored its RowSparseArray outputs; use "
                        "row_sparse_pull(row_ids=...) or ignore_sparse=False",
                        g.key,
                    )
                continue
            for o in sparse_outs:
                o.assign(rowsparse.as_row_sparse(stored, copy=False))

    def pull(self, key: Any, out: Any = None, priority: int = 0, ignore_sparse: bool = True) -> Any:
        """Copy the stored values into ``out`` (one or several arrays per key); return ``out``.

        Without ``out``, return new arrays: one per key, a list for a list of keys.
        RowSparseArray outputs are skipped while ``ignore_sparse`` is true (MXNet's rule);
        otherwise they receive every stored row.

        Raises:
            UninitializedKeyError: a key was never initialised.
            ShapeMismatchError: an output's shape or dtype differs from the stored one.
            KeyTypeError, InvalidArgumentError: malformed keys or outputs.
        """
        with self._lock:
            if out is None:
                return self._pull_new(key)
            groups = self._check_pull(key, out)
            self._write_outs(groups, ignore_sparse)
        return out

    def _pull_new(self, key: Any) -> Any:
        many = isinstance(key, (list, tuple))
        keys = list(key) if many else [key]
        groups = self._groups(keys, [_PLACEHOLDER] * len(keys), what="out")
        for g in groups:
            self._stored(g.key)
        fresh = [_copy(self._store[normalize_key(k)]) for k in keys]
        return fresh if many else fresh[0]

    def pushpull(self, key: Any, value: Any, out: Any = None, priority: int = 0) -> Any:
        """Push ``value``, then pull the result into ``out`` (into ``value`` when None).

        Raises:
            UninitializedKeyError, ShapeMismatchError, KeyTypeError, InvalidArgumentError:
                as :meth:`push` and :meth:`pull`; checked before anything changes.

        Example:
            >>> import numpy as np
            >>> store = LocalKVStore()
            >>> store.init(["7", "8", "9"], [np.zeros((2, 3))] * 3)
            >>> b = [[np.ones((2, 3)) for _ in range(4)]] * 3
            >>> _ = store.pushpull(["7", "8", "9"], b)
            >>> print(b[1][1])
            [[4. 4. 4.]
             [4. 4. 4.]]
        """
        with self._lock:
            push_groups = self._check_push(key, value)
            pull_groups = self._check_pull(key, value if out is None else out)
            if not self._fused_pushpull(push_groups, pull_groups):
                for g in push_groups:
                    self._apply_push(g.key, g.values)
                self._write_outs(pull_groups, ignore_sparse=True)
        return value if out is None else out

    def _fused_pushpull(self, push: list[KeyGroup], pull: list[KeyGroup]) -> bool:
        """Sum and copy out key by key in one pass, when no one could tell the difference:
        dense values, no updater or compression, and no output of a key is the memory of
        another key's value (MXNet pushes every key before it pulls any)."""
        if self._updater is not None or self._compression is not None:
            return False
        values = {g.key: g.values for g in push}
        outs = {g.key: g.values for g in pull}
        arrays = [a for g in (*push, *pull) for a in g.values]
        dense = all(isinstance(self._store[k], np.ndarray) for k in values)
        if not dense or not all(isinstance(a, np.ndarray) for a in arrays):
            return False
        if sum(a.nbytes for a in arrays) < FUSE_MIN_BYTES or not fusable(values, outs):
            return False
        for k, vals in values.items():
            stored = self._store[k]
            assert isinstance(stored, np.ndarray)
            sum_into(stored, vals, copies=outs.get(k, []))
        return True

    def row_sparse_pull(
        self, key: Any, out: Any = None, priority: int = 0, row_ids: Any = None
    ) -> Any:
        """Pull only the rows ``row_ids`` (unsorted, repeated ids allowed) into RowSparseArrays.

        Each output ends up holding the sorted unique requested rows of the stored value
        (rows a row-sparse stored value does not have are left out). With one ``row_ids``
        array and a list of outputs, every output gets the same rows, as in the reference.

        Example (the reference's three cases are in tests/kv/test_kv_reference_examples.txt):
            >>> import numpy as np
            >>> from kvsync.sparse import RowSparseArray
            >>> store = LocalKVStore()
            >>> store.init("3", RowSparseArray.from_dense(np.ones((3, 3))))
            >>> a = RowSparseArray.zeros((3, 3), np.float64)
            >>> print(store.row_sparse_pull("3", out=a, row_ids=np.array([2, 0, 2])).todense())
            [[1. 1. 1.]
             [0. 0. 0.]
             [1. 1. 1.]]
            >>> a.indices
            array([0, 2])

        Raises:
            InvalidArgumentError: ``out`` or ``row_ids`` missing, an output that is not a
                RowSparseArray, counts that differ, or row ids out of range.
            UninitializedKeyError, ShapeMismatchError, KeyTypeError: as :meth:`pull`.
        """
        with self._lock:
            pairs = self._row_id_pairs(key, out, row_ids)
            plans = []
            for g in pairs.groups:
                stored = self._stored(g.key)
                for o, ids in zip(g.values, pairs.row_ids[g.key], strict=True):
                    check_matches(g.key, o, stored.shape, stored.dtype, what="out")
                    plans.append((o, stored, as_row_ids(ids, stored.shape[0])))
            for o in pairs.copies:
                first = pairs.groups[0]
                stored = self._store[first.key]
                check_matches(first.key, o, stored.shape, stored.dtype, what="out")
            for o, stored, ids in plans:
                o.assign(rowsparse.retain(stored, ids))
            for o in pairs.copies:
                o.assign(pairs.groups[0].values[0])
        return out

    # -- compression ------------------------------------------------------------------
    def set_gradient_compression(self, compression_params: dict[str, Any]) -> None:
        """Compress each device's pushed value (``device`` type only, as in MXNet).

        Dense float values are quantised per device with their own residuals, then
        dequantised and summed; row-sparse values are summed uncompressed.

        Raises:
            InvalidArgumentError: this store is of type ``local`` or ``nccl``, or bad
                parameters.
            UnknownNameError: an unknown compression type.
        """
        if self._type != "device":
            raise InvalidArgumentError(
                f"gradient compression is not supported for KVStore type {self._type!r}; "
                "use 'device' or a dist type"
            )
        gc = create_compression(compression_params)
        with self._lock:
            self._compression = gc

    def __repr__(self) -> str:
        return f"<LocalKVStore type={self._type!r} keys={len(self._store)}>"


_PLACEHOLDER = np.empty(0)


def _copy(value: Value) -> Value:
    return value.copy()


def _check_out(key: Key, out: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
    check_matches(key, out, shape, dtype, what="out")
    check_writable(key, out)
