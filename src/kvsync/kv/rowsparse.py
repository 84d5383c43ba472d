"""Row-sparse arithmetic a KVStore needs: per-row sums, row retention, conversions.

Shared by the local and distributed stores (a parameter server aggregates row-sparse
pushes with :func:`sum_rows` and answers ``row_sparse_pull`` with :func:`retain`).

Example:
    >>> import numpy as np
    >>> from kvsync.sparse import RowSparseArray
    >>> a = RowSparseArray(np.ones((2, 2)), [0, 2], (4, 2))
    >>> b = RowSparseArray(np.ones((2, 2)), [2, 3], (4, 2))
    >>> s = sum_rows([a, b])
    >>> s.indices, s.data[:, 0]
    (array([0, 2, 3]), array([1., 2., 1.]))
    >>> retain(s, np.array([3, 1, 3])).indices
    array([3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kvsync.sparse import RowSparseArray

__all__ = ["as_row_sparse", "densify", "retain", "sum_rows", "write_dense"]

Array = np.ndarray[Any, Any]


def densify(value: Array | RowSparseArray) -> Array:
    """``value`` as a dense array (the array itself when it already is one).

    Example:
        >>> import numpy as np
        >>> densify(RowSparseArray(np.ones((1, 2)), [1], (2, 2)))
        array([[0., 0.],
               [1., 1.]])
    """
    return value.todense() if isinstance(value, RowSparseArray) else value


def as_row_sparse(value: Array | RowSparseArray, *, copy: bool = True) -> RowSparseArray:
    """``value`` as a RowSparseArray (dense input keeps its non-zero rows).

    Example:
        >>> import numpy as np
        >>> as_row_sparse(np.array([[0.0], [3.0]])).indices
        array([1])
    """
    if isinstance(value, RowSparseArray):
        return value.copy() if copy else value
    return RowSparseArray.from_dense(value)


def sum_rows(values: Sequence[RowSparseArray]) -> RowSparseArray:
    """The row-wise sum of row-sparse arrays of one shape (a new array).

    Rows present in several inputs are added; the result holds the union of the rows.

    Example:
        >>> import numpy as np
        >>> sum_rows([RowSparseArray(np.ones((1, 1)), [1], (3, 1))] * 3).data
        array([[3.]])
    """
    first = values[0]
    rows = np.unique(np.concatenate([v.indices for v in values]))
    data = np.zeros((rows.size, *first.shape[1:]), first.dtype)
    for v in values:
        data[np.searchsorted(rows, v.indices)] += v.data
    return RowSparseArray(data, rows, first.shape)


def retain(stored: Array | RowSparseArray, row_ids: Array) -> RowSparseArray:
    """The rows ``row_ids`` (any order, repeats allowed) of ``stored``, as a new array.

    The result's rows are the sorted unique ids; for a row-sparse ``stored``, ids of rows
    it does not hold are left out (MXNet's ``sparse_retain``).

    Example:
        >>> import numpy as np
        >>> retain(np.arange(6.0).reshape(3, 2), np.array([2, 0, 2])).data
        array([[0., 1.],
               [4., 5.]])
    """
    ids = np.unique(row_ids)
    if isinstance(stored, np.ndarray):
        return RowSparseArray(stored[ids], ids, stored.shape)
    pos = np.searchsorted(stored.indices, ids)
    pos_clipped = np.minimum(pos, max(stored.indices.size - 1, 0))
    present = (pos < stored.indices.size) & (stored.indices[pos_clipped] == ids)
    if stored.indices.size == 0:
        present[:] = False
    return RowSparseArray(stored.data[pos[present]], ids[present], stored.shape)


def write_dense(target: Array, value: Array | RowSparseArray) -> None:
    """Overwrite ``target`` with ``value`` (rows of a RowSparseArray, zeros elsewhere).

    Example:
        >>> import numpy as np
        >>> t = np.full((2, 1), 7.0)
        >>> write_dense(t, RowSparseArray(np.ones((1, 1)), [1], (2, 1))); t.ravel()
        array([0., 1.])
    """
    if isinstance(value, RowSparseArray):
        target[...] = 0
        target[value.indices] = value.data
    else:
        np.copyto(target, value)
