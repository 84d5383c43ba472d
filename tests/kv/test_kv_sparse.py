"""RowSparseArray and the row-sparse paths of the KVStore."""

from __future__ import annotations

import numpy as np
import pytest

from kvsync import kv
from kvsync.errors import InvalidArgumentError, ShapeMismatchError, UninitializedKeyError
from kvsync.sparse import RowSparseArray, as_row_ids, tostype


def _rsp(rows: list[int], n: int = 4, width: int = 2, value: float = 1.0) -> RowSparseArray:
    return RowSparseArray(np.full((len(rows), width), value, np.float32), rows, (n, width))


def test_row_sparse_array_validates_its_parts() -> None:
    with pytest.raises(InvalidArgumentError, match="increasing"):
        RowSparseArray(np.ones((2, 1)), [1, 0], (3, 1))
    with pytest.raises(InvalidArgumentError, match="increasing"):
        RowSparseArray(np.ones((2, 1)), [1, 1], (3, 1))
    with pytest.raises(ShapeMismatchError, match="expected"):
        RowSparseArray(np.ones((2, 2)), [0, 1], (3, 1))
    with pytest.raises(InvalidArgumentError, match="out of range"):
        RowSparseArray(np.ones((1, 1)), [-1], (3, 1))
    with pytest.raises(ShapeMismatchError):
        RowSparseArray(np.ones(1), [0], ())


def test_dense_round_trip_and_tostype() -> None:
    dense = np.array([[0, 0], [1, 2], [0, 0], [3, 0]], np.float32)
    rsp = tostype(dense, "row_sparse")
    assert isinstance(rsp, RowSparseArray)
    np.testing.assert_array_equal(rsp.indices, [1, 3])
    np.testing.assert_array_equal(rsp.tostype("default"), dense)
    assert rsp.tostype("row_sparse") is not rsp
    assert rsp.stype == "row_sparse" and rsp.dtype == np.float32 and rsp.nbytes == 32
    with pytest.raises(InvalidArgumentError, match="storage type"):
        rsp.tostype("csr")


def test_row_ids_must_be_whole_and_in_range() -> None:
    with pytest.raises(InvalidArgumentError, match="whole"):
        as_row_ids(np.array([0.5]), 3)
    with pytest.raises(InvalidArgumentError, match="1-D"):
        as_row_ids(np.zeros((1, 1), np.int64), 3)
    with pytest.raises(InvalidArgumentError, match="row index 3"):
        as_row_ids([3], 3)


def test_row_sparse_pull_matches_the_reference_with_unsorted_and_duplicate_ids() -> None:
    store = kv.create()
    store.init("3", tostype(np.ones((3, 3), np.float32), "row_sparse"))
    a = RowSparseArray.zeros((3, 3))
    expected = {
        (0, 2): [[1, 1, 1], [0, 0, 0], [1, 1, 1]],
        (2, 2): [[0, 0, 0], [0, 0, 0], [1, 1, 1]],
        (1, 0): [[1, 1, 1], [1, 1, 1], [0, 0, 0]],
    }
    for ids, want in expected.items():
        store.row_sparse_pull("3", out=a, row_ids=np.array(ids, np.int64))
        np.testing.assert_array_equal(a.todense(), want)
        np.testing.assert_array_equal(a.indices, sorted(set(ids)))


def test_row_sparse_pull_from_a_dense_value_and_float_row_ids() -> None:
    store = kv.create()
    store.init(0, np.arange(8, dtype=np.float32).reshape(4, 2))
    out = RowSparseArray.zeros((4, 2))
    store.row_sparse_pull(0, out=out, row_ids=np.array([3.0, 1.0], np.float32))
    np.testing.assert_array_equal(out.indices, [1, 3])
    np.testing.assert_array_equal(out.data, [[2, 3], [6, 7]])


def test_one_row_ids_array_with_several_outputs_fills_them_all() -> None:
    store = kv.create()
    store.init("e", np.ones((4, 2), np.float32))
    outs = [RowSparseArray.zeros((4, 2)) for _ in range(3)]
    store.row_sparse_pull("e", out=outs, row_ids=np.array([2]))
    for o in outs:
        np.testing.assert_array_equal(o.indices, [2])


def test_row_sparse_pull_per_output_row_ids() -> None:
    store = kv.create()
    store.init(["a", "b"], [np.ones((4, 2), np.float32), np.full((4, 2), 2, np.float32)])
    oa, ob = RowSparseArray.zeros((4, 2)), RowSparseArray.zeros((4, 2))
    store.row_sparse_pull(["a", "b"], out=[oa, ob], row_ids=[np.array([0]), np.array([1, 3])])
    assert oa.indices.tolist() == [0] and ob.indices.tolist() == [1, 3]
    np.testing.assert_array_equal(ob.data, 2)


