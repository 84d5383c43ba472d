"""The KVStore contract: MXNet's semantics every store type must keep (see conftest)."""

from __future__ import annotations

import numpy as np
import pytest

from kvsync.errors import (
    InvalidArgumentError,
    KeyTypeError,
    ShapeMismatchError,
    UninitializedKeyError,
)
from kvsync.kv.base import KVStoreBase
from kvsync.sparse import RowSparseArray

SHAPE = (2, 3)


def _pulled(store: KVStoreBase, key: object) -> np.ndarray:
    out = np.zeros(SHAPE, np.float32)
    store.pull(key, out=out)
    return out


def test_init_then_pull_returns_the_initial_value(kvstore: KVStoreBase) -> None:
    kvstore.init("w", np.full(SHAPE, 2, np.float32))
    np.testing.assert_array_equal(_pulled(kvstore, "w"), 2)


def test_init_copies_the_value_so_later_writes_do_not_leak(kvstore: KVStoreBase) -> None:
    v = np.ones(SHAPE, np.float32)
    kvstore.init(1, v)
    v[:] = 9
    np.testing.assert_array_equal(_pulled(kvstore, 1), 1)


def test_push_without_updater_stores_the_sum_of_device_values(kvstore: KVStoreBase) -> None:
    kvstore.init("w", np.zeros(SHAPE, np.float32))
    kvstore.push("w", [np.ones(SHAPE, np.float32) * i for i in range(1, 5)])
    np.testing.assert_array_equal(_pulled(kvstore, "w"), 10)
    kvstore.push("w", np.full(SHAPE, 3, np.float32))
    np.testing.assert_array_equal(_pulled(kvstore, "w"), 3)


def test_push_of_a_list_of_keys_with_per_key_device_lists(kvstore: KVStoreBase) -> None:
    keys = [3, 4, 5]
    kvstore.init(keys, [np.zeros(SHAPE, np.float32)] * 3)
    vals = [[np.full(SHAPE, k, np.float32)] * 2 for k in keys]
    kvstore.push(keys, vals)
    outs = [np.zeros(SHAPE, np.float32) for _ in keys]
    assert kvstore.pull(keys, out=outs) is outs
    for k, o in zip(keys, outs, strict=True):
        np.testing.assert_array_equal(o, 2 * k)


def test_a_key_repeated_in_one_push_gets_all_its_values_summed(kvstore: KVStoreBase) -> None:
    kvstore.init("a", np.zeros(SHAPE, np.float32))
    kvstore.push(["a", "a"], [np.ones(SHAPE, np.float32), np.ones(SHAPE, np.float32) * 2])
    np.testing.assert_array_equal(_pulled(kvstore, "a"), 3)


def test_pull_into_several_outputs_fills_each(kvstore: KVStoreBase) -> None:
    kvstore.init("a", np.full(SHAPE, 5, np.float32))
    outs = [np.zeros(SHAPE, np.float32) for _ in range(3)]
    kvstore.pull("a", out=outs)
    for o in outs:
        np.testing.assert_array_equal(o, 5)


def test_pull_without_out_returns_new_arrays(kvstore: KVStoreBase) -> None:
    kvstore.init(["a", "b"], [np.ones(SHAPE, np.float32), np.zeros(SHAPE, np.float32)])
    a = kvstore.pull("a")
    a[:] = 7
    np.testing.assert_array_equal(kvstore.pull("a"), 1)
    both = kvstore.pull(["a", "b"])
    assert [float(x[0, 0]) for x in both] == [1.0, 0.0]


