"""The fast encoders of the hot small messages build exactly what the general encoder does.

For every message class with a fast encoder, hypothesis draws field values of every kind
the general path handles (odd types, surrogates, big values, out-of-range integers, odd
request ids, tight caps): either both paths give the same bytes, or the fast one declines
(``None``) and ``encode_frame`` raises the general path's error.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync.errors import KVSyncError
from kvsync.protocol import codec
from kvsync.protocol.codec import Limits, encode_frame
from kvsync.protocol.messages import (
    Add,
    Append,
    Barrier,
    Check,
    DeleteKey,
    Get,
    IntReply,
    OkReply,
    QueuePush,
    Set,
    ValueReply,
    Wait,
)

pytestmark = pytest.mark.timeout(120)

keys = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    st.just("\ud800"),  # a lone surrogate: not UTF-8
    st.binary(max_size=4),  # the wrong type
)
values = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=64).map(bytearray),
    st.binary(max_size=64).map(memoryview),
    st.binary(min_size=8, max_size=8).map(lambda b: memoryview(b).cast("I")),
    st.binary(max_size=16).map(lambda b: memoryview(b)[::2]),  # not contiguous
    st.integers(codec.BIG_BUFFER - 2, codec.BIG_BUFFER + 2).map(bytes),
    st.text(max_size=4),  # the wrong type
)
ints = st.one_of(st.integers(-(1 << 64), 1 << 64), st.booleans(), st.floats(), st.none())
request_ids = st.one_of(st.integers(0, 1 << 20), st.integers(-2, 1 << 65))
limits = st.one_of(
    st.none(),
    st.builds(
        Limits,
        max_key_bytes=st.integers(0, 16),
        max_value_bytes=st.integers(0, 1 << 16),
        max_frame_bytes=st.integers(0, 1 << 17),
        max_items=st.integers(0, 8),
    ),
)
key_tuples = st.one_of(st.lists(keys, max_size=6).map(tuple), st.lists(keys, max_size=3))

messages = st.one_of(
    st.builds(Set, keys, values),
    st.builds(Append, keys, values),
    st.builds(QueuePush, keys, values),
    st.builds(Get, keys, st.one_of(st.booleans(), st.integers(0, 1)), ints),
    st.builds(Add, keys, ints),
    st.builds(Barrier, keys, ints, ints),
    st.builds(DeleteKey, keys),
    st.builds(Wait, key_tuples, ints),
    st.builds(Check, key_tuples),
    st.builds(IntReply, ints),
    st.just(OkReply()),
    st.builds(ValueReply, values),
)


def _general(request_id: int, msg: object, lim: Limits | None) -> bytes | type[Exception]:
    try:
        return b"".join(bytes(p) for p in codec._encode_fields(request_id, msg, lim))
    except (KVSyncError, TypeError, ValueError) as exc:
        return type(exc)


@given(request_ids, messages, limits)
@settings(max_examples=600, deadline=None)
def test_fast_path_equals_the_general_encoder(request_id, msg, lim):
    fast = codec._FAST[type(msg)](request_id, msg, lim)
    expected = _general(request_id, msg, lim)
    if fast is not None:
        assert fast == expected
    got: bytes | type[Exception]
    try:
        got = b"".join(bytes(p) for p in encode_frame(request_id, msg, lim))
    except (KVSyncError, TypeError, ValueError) as exc:
        got = type(exc)
    assert got == expected


def test_the_plain_cases_take_the_fast_path():
    lim = Limits()
    for msg in (
        Set("k", b"v" * 16),
        Get("k", False, 0),
        Add("n", -3),
        Barrier("b", 512, 300_000),
        Wait(("a", "b"), 1000),
        Check(("a",)),
        DeleteKey("k"),
        IntReply(7),
        OkReply(),
        ValueReply(memoryview(bytearray(b"xy"))),
    ):
        assert codec._FAST[type(msg)](5, msg, lim) is not None, msg


def test_a_big_value_stays_uncopied():
    value = bytes(codec.BIG_BUFFER)
    parts = encode_frame(1, Set("k", value))
    assert len(parts) == 2 and parts[1].obj is value
