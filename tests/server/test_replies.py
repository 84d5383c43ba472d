"""The server's fast reply encoder gives exactly encode_frame's bytes, or defers to it."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsync.errors import LocalProtocolError
from kvsync.protocol.codec import BIG_BUFFER, encode_frame
from kvsync.protocol.messages import ErrorReply, IntReply, KeysReply, OkReply, ValueReply
from kvsync.server.replies import encode_reply

request_ids = st.integers(0, (1 << 64) - 1)
values = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: memoryview(bytearray(b))),
    st.binary(max_size=64).map(lambda b: memoryview(b"xx" + b)[2:]),  # a slice
    st.binary(min_size=BIG_BUFFER - 2, max_size=BIG_BUFFER + 2),
    st.binary(max_size=16).map(bytearray),
)
replies = st.one_of(
    st.just(OkReply()),
    st.builds(IntReply, st.integers(-(1 << 63), (1 << 63) - 1)),
    st.builds(ValueReply, values),
    st.builds(KeysReply, st.lists(st.text(max_size=4), max_size=3).map(tuple)),
    st.builds(ErrorReply, st.integers(0, 20), st.text(max_size=10)),
)


def _joined(parts: list[Any]) -> bytes:
    return b"".join(bytes(p) for p in parts)


@given(request_id=request_ids, reply=replies)
def test_every_reply_encodes_to_the_bytes_of_encode_frame(request_id: int, reply: object) -> None:
    assert _joined(encode_reply(request_id, reply)) == _joined(encode_frame(request_id, reply))


@given(request_id=request_ids, reply=st.one_of(
    st.just(OkReply()),
    st.builds(IntReply, st.integers(-(1 << 63), (1 << 63) - 1)),
    st.builds(ValueReply, st.binary(max_size=BIG_BUFFER - 1)),
))  # fmt: skip
def test_the_common_small_replies_are_one_buffer(request_id: int, reply: object) -> None:
    parts = encode_reply(request_id, reply)
    assert len(parts) == 1 and bytes(parts[0]) == _joined(encode_frame(request_id, reply))


def test_a_non_byte_view_is_encoded_like_encode_frame_does() -> None:
    view = memoryview(np.arange(3, dtype=np.int32))
    assert _joined(encode_reply(1, ValueReply(view))) == _joined(encode_frame(1, ValueReply(view)))


@pytest.mark.parametrize(
    ("request_id", "reply"),
    [(-1, OkReply()), (1 << 64, IntReply(1)), (2, IntReply(1 << 63)), (3, IntReply(True)),
     (4, ValueReply("text"))],  # type: ignore[arg-type]
)  # fmt: skip
def test_bad_replies_raise_what_encode_frame_raises(request_id: int, reply: object) -> None:
    with pytest.raises(LocalProtocolError) as expected:
        encode_frame(request_id, reply)
    with pytest.raises(LocalProtocolError, match=re.escape(str(expected.value))):
        encode_reply(request_id, reply)