def test_updater_receives_key_merged_and_stored_and_updates_in_place(
    kvstore: KVStoreBase,
) -> None:
    calls = []

    def update(key: object, merged: np.ndarray, stored: np.ndarray) -> None:
        calls.append((key, merged.copy()))
        stored -= 0.5 * merged

    kvstore.init(7, np.ones(SHAPE, np.float32))
    kvstore.set_updater(update)
    kvstore.push(7, [np.ones(SHAPE, np.float32), np.ones(SHAPE, np.float32)])
    assert calls[0][0] == 7
    np.testing.assert_array_equal(calls[0][1], 2)
    np.testing.assert_array_equal(_pulled(kvstore, 7), 0)


def test_pushpull_writes_back_into_value_when_out_is_none(kvstore: KVStoreBase) -> None:
    keys = ["7", "8", "9"]
    kvstore.init(keys, [np.zeros(SHAPE, np.float32)] * 3)
    b = [[np.ones(SHAPE, np.float32) for _ in range(4)]] * 3  # every key shares b[0]
    kvstore.pushpull(keys, b)
    np.testing.assert_array_equal(b[1][1], 4)


def test_pushpull_with_out_leaves_value_alone(kvstore: KVStoreBase) -> None:
    kvstore.init("3", np.zeros(SHAPE, np.float32))
    v = np.full(SHAPE, 8, np.float32)
    out = np.zeros(SHAPE, np.float32)
    assert kvstore.pushpull("3", v, out=out) is out
    np.testing.assert_array_equal(out, 8)
    np.testing.assert_array_equal(v, 8)


def test_broadcast_initialises_and_fills_out(kvstore: KVStoreBase) -> None:
    outs = [np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)]
    kvstore.broadcast("b", np.full(SHAPE, 2, np.float32), out=outs)
    for o in outs:
        np.testing.assert_array_equal(o, 2)


def test_broadcast_of_a_key_twice_is_refused_and_keeps_the_first_value(
    kvstore: KVStoreBase,
) -> None:
    out = np.zeros(SHAPE, np.float32)
    kvstore.broadcast("b", np.full(SHAPE, 2, np.float32), out=out)
    with pytest.raises(InvalidArgumentError, match="'b' is already initialised"):
        kvstore.broadcast("b", np.full(SHAPE, 3, np.float32), out=out)
    np.testing.assert_array_equal(_pulled(kvstore, "b"), 2)


def test_init_of_a_key_twice_is_refused(kvstore: KVStoreBase) -> None:
    kvstore.init(1, np.ones(SHAPE, np.float32))
    with pytest.raises(InvalidArgumentError, match="already initialised"):
        kvstore.init([2, 1], [np.zeros(SHAPE, np.float32)] * 2)
    with pytest.raises(UninitializedKeyError):  # nothing of the failed call was stored
        kvstore.pull(2, out=np.zeros(SHAPE, np.float32))
    np.testing.assert_array_equal(_pulled(kvstore, 1), 1)


@pytest.mark.parametrize(("first", "other"), [(3, "3"), ("3", 3)])
def test_the_first_key_type_is_the_only_one_the_store_takes(
    kvstore: KVStoreBase, first: int | str, other: int | str
) -> None:
    kvstore.init(first, np.ones(SHAPE, np.float32))
    value = np.zeros(SHAPE, np.float32)
    kind = "an int" if other == 3 else "a str"
    took = f"is {kind}, but this store took {type(first).__name__} keys first"
    with pytest.raises(KeyTypeError, match=took):
        kvstore.init(other, value)
    with pytest.raises(KeyTypeError, match=took):
        kvstore.push(other, value)
    with pytest.raises(KeyTypeError, match=took):
        kvstore.pull(other, out=value)
    with pytest.raises(KeyTypeError, match=took):
        kvstore.pull(other)
    with pytest.raises(KeyTypeError, match=took):
        kvstore.row_sparse_pull(
            other, out=RowSparseArray.zeros(SHAPE, np.float32), row_ids=np.array([0])
        )
    np.testing.assert_array_equal(_pulled(kvstore, first), 1)


