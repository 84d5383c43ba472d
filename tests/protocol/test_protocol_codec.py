"""Specification of the frame codec: layouts from annotations, strict zero-copy decoding."""

from __future__ import annotations

import ast
import os
import pathlib
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from protocol_strategies import any_message, message_strategy, normalize

import kvsync.protocol
from kvsync.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol.codec import MESSAGE_OF, Limits, decode, encode_frame
from kvsync.protocol.connection import Connection, Role
from kvsync.protocol.fields import BIG_BUFFER, FIELD_CODECS, SCALAR_CODES
from kvsync.protocol.framing import HEADER, HEADER_SIZE, MAGIC, PROTOCOL_VERSION, unpack_header
from kvsync.protocol.messages import (
    Barrier,
    ErrorReply,
    Get,
    IntReply,
    MultiSet,
    OkReply,
    Opcode,
    Set,
    ValueReply,
)

UNLIMITED = Limits(0, 0, 1 << 40, 1 << 32)


def _payload(parts: list[Any]) -> tuple[int, int, bytearray]:
    data = b"".join(bytes(p) for p in parts)
    h = unpack_header(data)
    assert (h.magic, h.version, h.flags) == (MAGIC, PROTOCOL_VERSION, 0)
    assert h.length == len(data) - HEADER_SIZE
    return h.request_id, h.opcode, bytearray(data[HEADER_SIZE:])


def _decode(msg: object, limits: Limits = UNLIMITED) -> object:
    _, opcode, payload = _payload(encode_frame(1, msg))
    return decode(opcode, payload, limits)


@given(msg=any_message, request_id=st.integers(0, (1 << 64) - 1))
def test_every_message_round_trips_through_the_codec(msg: object, request_id: int) -> None:
    rid, opcode, payload = _payload(encode_frame(request_id, msg))
    assert rid == request_id
    assert normalize(decode(opcode, payload, UNLIMITED)) == normalize(msg)


@pytest.mark.parametrize("cls", sorted(MESSAGE_OF.values(), key=lambda c: c.__name__))
def test_every_registered_message_has_a_codec_for_each_field(cls: type) -> None:
    import dataclasses

    for f in dataclasses.fields(cls):
        assert str(f.type) in FIELD_CODECS or str(f.type) in SCALAR_CODES, (cls, f.name)


def test_big_values_are_separate_uncopied_buffers() -> None:
    value = bytearray(BIG_BUFFER * 2)
    parts = encode_frame(3, Set(key="k", value=value))
    assert any(p is value for p in parts)


def test_arrays_are_sent_uncopied_and_decoded_as_aligned_views_of_the_payload() -> None:

    arr = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    enc, dec, _ = FIELD_CODECS["NDArray"]
    parts: list[Any] = []
    enc(arr, "a", 0, 1, parts, 0)
    assert any(isinstance(p, memoryview) and np.shares_memory(np.asarray(p), arr) for p in parts)
    payload = bytearray(b"".join(bytes(p) for p in parts))
    out, end = dec(payload, 0, len(payload), "a", 0, 1)
    assert end == len(payload)
    assert out.base is not None and np.shares_memory(out, np.frombuffer(payload, np.uint8))
    assert out.flags.aligned and out.flags.writeable
    np.testing.assert_array_equal(out, arr)


def test_non_contiguous_arrays_are_encoded_in_c_order() -> None:
    enc, dec, _ = FIELD_CODECS["NDArray"]

    arr = np.arange(12, dtype=np.int64).reshape(3, 4).T
    parts: list[Any] = []
    enc(arr, "a", 0, 1, parts, 0)
    payload = bytearray(b"".join(bytes(p) for p in parts))
    np.testing.assert_array_equal(dec(payload, 0, len(payload), "a", 0, 1)[0], arr)


@pytest.mark.parametrize("dtype", [object, "U3", "V4", "M8[s]", [("a", "i4")]])
def test_encoding_an_unsupported_dtype_is_a_local_error(dtype: Any) -> None:
    enc, _, _ = FIELD_CODECS["NDArray"]

    with pytest.raises(LocalProtocolError, match="dtype"):
        enc(np.zeros(2, dtype=dtype), "a", 0, 1, [], 0)


def _array_payload(code: bytes, shape: tuple[int, ...], nbytes: int, data: bytes) -> bytearray:
    head = bytes([len(code)]) + code + bytes([len(shape)]) + struct.pack(f"<{len(shape)}Q", *shape)
    head += struct.pack("<Q", nbytes)
    return bytearray(head + bytes(-len(head) % 16) + data)