def test_row_sparse_pull_leaves_out_rows_a_sparse_value_does_not_hold() -> None:
    store = kv.create()
    store.init("s", _rsp([1, 3]))
    out = RowSparseArray.zeros((4, 2))
    store.row_sparse_pull("s", out=out, row_ids=np.array([0, 1, 2]))
    assert out.indices.tolist() == [1]


@pytest.mark.parametrize(
    ("out", "row_ids", "error", "match"),
    [
        (None, np.array([0]), InvalidArgumentError, "out= and row_ids="),
        (RowSparseArray.zeros((4, 2)), None, InvalidArgumentError, "out= and row_ids="),
        (np.zeros((4, 2), np.float32), np.array([0]), InvalidArgumentError, "RowSparseArray"),
        (RowSparseArray.zeros((4, 2)), np.array([9]), InvalidArgumentError, "row index 9"),
        (RowSparseArray.zeros((5, 2)), np.array([0]), ShapeMismatchError, "shape"),
        (RowSparseArray.zeros((4, 2)), (0,), InvalidArgumentError, "row_ids must be"),
        (
            [RowSparseArray.zeros((4, 2))] * 2,
            [np.array([0])] * 3,
            InvalidArgumentError,
            "2 outputs but 3",
        ),
    ],
)
def test_row_sparse_pull_argument_errors(
    out: object, row_ids: object, error: type[Exception], match: str
) -> None:
    store = kv.create()
    store.init("e", np.ones((4, 2), np.float32))
    with pytest.raises(error, match=match):
        store.row_sparse_pull("e", out=out, row_ids=row_ids)


def test_row_sparse_pull_of_an_unknown_key() -> None:
    with pytest.raises(UninitializedKeyError):
        kv.create().row_sparse_pull("x", out=RowSparseArray.zeros((1, 1)), row_ids=np.array([0]))


def test_sparse_pushes_aggregate_per_row() -> None:
    store = kv.create()
    store.init("10", RowSparseArray.zeros((4, 2)))
    store.push("10", [_rsp([0, 2]), _rsp([2, 3], value=2.0)])
    out = RowSparseArray.zeros((4, 2))
    store.row_sparse_pull("10", out=out, row_ids=np.array([0, 1, 2, 3]))
    assert out.indices.tolist() == [0, 2, 3]
    np.testing.assert_array_equal(out.data[:, 0], [1, 3, 2])


def test_sparse_push_into_a_dense_value_writes_zeros_elsewhere() -> None:
    store = kv.create()
    store.init("d", np.full((4, 2), 9, np.float32))
    store.push("d", _rsp([1]))
    np.testing.assert_array_equal(store.pull("d")[:, 0], [0, 1, 0, 0])


def test_mixed_sparse_and_dense_device_values_are_summed_densely() -> None:
    store = kv.create()
    store.init("d", np.zeros((4, 2), np.float32))
    store.push("d", [_rsp([1]), np.ones((4, 2), np.float32)])
    np.testing.assert_array_equal(store.pull("d")[:, 0], [1, 2, 1, 1])


def test_dense_push_into_a_sparse_value_keeps_it_sparse() -> None:
    store = kv.create()
    store.init("s", RowSparseArray.zeros((3, 1)))
    store.push("s", np.array([[0], [5], [0]], np.float32))
    full = store.pull("s")
    assert isinstance(full, RowSparseArray) and full.indices.tolist() == [1]


def test_updater_on_a_sparse_value_sees_dense_arrays() -> None:
    store = kv.create()
    store.init("s", _rsp([0], n=3, width=1))
    seen = []

    def update(key: object, merged: np.ndarray, stored: np.ndarray) -> None:
        seen.append((type(merged), type(stored)))
        stored += merged

    store.set_updater(update)
    store.push("s", _rsp([2], n=3, width=1, value=4.0))
    assert seen == [(np.ndarray, np.ndarray)]
    np.testing.assert_array_equal(store.pull("s").todense().ravel(), [1, 0, 4])


def test_init_reference_example_with_a_row_sparse_value() -> None:
    store = kv.create("local")
    store.init("4", tostype(np.ones((2, 3), np.float32), "row_sparse"))
    b = RowSparseArray.zeros((2, 3))
    store.row_sparse_pull("4", row_ids=np.array([0, 1], np.float32), out=b)
    assert repr(b) == "RowSparseArray(shape=(2, 3), dtype=float32, rows=[0, 1])"
