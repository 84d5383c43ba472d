"""The shortcuts of the hot path agree with the general code they stand in for.

``Limits.within`` (one comparison saying a small frame is within every byte cap), the fast
encoders' use of it under tight caps, and the fast scalar decoders (a bool byte must be 0
or 1) against the general field-by-field decoder.
"""

from __future__ import annotations

import dataclasses
import inspect
import struct
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kvsync.errors import KVSyncError, LimitExceededError, RemoteProtocolError
from kvsync.protocol import codec
from kvsync.protocol.codec import Decoder, Limits, encode_frame
from kvsync.protocol.frame import HEADER_SIZE
from kvsync.protocol.messages import (
    Add,
    Append,
    Barrier,
    DeleteKey,
    Get,
    IntReply,
    Opcode,
    PSHello,
    PSWaiting,
    QueuePush,
    Set,
)

# --- Limits.within ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "frame", "within"),
    [
        (4096, 1 << 30, (1 << 30) + 12288, 4096),
        (0, 0, 100, 100),  # 0: no key/value cap
        (0, 50, 100, 50),
        (70, 0, 100, 70),
        (10, 20, 5, 5),
        (30, 20, 100, 20),
        (7, 7, 7, 7),
        (0, 0, 0, 0),
        (3, 0, 0, 0),
    ],
)
def test_within_is_the_smallest_byte_cap(key: int, value: int, frame: int, within: int) -> None:
    assert Limits(key, value, frame).within == within
    assert Limits(max_key_bytes=key, max_value_bytes=value, max_frame_bytes=frame).within == within


