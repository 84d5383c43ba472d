"""Field codecs: how each annotation string of a message field is laid out in a payload.

:data:`FIELD_CODECS` maps the annotation strings message classes may use to an encoder, a
decoder and the cap that applies. Encoders append to a :class:`Writer` (small pieces copied
into one buffer, big buffers kept as separate uncopied views); decoders walk a
:class:`Reader` over the frame's own payload buffer, check every length against what is
left and against :class:`Limits`, and return views of it (no copy). The byte layout of each
entry is documented in ``docs/protocol.md``.

Example:
    >>> w = Writer(None)
    >>> FIELD_CODECS["str"][0](w, "hé", "f", 0)
    >>> bytes(w.head[24:])
    b'\\x03\\x00\\x00\\x00h\\xc3\\xa9'
    >>> FIELD_CODECS["str"][1](Reader(w.head[24:], Limits()), "f", 0)
    'hé'
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvsync import defaults
from kvsync.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol.frame import HEADER_SIZE

__all__ = [
    "ARRAY_ALIGN",
    "BIG_BUFFER",
    "F64",
    "FIELD_CODECS",
    "I64",
    "KEY_FIELDS",
    "MAX_NDIM",
    "U8",
    "U32",
    "U64",
    "Decode",
    "Encode",
    "Limits",
    "Payload",
    "Reader",
    "Writer",
]

#: The little-endian layouts of the fixed-size fields and length prefixes.
U8 = struct.Struct("<B")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")
F64 = struct.Struct("<d")
#: Buffers at least this long are sent as their own uncopied memoryview.
BIG_BUFFER: int = 16 * 1024
#: Array data starts at a payload offset that is a multiple of this (padding is zero).
ARRAY_ALIGN: int = 16
MAX_NDIM: int = 32
_DTYPE_RE = re.compile(r"[<>|=][biufc][0-9]{1,2}")


#: A received frame's payload: a ``bytearray``, or for a big one a writable byte
#: ``memoryview`` (see ``kvsync.protocol.framing``). Decoders accept either.
Payload = bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps applied while encoding or decoding (``0``: no key/value cap on encode).

    ``max_key_bytes`` applies to fields named ``key``/``keys``; ``max_value_bytes`` to every
    ``Buffer`` and array field; ``max_items`` to every tuple's element count.
    """

    max_key_bytes: int = defaults.MAX_KEY_BYTES
    max_value_bytes: int = defaults.MAX_VALUE_BYTES
    max_frame_bytes: int = defaults.MAX_FRAME_BYTES
    max_items: int = defaults.MAX_KEYS_PER_REQUEST
    #: Derived: a frame whose payload is at most this many bytes is within every byte cap
    #: (its key and value are no longer than the payload); one comparison for small frames.
    within: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        caps = [c for c in (self.max_key_bytes, self.max_value_bytes) if c]
        object.__setattr__(self, "within", min([self.max_frame_bytes, *caps]))


class Writer:
    """Accumulates a frame: small fields in ``head``, big buffers as separate parts."""

    __slots__ = ("first", "head", "limits", "parts", "size")

    def __init__(self, limits: Limits | None) -> None:
        self.head = self.first = bytearray(HEADER_SIZE)
        self.parts: list[bytes | bytearray | memoryview] = [self.head]
        self.size = 0  # payload bytes so far
        self.limits = limits

    def small(self, data: bytes | bytearray | memoryview) -> None:
        self.head += data
        self.size += len(data)

    def buffer(self, mv: memoryview) -> None:
        n = mv.nbytes
        if n < BIG_BUFFER:
            self.head += mv
        else:
            self.parts.append(mv)
            self.head = bytearray()
            self.parts.append(self.head)
        self.size += n

    def cap(self, n: int, cap: int, what: str) -> None:
        if cap and n > cap:
            raise LimitExceededError(f"{what} is {n} bytes, over the limit of {cap} bytes")

    def count(self, value: Any, what: str) -> int:
        """The element count of a tuple field, checked against ``max_items``."""
        if not isinstance(value, tuple | list):
            raise LocalProtocolError(f"{what} must be a tuple, not {type(value).__name__}")
        n = len(value)
        if n >= 1 << 32 or (self.limits is not None and n > self.limits.max_items):
            limit = self.limits.max_items if self.limits is not None else (1 << 32) - 1
            raise LimitExceededError(f"{what} holds {n} items, over the limit of {limit}")
        return n


