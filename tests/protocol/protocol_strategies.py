"""Hypothesis strategies for every protocol message, built from the field annotations."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kvsync.protocol.codec import BIG_BUFFER
from kvsync.protocol.messages import MESSAGE_OF

_DTYPES = [
    np.dtype(code)
    for code in (
        "|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8",
        "<f2", "<f4", "<f8", "<c8", "<c16", ">i4", ">f8",
    )
]  # fmt: skip

buffers = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=BIG_BUFFER, max_size=BIG_BUFFER + 3),
)
arrays = st.sampled_from(_DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
)

FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "str": st.text(max_size=20),
    "Buffer": buffers,
    "int": st.integers(-(1 << 63), (1 << 63) - 1),
    "bool": st.booleans(),
    "float": st.floats(allow_nan=False),
    "tuple[str, ...]": st.lists(st.text(max_size=8), max_size=4).map(tuple),
    "tuple[Buffer, ...]": st.lists(st.binary(max_size=8), max_size=4).map(tuple),
    "tuple[int, ...]": st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=4).map(tuple),
    "NDArray": arrays,
    "tuple[NDArray, ...]": st.lists(arrays, max_size=3).map(tuple),
    "NDArray | None": st.none() | arrays,
}


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Instances of ``cls`` with every field drawn from its annotation's strategy."""
    fields = {f.name: FIELD_STRATEGIES[str(f.type)] for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


any_message = st.sampled_from(sorted(MESSAGE_OF.values(), key=lambda c: c.__name__)).flatmap(
    message_strategy
)


def normalize(value: Any) -> Any:
    """A comparable form of a message or field: buffers as bytes, arrays by dtype/shape/bytes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            *(normalize(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, tuple | list):
        return tuple(normalize(v) for v in value)
    return value