def test_mixing_int_and_str_keys_is_refused_and_changes_nothing(kvstore: KVStoreBase) -> None:
    kvstore.init([1, 2], [np.ones(SHAPE, np.float32)] * 2)
    with pytest.raises(KeyTypeError, match="mixed"):
        kvstore.push([1, "x"], [np.full(SHAPE, 5, np.float32)] * 2)
    with pytest.raises(KeyTypeError, match="mixed"):
        kvstore.init([9, "y"], [np.ones(SHAPE, np.float32)] * 2)
    np.testing.assert_array_equal(_pulled(kvstore, 1), 1)


@pytest.mark.parametrize("bad_key", [1.5, b"k", None, True, np.float32(1)])
def test_keys_of_other_types_are_refused(kvstore: KVStoreBase, bad_key: object) -> None:
    with pytest.raises(KeyTypeError):
        kvstore.init(bad_key, np.ones(SHAPE, np.float32))


def test_push_to_a_key_never_initialised_names_it_and_changes_nothing(
    kvstore: KVStoreBase,
) -> None:
    kvstore.init("a", np.ones(SHAPE, np.float32))
    with pytest.raises(UninitializedKeyError, match="'ghost'"):
        kvstore.push(["a", "ghost"], [np.full(SHAPE, 5, np.float32)] * 2)
    np.testing.assert_array_equal(_pulled(kvstore, "a"), 1)
    with pytest.raises(UninitializedKeyError, match="'ghost'"):
        kvstore.pull("ghost", out=np.zeros(SHAPE, np.float32))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.ones((3, 2), np.float32), "shape"),
        (np.ones(SHAPE, np.float64), "dtype"),
        ([np.ones(SHAPE, np.float32), np.ones((1,), np.float32)], "shape"),
    ],
)
def test_push_with_wrong_shape_or_dtype_is_refused_and_changes_nothing(
    kvstore: KVStoreBase, value: object, match: str
) -> None:
    kvstore.init(["a", "b"], [np.ones(SHAPE, np.float32)] * 2)
    with pytest.raises(ShapeMismatchError, match=match):
        kvstore.push(["a", "b"], [np.full(SHAPE, 5, np.float32), value])
    np.testing.assert_array_equal(_pulled(kvstore, "a"), 1)
    np.testing.assert_array_equal(_pulled(kvstore, "b"), 1)


def test_pull_into_wrong_shape_is_refused_before_writing_anything(kvstore: KVStoreBase) -> None:
    kvstore.init(["a", "b"], [np.ones(SHAPE, np.float32)] * 2)
    good = np.zeros(SHAPE, np.float32)
    with pytest.raises(ShapeMismatchError, match="'b'"):
        kvstore.pull(["a", "b"], out=[good, np.zeros((2, 2), np.float32)])
    np.testing.assert_array_equal(good, 0)


def test_pushpull_with_a_bad_out_changes_nothing(kvstore: KVStoreBase) -> None:
    kvstore.init("a", np.ones(SHAPE, np.float32))
    with pytest.raises(ShapeMismatchError):
        kvstore.pushpull("a", np.full(SHAPE, 5, np.float32), out=np.zeros(4, np.float32))
    np.testing.assert_array_equal(_pulled(kvstore, "a"), 1)


def test_counts_of_keys_and_values_must_match(kvstore: KVStoreBase) -> None:
    with pytest.raises(InvalidArgumentError, match="3 keys"):
        kvstore.init([1, 2, 3], [np.ones(SHAPE, np.float32)] * 2)


def test_values_must_be_arrays(kvstore: KVStoreBase) -> None:
    with pytest.raises(InvalidArgumentError, match="numpy array"):
        kvstore.init(1, [[1.0, 2.0]])


def test_single_worker_properties(kvstore: KVStoreBase) -> None:
    assert kvstore.rank == 0
    assert kvstore.num_workers == 1
    assert kvstore.is_capable(KVStoreBase.OPTIMIZER)
    kvstore.barrier()
    kvstore._barrier()