def test_within_is_derived_not_an_argument_nor_shown() -> None:
    assert "within" not in inspect.signature(Limits).parameters
    with pytest.raises(TypeError):
        Limits(within=5)  # type: ignore[call-arg]
    assert "within" not in repr(Limits(1, 2, 3, 4))
    assert repr(Limits(1, 2, 3, 4)) == (
        "Limits(max_key_bytes=1, max_value_bytes=2, max_frame_bytes=3, max_items=4)"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        Limits().within = 3  # type: ignore[misc]


def test_replace_recomputes_within() -> None:
    base = Limits(10, 20, 30)
    assert base.within == 10
    assert dataclasses.replace(base, max_key_bytes=0).within == 20
    assert dataclasses.replace(base, max_key_bytes=0, max_value_bytes=0).within == 30
    assert dataclasses.replace(base, max_frame_bytes=4).within == 4
    assert dataclasses.replace(base, max_items=1).within == 10
    with pytest.raises(ValueError, match="within"):
        dataclasses.replace(base, within=1)  # type: ignore[call-arg]


caps = st.one_of(st.integers(0, 64), st.integers(65, 1 << 40))


@given(caps, caps, caps, st.integers(0, 1 << 20))
def test_equal_caps_give_equal_limits_whatever_within_holds(
    key: int, value: int, frame: int, items: int
) -> None:
    a, b = Limits(key, value, frame, items), Limits(key, value, frame, items)
    assert a.within == min([frame, *(c for c in (key, value) if c)])
    object.__setattr__(b, "within", a.within + 1)  # not part of equality or hash
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert {a: 1}[b] == 1
    assert a != dataclasses.replace(a, max_items=items + 1)
    assert a != Limits(key + 1, value, frame, items)


# --- the fast encoders under tight caps -----------------------------------------------------

keys = st.one_of(
    st.text(max_size=24),
    st.text(alphabet="é€𝄞a", max_size=20),  # 2-, 3- and 4-byte UTF-8
)
values = st.one_of(st.binary(max_size=80), st.binary(max_size=80).map(bytearray))
ints = st.integers(-(1 << 63), (1 << 63) - 1)
small_limits = st.builds(
    Limits,
    max_key_bytes=caps,
    max_value_bytes=caps,
    max_frame_bytes=caps,
    max_items=st.integers(0, 8),
)
messages = st.one_of(
    st.builds(Set, keys, values),
    st.builds(Append, keys, values),
    st.builds(QueuePush, keys, values),
    st.builds(Get, keys, st.booleans(), ints),
    st.builds(Add, keys, ints),
    st.builds(DeleteKey, keys),
    st.builds(Barrier, keys, ints, ints),
)


def _encoded(encode: Any, request_id: int, msg: object, lim: Limits) -> bytes | type[Exception]:
    try:
        return b"".join(bytes(p) for p in encode(request_id, msg, lim))
    except KVSyncError as exc:
        return type(exc)


@given(st.integers(0, 1 << 20), messages, small_limits)
@example(1, Set("abcd", b"xyz"), Limits(4, 0, 100))  # over `within`, within every cap
@example(1, Set("abcde", b""), Limits(4, 0, 100))  # key over its cap
@example(1, Set("ab", b"xyz"), Limits(0, 2, 100))  # value over its cap
@example(1, Set("ab", b"xy"), Limits(0, 0, 15))  # frame 16 bytes, cap 15
@example(1, Set("ab", b"xy"), Limits(0, 0, 16))  # exactly the frame cap
@example(1, Get("k", True, 5), Limits(1, 0, 14))  # 4 + 1 + 9 bytes: exactly
@example(1, Get("k", True, 5), Limits(1, 0, 13))
@example(1, Add("é", 1), Limits(1, 0, 100))  # 2 bytes of UTF-8 over a 1-byte cap
@example(1, DeleteKey(""), Limits(0, 0, 3))  # an empty key: 4 bytes
def test_fast_encoders_build_what_the_general_encoder_does_under_any_caps(
    request_id: int, msg: object, lim: Limits
) -> None:
    expected = _encoded(codec._encode_fields, request_id, msg, lim)
    assert _encoded(encode_frame, request_id, msg, lim) == expected
    fast = codec._FAST[type(msg)](request_id, msg, lim)
    if isinstance(expected, bytes):  # plain, small, within the caps: no detour
        assert fast == expected
    else:  # over a cap: the fast path must not let it through
        assert expected is LimitExceededError and fast is None


def test_a_frame_over_within_but_within_every_cap_still_takes_the_fast_path() -> None:
    lim = Limits(max_key_bytes=4, max_value_bytes=8, max_frame_bytes=64)
    assert lim.within == 4
    for msg in (
        Set("abcd", b"12345678"),
        Get("abcd", False, 0),
        Add("ab", 2),
        DeleteKey("k"),
        Barrier("abcd", 8, 1000),
    ):
        frame = codec._FAST[type(msg)](3, msg, lim)
        assert frame is not None, msg
        assert frame == b"".join(bytes(p) for p in codec._encode_fields(3, msg, lim))
    with pytest.raises(LimitExceededError, match="limit of 8 bytes"):
        encode_frame(3, Set("abcd", b"123456789"), lim)


# --- the fast scalar decoders ---------------------------------------------------------------


def _get_payload(key: bytes, block: int, timeout_ms: int) -> bytearray:
    tail = bytes([block]) + struct.pack("<q", timeout_ms)
    return bytearray(struct.pack("<I", len(key)) + key + tail)


@pytest.mark.parametrize("byte", [0, 1])
def test_a_get_block_byte_of_0_or_1_decodes_to_a_bool(byte: int) -> None:
    payload = _get_payload(b"key", byte, -7)
    msg = Decoder(Limits()).decode(Opcode.GET, payload)
    assert msg == Get("key", bool(byte), -7)
    assert type(msg.block) is bool and msg.block is bool(byte)
    fast = Decoder(Limits())._entry(Opcode.GET)[2]
    assert fast is not None and fast(payload) == msg  # decoded by the fast path


def test_a_get_block_byte_over_1_is_named_by_the_general_path() -> None:
    decoder = Decoder(Limits())
    fast = decoder._entry(Opcode.GET)[2]
    assert fast is not None
    for byte in range(2, 256):
        payload = _get_payload(b"key", byte, 0)
        assert fast(payload) is None, byte  # declined, not read as True
        with pytest.raises(RemoteProtocolError, match=rf"Get\.block .*encoded as {byte}\b"):
            decoder.decode(Opcode.GET, payload)


def test_a_bool_byte_over_1_in_a_message_of_scalars_is_refused() -> None:
    decoder = Decoder(Limits())
    payload = bytearray(struct.pack("<qq", 3, 4) + b"\x01")
    assert decoder.decode(Opcode.PS_HELLO, payload) == PSHello(3, 4, True)
    payload[-1] = 0x80
    with pytest.raises(RemoteProtocolError, match=r"PSHello\.sync .*encoded as 128"):
        decoder.decode(Opcode.PS_HELLO, payload)
    assert decoder.decode(Opcode.PS_WAITING, bytearray(b"\x00")).waiting is False
    with pytest.raises(RemoteProtocolError, match="encoded as 2"):
        decoder.decode(Opcode.PS_WAITING, bytearray(b"\x02"))


def _typed(msg: object) -> tuple[Any, ...]:
    """A message's class and each field's type and value (so ``True`` differs from ``1``)."""
    fields = dataclasses.fields(msg)  # type: ignore[arg-type]
    return (type(msg), *((type(getattr(msg, f.name)), getattr(msg, f.name)) for f in fields))


def _decoded(decode: Any) -> tuple[Any, ...] | type[Exception]:
    try:
        return _typed(decode())
    except KVSyncError as exc:
        return type(exc)


_SCALAR_CLASSES = {Opcode.GET: Get, Opcode.ADD: Add, Opcode.INT: IntReply, Opcode.BARRIER: Barrier}
_SCALAR_CLASSES |= {Opcode.PS_HELLO: PSHello, Opcode.PS_WAITING: PSWaiting}


@st.composite
def _scalar_payloads(draw: Any) -> tuple[Opcode, bytearray]:
    """Payloads of the scalar messages: valid ones, with a byte changed, cut, or random."""
    opcode = draw(st.sampled_from(sorted(_SCALAR_CLASSES)))
    cls = _SCALAR_CLASSES[opcode]
    valid = {
        Get: st.builds(Get, keys, st.booleans(), ints),
        Add: st.builds(Add, keys, ints),
        Barrier: st.builds(Barrier, keys, ints, ints),
        IntReply: st.builds(IntReply, ints),
        PSHello: st.builds(PSHello, ints, ints, st.booleans()),
        PSWaiting: st.builds(PSWaiting, st.booleans()),
    }[cls]
    payload = bytearray(b"".join(bytes(p) for p in encode_frame(0, draw(valid)))[HEADER_SIZE:])
    how = draw(st.sampled_from(["valid", "byte", "cut", "extra", "random"]))
    if how == "byte" and payload:
        payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        del payload[draw(st.integers(0, len(payload))) :]
    elif how == "extra":
        payload += draw(st.binary(min_size=1, max_size=3))
    elif how == "random":
        payload = bytearray(draw(st.binary(max_size=40)))
    return opcode, payload


@given(_scalar_payloads(), st.one_of(st.just(Limits()), small_limits))
@example((Opcode.GET, _get_payload(b"k", 2, 0)), Limits())
@example((Opcode.GET, _get_payload(b"\xff", 1, 0)), Limits())
@example((Opcode.GET, _get_payload(b"kk", 1, 0)), Limits(1, 0, 100))
@example((Opcode.INT, bytearray(7)), Limits())
@example((Opcode.PS_WAITING, bytearray(b"\xff")), Limits())
def test_fast_scalar_decoding_equals_the_general_decoder(
    opcode_payload: tuple[Opcode, bytearray], lim: Limits
) -> None:
    opcode, payload = opcode_payload
    decoder = Decoder(lim)
    entry = decoder._entry(opcode)
    assert entry[2] is not None  # these classes have a fast decoder
    expected = _decoded(lambda: codec._decode_fields(entry, bytearray(payload), lim))
    assert _decoded(lambda: decoder.decode(opcode, bytearray(payload))) == expected
    fast = entry[2](bytearray(payload))
    if fast is not None:  # when the fast path accepts, it is the general path's message
        assert _typed(fast) == expected