@pytest.mark.parametrize(
    ("code", "shape", "nbytes", "data", "match"),
    [
        (b"|O8", (1,), 8, bytes(8), "dtype"),
        (b"<U4", (1,), 4, bytes(4), "dtype"),
        (b"|V8", (1,), 8, bytes(8), "dtype"),
        (b"<f8", (3,), 16, bytes(16), "needs 24 bytes"),
        (b"<f8", (2, 1 << 62), 16, bytes(16), "needs"),
        (b"<f8", (2,), 16, bytes(8), "remain"),
        (b"\xff\xfe", (1,), 1, bytes(1), "non-ASCII"),
    ],
)
def test_decoding_a_bad_array_is_a_remote_protocol_error(
    code: bytes, shape: tuple[int, ...], nbytes: int, data: bytes, match: str
) -> None:

    _, dec, _ = FIELD_CODECS["NDArray"]
    with pytest.raises(RemoteProtocolError, match=match):
        payload = _array_payload(code, shape, nbytes, data)
        dec(payload, 0, len(payload), "a", 0, 1)


def test_decoding_rejects_trailing_bytes() -> None:
    _, opcode, payload = _payload(encode_frame(1, Get(key="k", block=False, timeout_ms=0)))
    with pytest.raises(RemoteProtocolError, match="trailing"):
        decode(opcode, payload + b"x", UNLIMITED)


def test_decoding_rejects_a_length_past_the_end() -> None:
    payload = bytearray(struct.pack("<I", 100) + b"abc")
    with pytest.raises(RemoteProtocolError, match="claims 100 bytes"):
        decode(Opcode.DELETE_KEY, payload, UNLIMITED)


def test_decoding_rejects_bad_utf8_naming_the_field() -> None:
    payload = bytearray(struct.pack("<I", 2) + b"\xff\xfe")
    with pytest.raises(RemoteProtocolError, match=r"DeleteKey\.key is not valid UTF-8"):
        decode(Opcode.DELETE_KEY, payload, UNLIMITED)


def test_decoding_rejects_a_bool_that_is_not_0_or_1() -> None:
    payload = bytearray(struct.pack("<I", 1) + b"k" + b"\x02" + bytes(8))
    with pytest.raises(RemoteProtocolError, match="bool"):
        decode(Opcode.GET, payload, UNLIMITED)


def test_decoding_an_unknown_opcode_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="0x7e"):
        decode(0x7E, bytearray(), UNLIMITED)


def test_decoding_caps_keys_and_values_naming_the_limit() -> None:
    limits = Limits(max_key_bytes=4, max_value_bytes=8)
    with pytest.raises(LimitExceededError, match="limit of 4 bytes"):
        _decode(Set(key="12345", value=b""), limits)
    with pytest.raises(LimitExceededError, match="limit of 8 bytes"):
        _decode(Set(key="k", value=bytes(9)), limits)
    with pytest.raises(LimitExceededError, match="limit of 8 bytes"):
        _decode(MultiSet(keys=("a",), values=(bytes(9),)), limits)
    assert normalize(_decode(ErrorReply(code=1, message="x" * 100), limits))[2] == "x" * 100


def test_decoding_caps_item_counts_before_reading_items() -> None:
    payload = bytearray(struct.pack("<I", 10**6) + bytes(8))
    with pytest.raises(LimitExceededError, match="over the limit of 1000"):
        decode(Opcode.CHECK, payload, Limits(max_items=1000))
    with pytest.raises(RemoteProtocolError, match="claims 1000000 items"):
        decode(Opcode.CHECK, payload, UNLIMITED)


def test_encoding_with_limits_refuses_oversize_keys_and_values_naming_them() -> None:
    limits = Limits(max_key_bytes=4, max_value_bytes=8, max_frame_bytes=100)
    with pytest.raises(LimitExceededError, match=r"Set\.key 'toolong' is 7 bytes.*limit of 4"):
        encode_frame(1, Set(key="toolong", value=b""), limits)
    with pytest.raises(LimitExceededError, match="limit of 8 bytes"):
        encode_frame(1, Set(key="k", value=bytes(9)), limits)
    with pytest.raises(LimitExceededError, match="3 items, over the limit of 2"):
        encode_frame(1, MultiSet(keys=("a", "b", "c"), values=(b"",) * 3), Limits(max_items=2))
    with pytest.raises(LimitExceededError, match=r"frame is .* limit of 100"):
        encode_frame(1, MultiSet(keys=("k",) * 20, values=(b"1234",) * 20), limits)


