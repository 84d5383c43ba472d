"""Hypothesis strategies for every protocol message, built from the field annotations."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kvsync.protocol.ps_messages  # noqa: F401 (compiled on first use: every message now)
from kvsync.protocol.codec import MESSAGE_OF, encode_frame
from kvsync.protocol.connection import NEED_DATA, Connection, Event
from kvsync.protocol.fields import BIG_BUFFER
from kvsync.protocol.framing import MAGIC, PROTOCOL_VERSION
from kvsync.protocol.messages import Hello

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

#: The first bytes of a frame of this version, cut short.
_HEAD = MAGIC + bytes([PROTOCOL_VERSION])


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


#: Every request class, and every reply class (by opcode range).
REQUESTS = sorted((c for op, c in MESSAGE_OF.items() if 0x10 <= op < 0x80), key=str)
REPLIES = sorted((c for op, c in MESSAGE_OF.items() if op >= 0x80), key=str)


def join_buffers(parts: list[Any]) -> bytes:
    """The bytes of an encoder's buffer list."""
    return b"".join(bytes(p) for p in parts)


def drain_events(conn: Connection, got: list[Any]) -> None:
    """Append ``(request_id, normalized message)`` of every event ``conn`` has ready."""
    for _ in range(10_000):
        ev = conn.next_event()
        if ev is NEED_DATA:
            return
        assert isinstance(ev, Event)
        got.append((ev.request_id, normalize(ev.message)))
    raise AssertionError("unbounded event loop")


def fuzz_stream() -> st.SearchStrategy[bytes]:
    """Client byte streams: random bytes, or a Hello and valid requests, randomly mutated and
    cut then followed by random bytes, or valid and then the start of a header."""
    hello = join_buffers(encode_frame(0, Hello(version=PROTOCOL_VERSION, nonce=b"")))
    valid = st.lists(st.sampled_from(REQUESTS).flatmap(message_strategy), max_size=4).map(
        lambda ms: hello + b"".join(join_buffers(encode_frame(i, m)) for i, m in enumerate(ms))
    )

    return st.one_of(st.binary(max_size=200), mutated(valid), valid.map(lambda s: s + _HEAD))


@st.composite
def mutated(draw: Any, valid: st.SearchStrategy[bytes]) -> bytes:
    """A ``valid`` stream with up to 3 bytes changed, cut anywhere, then random bytes."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) + draw(st.binary(max_size=40))