class Reader:
    """Walks a payload, refusing any length that runs past its end."""

    __slots__ = ("buf", "end", "limits", "pos", "view")

    def __init__(self, buf: Payload, limits: Limits) -> None:
        self.buf = buf
        self.view = memoryview(buf)
        self.pos = 0
        self.end = len(buf)
        self.limits = limits

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n > self.end - start:
            raise RemoteProtocolError(
                f"{what} claims {n} bytes but only {self.end - start} remain in the payload"
            )
        self.pos = start + n
        return start

    def unpack(self, st: struct.Struct, what: str) -> Any:
        start = self.pos
        size = st.size
        if size > self.end - start:
            raise RemoteProtocolError(
                f"{what} claims {size} bytes but only {self.end - start} remain in the payload"
            )
        self.pos = start + size
        return st.unpack_from(self.buf, start)[0]

    def count(self, what: str) -> int:
        n: int = self.unpack(U32, what)
        if n > self.limits.max_items:
            raise LimitExceededError(
                f"{what} holds {n} items, over the limit of {self.limits.max_items}"
            )
        return n


def _as_bytes_view(value: object, what: str) -> memoryview:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"{what} must be bytes-like, not {type(value).__name__}")
    mv = memoryview(value)
    if mv.format != "B" or mv.ndim != 1:
        if not mv.c_contiguous:
            raise LocalProtocolError(f"{what} must be a contiguous buffer")
        mv = mv.cast("B")
    return mv


# --- field encoders: (writer, value, what, cap) ---------------------------------------------