@pytest.mark.parametrize(
    "msg",
    [
        Set(key=1, value=b""),  # type: ignore[arg-type]
        Set(key=b"k", value=b""),  # type: ignore[arg-type]
        Set(key="k", value="text"),  # type: ignore[arg-type]
        Get(key="k", block=1, timeout_ms=0),  # type: ignore[arg-type]
        Get(key="k", block=False, timeout_ms=1 << 63),
        Set(key="\ud800", value=b""),
        Set(key="k", value=memoryview(bytearray(6))[::2]),  # was a TypeError from join
        ValueReply(value=memoryview(bytearray(6))[::2]),
        ErrorReply(code=1 << 63, message="m"),
        Barrier(key="k", world_size=1, timeout_ms=-(1 << 63) - 1),
        "not a message",
    ],
)
def test_encoding_bad_fields_is_a_local_protocol_error(msg: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(1, msg)


@pytest.mark.parametrize(
    ("msg", "payload"),
    [
        (ErrorReply(code=7, message="é"), struct.pack("<qI", 7, 2) + "é".encode()),
        (Get(key="ab", block=True, timeout_ms=-2), struct.pack("<I2s?q", 2, b"ab", True, -2)),
        (Set(key="k", value=b"xyz"), struct.pack("<I", 1) + b"k" + struct.pack("<Q", 3) + b"xyz"),
        (IntReply(value=-5), struct.pack("<q", -5)),
        (OkReply(), b""),
    ],
)  # fmt: skip
def test_the_header_and_leading_fields_are_packed_as_the_spec_lays_them_out(
    msg: object, payload: bytes
) -> None:
    frame = b"".join(bytes(p) for p in encode_frame(9, msg))
    opcode = int(next(op for op, cls in MESSAGE_OF.items() if cls is type(msg)))
    assert frame == HEADER.pack(MAGIC, PROTOCOL_VERSION, opcode, 0, 9, len(payload)) + payload
    assert normalize(decode(opcode, bytearray(payload), UNLIMITED)) == normalize(msg)


def test_a_payload_shorter_than_its_leading_fixed_fields_is_named() -> None:
    with pytest.raises(RemoteProtocolError, match=r"ErrorReply\.code claims 8 bytes"):
        decode(Opcode.ERROR, bytearray(5), UNLIMITED)


@given(message_strategy(Set))
def test_decoded_buffers_are_views_of_the_payload(msg: Set) -> None:
    _, opcode, payload = _payload(encode_frame(1, msg))
    out = decode(opcode, payload, UNLIMITED)
    assert isinstance(out, Set) and isinstance(out.value, memoryview)
    assert out.value.obj is payload


def test_protocol_package_does_no_io() -> None:
    forbidden = {"socket", "threading", "time", "selectors", "select", "asyncio", "ssl"}
    root = pathlib.Path(kvsync.protocol.__file__).parent
    files = sorted(root.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = {n.split(".")[0] for n in names} & forbidden
            assert not bad, f"{path.name} imports {bad}"


@given(data=st.data(), cls=st.sampled_from(sorted(MESSAGE_OF.values(), key=lambda c: c.__name__)))
def test_any_edit_of_a_payload_gives_a_message_or_a_kvsync_error(
    data: st.DataObject, cls: type
) -> None:
    _, opcode, payload = _payload(encode_frame(1, data.draw(message_strategy(cls))))
    cut = data.draw(st.integers(0, len(payload)))
    edit = data.draw(st.sampled_from(["none", "truncate", "extend", "flip"]))
    if edit == "truncate":
        payload = payload[:cut]
    elif edit == "extend":
        payload += data.draw(st.binary(min_size=1, max_size=3))
    elif edit == "flip" and payload:
        payload[min(cut, len(payload) - 1)] ^= data.draw(st.integers(1, 255))
    limits = Limits(max_key_bytes=12, max_value_bytes=30)
    try:
        out = decode(opcode, bytearray(payload), limits)
    except (RemoteProtocolError, LimitExceededError):
        assert edit != "none" or len(payload) > 12  # refused: edited, or over a cap
        return
    assert type(out) is cls


@pytest.mark.timeout(40)
def test_parameter_server_messages_compile_on_first_use_in_a_fresh_process() -> None:
    from kvsync.protocol.ps_messages import PSBarrier

    client = Connection(Role.CLIENT)
    hello = b"".join(bytes(b) for b in client.data_to_send())
    frame = b"".join(bytes(b) for b in encode_frame(7, PSBarrier(timeout_ms=5)))
    script = f"""
import sys
from kvsync.protocol.connection import Connection, Role
assert "kvsync.protocol.ps_messages" not in sys.modules  # a store's modules alone
server = Connection(Role.SERVER)
server.receive_data(bytes.fromhex("{hello.hex()}") + bytes.fromhex("{frame.hex()}"))
event = server.next_event()  # a parameter-server frame: its messages are compiled now
print(type(event.message).__name__, event.request_id, event.message.timeout_ms)
from kvsync.protocol import codec, ps_messages
encoder = codec.ENCODERS[ps_messages.PSBarrier]
codec.register(ps_messages.PS_MESSAGE_OF)
print(codec.ENCODERS[ps_messages.PSBarrier] is encoder)  # compiled once
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PSBarrier", "7", "5", "True"]


def test_the_message_tables_cover_every_opcode_once_ps_messages_is_imported() -> None:
    # (the strategies import it: the property tests above cover every message)
    assert set(MESSAGE_OF) == set(Opcode)
