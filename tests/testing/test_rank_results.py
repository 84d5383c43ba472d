"""Specification of the pickle-free codec of rank results."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsync.testing.results import decode, encode

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.binary() | st.floats(
    allow_nan=False)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4),
    max_leaves=12,
)


@given(values)
def test_json_values_bytes_tuples_and_dicts_round_trip(value: object) -> None:
    assert decode(encode(value)) == value


@pytest.mark.parametrize("array", [np.arange(6, dtype=np.int16).reshape(2, 3),
                                   np.array([1 + 2j]), np.zeros((0, 3)), np.float64(2.5)])
def test_numpy_arrays_and_scalars_round_trip_with_dtype_and_shape(array: np.ndarray) -> None:
    back = decode(encode(array))
    assert type(back) is type(array)
    assert back.dtype == array.dtype and np.shape(back) == np.shape(array)
    np.testing.assert_array_equal(back, array)


def test_object_arrays_and_unknown_types_are_refused() -> None:
    with pytest.raises(ValueError):
        encode(np.array([object()]))
    with pytest.raises(TypeError, match="returned a frozenset"):
        encode(frozenset())


def test_unknown_tags_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown tag"):
        decode('{"__kvsync__": "pickle", "data": ""}')
