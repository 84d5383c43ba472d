"""Fixed-size fields: a run of them is one fused ``struct`` in the compiled codec.

A bool byte must be 0 or 1 (a wider one is named, not read as ``True``); any payload of a
message with scalar fields, valid or mangled, decodes to the message with each field of its
annotated type, or raises a kvsync error; never anything else.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kvsync.errors import KVSyncError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol.codec import Limits, decode, encode_frame
from kvsync.protocol.framing import HEADER_SIZE
from kvsync.protocol.messages import Add, Barrier, Get, IntReply, Opcode
from kvsync.protocol.ps_messages import PSHello, PSWaiting

keys = st.text(max_size=8)
ints = st.integers(-(1 << 63), (1 << 63) - 1)
small_limits = st.builds(Limits, st.integers(0, 8), st.integers(0, 8), st.integers(0, 40))


def _get_payload(key: bytes, block: int, timeout_ms: int) -> bytearray:
    tail = bytes([block]) + struct.pack("<q", timeout_ms)
    return bytearray(struct.pack("<I", len(key)) + key + tail)


@pytest.mark.parametrize("byte", [0, 1])
def test_a_get_block_byte_of_0_or_1_decodes_to_a_bool(byte: int) -> None:
    msg = decode(Opcode.GET, _get_payload(b"key", byte, -7), Limits())
    assert msg == Get("key", bool(byte), -7)
    assert type(msg.block) is bool and msg.block is bool(byte)


def test_a_get_block_byte_over_1_is_named() -> None:
    for byte in range(2, 256):
        with pytest.raises(RemoteProtocolError, match=rf"Get\.block .*encoded as {byte}\b"):
            decode(Opcode.GET, _get_payload(b"key", byte, 0), Limits())


def test_a_bool_byte_over_1_in_a_message_of_scalars_is_refused() -> None:
    payload = bytearray(struct.pack("<qq", 3, 4) + b"\x01")
    assert decode(Opcode.PS_HELLO, payload, Limits()) == PSHello(3, 4, True)
    payload[-1] = 0x80
    with pytest.raises(RemoteProtocolError, match=r"PSHello\.sync .*encoded as 128"):
        decode(Opcode.PS_HELLO, payload, Limits())
    assert decode(Opcode.PS_WAITING, bytearray(b"\x00"), Limits()).waiting is False
    with pytest.raises(RemoteProtocolError, match="encoded as 2"):
        decode(Opcode.PS_WAITING, bytearray(b"\x02"), Limits())


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (Get("k", 1, 0), r"Get\.block must be bool, not int"),  # type: ignore[arg-type]
        (Get("k", True, 1.5), r"Get\.timeout_ms must be int, not float"),  # type: ignore[arg-type]
        (Add("k", True), r"Add\.amount must be int, not bool"),
        (Add("k", 1 << 63), r"Add\.amount=\d+ does not fit"),
        (IntReply(-(1 << 63) - 1), r"IntReply\.value=-\d+ does not fit"),
    ],
)
def test_a_scalar_of_the_wrong_type_or_range_is_a_local_error_naming_it(
    msg: object, match: str
) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_frame(1, msg)


def _typed(msg: object) -> tuple[Any, ...]:
    """A message's class and each field's type and value (so ``True`` differs from ``1``)."""
    fields = dataclasses.fields(msg)  # type: ignore[arg-type]
    return (type(msg), *((type(getattr(msg, f.name)), getattr(msg, f.name)) for f in fields))


_SCALAR_CLASSES = {Opcode.GET: Get, Opcode.ADD: Add, Opcode.INT: IntReply, Opcode.BARRIER: Barrier}
_SCALAR_CLASSES |= {Opcode.PS_HELLO: PSHello, Opcode.PS_WAITING: PSWaiting}
_VALID = {
    Get: st.builds(Get, keys, st.booleans(), ints),
    Add: st.builds(Add, keys, ints),
    Barrier: st.builds(Barrier, keys, ints, ints),
    IntReply: st.builds(IntReply, ints),
    PSHello: st.builds(PSHello, ints, ints, st.booleans()),
    PSWaiting: st.builds(PSWaiting, st.booleans()),
}
_TYPES = {"str": str, "int": int, "bool": bool}


@st.composite
def _scalar_payloads(draw: Any) -> tuple[Opcode, bytearray]:
    """Payloads of the scalar messages: valid ones, with a byte changed, cut, or random."""
    opcode = draw(st.sampled_from(sorted(_SCALAR_CLASSES)))
    msg = draw(_VALID[_SCALAR_CLASSES[opcode]])
    payload = bytearray(b"".join(bytes(p) for p in encode_frame(0, msg))[HEADER_SIZE:])
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
def test_any_scalar_payload_gives_a_well_typed_message_or_a_kvsync_error(
    opcode_payload: tuple[Opcode, bytearray], lim: Limits
) -> None:
    opcode, payload = opcode_payload
    try:
        msg = decode(opcode, payload, lim)
    except KVSyncError:
        return
    cls = _SCALAR_CLASSES[opcode]
    assert type(msg) is cls
    for f in dataclasses.fields(cls):
        assert type(getattr(msg, f.name)) is _TYPES[str(f.type)], f.name
    again = bytearray(b"".join(bytes(p) for p in encode_frame(0, msg))[HEADER_SIZE:])
    assert again == payload and _typed(decode(opcode, again, lim)) == _typed(msg)