def _enc_str(w: Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be str, not {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{what} {value!r:.80} is not valid UTF-8: {exc}") from None
    w.cap(len(data), cap, f"{what} {value!r:.80}")
    w.small(U32.pack(len(data)))
    w.small(data)


def _enc_buffer(w: Writer, value: Any, what: str, cap: int) -> None:
    mv = _as_bytes_view(value, what)
    w.cap(mv.nbytes, cap, what)
    w.small(U64.pack(mv.nbytes))
    w.buffer(mv)


def _enc_int(w: Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"{what} must be int, not {type(value).__name__}")
    if not -(1 << 63) <= value < (1 << 63):
        raise LocalProtocolError(f"{what}={value} does not fit in a signed 64-bit integer")
    w.small(I64.pack(value))


def _enc_bool(w: Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, bool):
        raise LocalProtocolError(f"{what} must be bool, not {type(value).__name__}")
    w.small(b"\x01" if value else b"\x00")


def _enc_float(w: Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise LocalProtocolError(f"{what} must be float, not {type(value).__name__}")
    w.small(F64.pack(value))


def _enc_array(w: Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, np.ndarray):
        raise LocalProtocolError(f"{what} must be a numpy array, not {type(value).__name__}")
    dt = value.dtype
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise LocalProtocolError(f"{what} has dtype {dt}; only bool/int/uint/float/complex")
    if value.ndim > MAX_NDIM:
        raise LocalProtocolError(f"{what} has {value.ndim} dimensions, over {MAX_NDIM}")
    arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)  # keeps 0-d
    w.cap(arr.nbytes, cap, what)
    code = dt.str.encode("ascii")
    w.small(U8.pack(len(code)) + code + U8.pack(arr.ndim))
    w.small(struct.pack(f"<{arr.ndim}Q", *arr.shape))
    w.small(U64.pack(arr.nbytes))
    w.small(bytes(-w.size % ARRAY_ALIGN))
    w.buffer(arr.reshape(-1).view(np.uint8).data)


def _enc_optional_array(w: Writer, value: Any, what: str, cap: int) -> None:
    w.small(b"\x00" if value is None else b"\x01")
    if value is not None:
        _enc_array(w, value, what, cap)


def _enc_tuple(item: Callable[[Writer, Any, str, int], None]) -> Any:
    def encode(w: Writer, value: Any, what: str, cap: int) -> None:
        w.small(U32.pack(w.count(value, what)))
        for i, v in enumerate(value):
            item(w, v, f"{what}[{i}]", cap)

    return encode


def _enc_ints(w: Writer, value: Any, what: str, cap: int) -> None:
    w.count(value, what)
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or not -(1 << 63) <= v < (1 << 63):
            raise LocalProtocolError(f"{what}[{i}]={v!r} is not a signed 64-bit integer")
    w.small(U32.pack(len(value)) + struct.pack(f"<{len(value)}q", *value))


# --- field decoders: (reader, what, cap) -> value ---------------------------------------------


def _dec_str(r: Reader, what: str, cap: int) -> str:
    n: int = r.unpack(U32, what)
    if cap and n > cap:
        raise LimitExceededError(f"{what} is {n} bytes, over the limit of {cap} bytes")
    start = r.take(n, what)
    try:
        return str(r.buf[start : start + n], "utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"{what} is not valid UTF-8: {exc}") from None


def _dec_buffer(r: Reader, what: str, cap: int) -> memoryview:
    n: int = r.unpack(U64, what)
    if cap and n > cap:
        raise LimitExceededError(f"{what} is {n} bytes, over the limit of {cap} bytes")
    start = r.take(n, what)
    return r.view[start : start + n]


def _dec_int(r: Reader, what: str, cap: int) -> int:
    value: int = r.unpack(I64, what)
    return value


def _dec_bool(r: Reader, what: str, cap: int) -> bool:
    raw: int = r.unpack(U8, what)
    if raw > 1:
        raise RemoteProtocolError(f"{what} is a bool encoded as {raw}, not 0 or 1")
    return raw == 1


def _dec_float(r: Reader, what: str, cap: int) -> float:
    value: float = r.unpack(F64, what)
    return value


def _dtype(code: str, what: str) -> np.dtype[Any]:
    if _DTYPE_RE.fullmatch(code) is None:
        raise RemoteProtocolError(f"{what} has dtype {code!r}; only plain numeric/bool dtypes")
    try:
        dt = np.dtype(code)
    except TypeError as exc:
        raise RemoteProtocolError(f"{what} has unknown dtype {code!r}") from exc
    if dt.kind not in "biufc" or dt.itemsize == 0:
        raise RemoteProtocolError(f"{what} has dtype {code!r}; only plain numeric/bool dtypes")
    return dt


def _dec_array(r: Reader, what: str, cap: int) -> np.ndarray[Any, Any]:
    code_len: int = r.unpack(U8, what)
    start = r.take(code_len, what)
    try:
        code = str(r.buf[start : start + code_len], "ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} has a non-ASCII dtype") from None
    dt = _dtype(code, what)
    ndim: int = r.unpack(U8, what)
    if ndim > MAX_NDIM:
        raise RemoteProtocolError(f"{what} has {ndim} dimensions, over {MAX_NDIM}")
    shape = struct.unpack_from(f"<{ndim}Q", r.buf, r.take(8 * ndim, what))
    nbytes: int = r.unpack(U64, what)
    if cap and nbytes > cap:
        raise LimitExceededError(f"{what} is {nbytes} bytes, over the limit of {cap} bytes")
    count = 1
    for dim in shape:
        count *= dim
    if count * dt.itemsize != nbytes:
        raise RemoteProtocolError(
            f"{what} of shape {shape} and dtype {code} needs {count * dt.itemsize} bytes,"
            f" the frame says {nbytes}"
        )
    pad_at = r.take(-r.pos % ARRAY_ALIGN, what)
    if any(r.buf[pad_at : r.pos]):
        raise RemoteProtocolError(f"{what} has non-zero alignment padding")
    start = r.take(nbytes, what)
    try:
        return np.frombuffer(r.buf, dtype=dt, count=count, offset=start).reshape(shape)
    except ValueError as exc:  # e.g. a zero-size shape with a dimension over intp
        raise RemoteProtocolError(f"{what} has an unusable shape {shape}: {exc}") from None


def _dec_optional_array(r: Reader, what: str, cap: int) -> np.ndarray[Any, Any] | None:
    return _dec_array(r, what, cap) if _dec_bool(r, what, cap) else None


def _dec_tuple(item: Callable[[Reader, str, int], Any]) -> Any:
    def decode(r: Reader, what: str, cap: int) -> tuple[Any, ...]:
        n = r.count(what)
        if n > r.end - r.pos:  # every item takes at least one byte
            raise RemoteProtocolError(f"{what} claims {n} items in {r.end - r.pos} bytes")
        return tuple([item(r, what, cap) for _ in range(n)])

    return decode


def _dec_ints(r: Reader, what: str, cap: int) -> tuple[int, ...]:
    n = r.count(what)
    return struct.unpack_from(f"<{n}q", r.buf, r.take(8 * n, what))


Encode = Callable[[Writer, Any, str, int], None]
Decode = Callable[[Reader, str, int], Any]

#: annotation string -> (encoder, decoder, the Limits attribute capping it or "").
FIELD_CODECS: dict[str, tuple[Encode, Decode, str]] = {
    "str": (_enc_str, _dec_str, ""),
    "Buffer": (_enc_buffer, _dec_buffer, "max_value_bytes"),
    "int": (_enc_int, _dec_int, ""),
    "bool": (_enc_bool, _dec_bool, ""),
    "float": (_enc_float, _dec_float, ""),
    "tuple[str, ...]": (_enc_tuple(_enc_str), _dec_tuple(_dec_str), ""),
    "tuple[Buffer, ...]": (_enc_tuple(_enc_buffer), _dec_tuple(_dec_buffer), "max_value_bytes"),
    "tuple[int, ...]": (_enc_ints, _dec_ints, ""),
    "NDArray": (_enc_array, _dec_array, "max_value_bytes"),
    "tuple[NDArray, ...]": (_enc_tuple(_enc_array), _dec_tuple(_dec_array), "max_value_bytes"),
    "NDArray | None": (_enc_optional_array, _dec_optional_array, "max_value_bytes"),
}
#: Field names whose strings are keys, capped by ``max_key_bytes``.
KEY_FIELDS: frozenset[str] = frozenset({"key", "keys"})
