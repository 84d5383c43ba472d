"""Row-sparse arrays: the numpy stand-in for MXNet's ``RowSparseNDArray``.

A :class:`RowSparseArray` of ``shape`` ``(n, *row_shape)`` stores only some rows: ``data``
holds the stored rows in order and ``indices`` (sorted, unique, ``int64``) says which rows
they are; every other row is zero. KVStores accept it wherever MXNet accepts a row-sparse
NDArray (``init``, ``push``, ``row_sparse_pull``).

Example:
    >>> import numpy as np
    >>> a = RowSparseArray(np.ones((2, 3), np.float32), [0, 2], (4, 3))
    >>> a
    RowSparseArray(shape=(4, 3), dtype=float32, rows=[0, 2])
    >>> print(a.todense())
    [[1. 1. 1.]
     [0. 0. 0.]
     [1. 1. 1.]
     [0. 0. 0.]]
    >>> RowSparseArray.from_dense(a.todense()).indices
    array([0, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kvsync.errors import InvalidArgumentError, ShapeMismatchError

__all__ = ["RowSparseArray", "as_row_ids", "tostype"]


class RowSparseArray:
    """A 2-D-or-more array of which only the rows listed in ``indices`` are stored.

    Args:
        data: the stored rows, shape ``(len(indices), *shape[1:])``; kept without copying
            when it is already a C-contiguous ndarray.
        indices: the row numbers of ``data``, strictly increasing, in ``[0, shape[0])``.
        shape: the dense shape (at least one dimension).

    Raises:
        ShapeMismatchError: ``data`` does not have ``len(indices)`` rows of ``shape[1:]``.
        InvalidArgumentError: ``indices`` are not integers, not strictly increasing, or
            out of range.

    Example:
        >>> import numpy as np
        >>> RowSparseArray(np.zeros((1, 2)), [5], (3, 2))
        Traceback (most recent call last):
        ...
        kvsync.errors.InvalidArgumentError: row index 5 is out of range for 3 rows
    """

    __slots__ = ("data", "indices", "shape")

    def __init__(self, data: npt.ArrayLike, indices: npt.ArrayLike, shape: Sequence[int]) -> None:
        shape_t = tuple(int(s) for s in shape)
        if not shape_t:
            raise ShapeMismatchError("a row-sparse array needs at least one dimension")
        arr = np.ascontiguousarray(data)
        idx = as_row_ids(indices, shape_t[0])
        if idx.size > 1 and not bool(np.all(idx[1:] > idx[:-1])):
            raise InvalidArgumentError(
                f"row indices must be strictly increasing, got {idx.tolist()[:10]}"
            )
        want = (idx.size, *shape_t[1:])
        if arr.shape != want:
            raise ShapeMismatchError(
                f"row-sparse data has shape {arr.shape}, expected {want} for "
                f"{idx.size} rows of shape {shape_t}"
            )
        self.data: np.ndarray[Any, Any] = arr
        self.indices: np.ndarray[Any, np.dtype[np.int64]] = idx
        self.shape: tuple[int, ...] = shape_t

    @property
    def dtype(self) -> np.dtype[Any]:
        """The element type of the stored rows."""
        dt: np.dtype[Any] = self.data.dtype
        return dt

    @property
    def stype(self) -> str:
        """The storage type name, ``"row_sparse"`` (MXNet's name)."""
        return "row_sparse"

    @property
    def nbytes(self) -> int:
        """Bytes held by ``data`` and ``indices``."""
        return int(self.data.nbytes + self.indices.nbytes)

    @classmethod
    def zeros(cls, shape: Sequence[int], dtype: npt.DTypeLike = np.float32) -> RowSparseArray:
        """An all-zero row-sparse array (no stored rows).

        Example:
            >>> RowSparseArray.zeros((2, 3))
            RowSparseArray(shape=(2, 3), dtype=float32, rows=[])
        """
        shape_t = tuple(int(s) for s in shape)
        return cls(np.zeros((0, *shape_t[1:]), dtype), np.zeros(0, np.int64), shape_t)

    @classmethod
    def from_dense(cls, dense: npt.ArrayLike) -> RowSparseArray:
        """The row-sparse form of ``dense``: its rows that are not all zero.

        Example:
            >>> import numpy as np
            >>> RowSparseArray.from_dense(np.array([[0, 0], [1, 2]])).indices
            array([1])
        """
        arr = np.asarray(dense)
        if arr.ndim == 0:
            raise ShapeMismatchError("a row-sparse array needs at least one dimension")
        nonzero = arr.reshape(arr.shape[0], -1).any(axis=1)
        rows = np.flatnonzero(nonzero)
        return cls(arr[rows], rows, arr.shape)

    def todense(self) -> np.ndarray[Any, Any]:
        """A new dense ndarray with the stored rows in place and zeros elsewhere."""
        out = np.zeros(self.shape, self.data.dtype)
        out[self.indices] = self.data
        return out

    def tostype(self, stype: str) -> np.ndarray[Any, Any] | RowSparseArray:
        """``"default"`` gives :meth:`todense`, ``"row_sparse"`` a copy (MXNet's tostype).

        Raises:
            InvalidArgumentError: an unknown storage type name.
        """
        return tostype(self, stype)

    def copy(self) -> RowSparseArray:
        """A deep copy."""
        return RowSparseArray(self.data.copy(), self.indices.copy(), self.shape)

    def assign(self, other: RowSparseArray) -> None:
        """Make this array hold a copy of ``other``'s rows (an in-place write for ``out=``).

        Raises:
            ShapeMismatchError: the dense shapes differ.
        """
        if other.shape != self.shape:
            raise ShapeMismatchError(f"cannot assign shape {other.shape} to {self.shape}")
        self.data = other.data.astype(self.data.dtype, copy=True)
        self.indices = other.indices.copy()

    def __repr__(self) -> str:
        return (
            f"RowSparseArray(shape={self.shape}, dtype={self.data.dtype}, "
            f"rows={self.indices.tolist()})"
        )


def as_row_ids(row_ids: npt.ArrayLike, num_rows: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    """``row_ids`` as a 1-D ``int64`` array, checked against ``num_rows``.

    Float arrays with whole values are accepted (``mx.nd.array([0, 1])`` is float32).

    Raises:
        InvalidArgumentError: not 1-D, not whole numbers, or out of range.

    Example:
        >>> as_row_ids([2.0, 0.0], 3)
        array([2, 0])
    """
    arr = np.asarray(row_ids)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"row ids must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not bool(np.all(arr == np.floor(arr))):
            raise InvalidArgumentError(f"row ids must be whole numbers, got {arr.dtype}")
    ids = arr.astype(np.int64, copy=False)
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        bad = lo if lo < 0 else hi
        if lo < 0 or hi >= num_rows:
            raise InvalidArgumentError(f"row index {bad} is out of range for {num_rows} rows")
    return ids


def tostype(
    value: np.ndarray[Any, Any] | RowSparseArray, stype: str
) -> np.ndarray[Any, Any] | RowSparseArray:
    """Convert between ``"default"`` (dense ndarray) and ``"row_sparse"`` storage.

    Raises:
        InvalidArgumentError: an unknown storage type name.

    Example:
        >>> import numpy as np
        >>> tostype(np.ones((2, 3), np.float32), "row_sparse")
        RowSparseArray(shape=(2, 3), dtype=float32, rows=[0, 1])
    """
    if stype == "default":
        return value.todense() if isinstance(value, RowSparseArray) else np.array(value)
    if stype == "row_sparse":
        return (
            value.copy() if isinstance(value, RowSparseArray) else RowSparseArray.from_dense(value)
        )
    raise InvalidArgumentError(f"unknown storage type {stype!r}; known: 'default', 'row_sparse'")
