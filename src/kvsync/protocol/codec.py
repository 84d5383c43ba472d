"""Message <-> payload bytes, laid out from the dataclass field annotations.

Strategy: every message class in :data:`~kvsync.protocol.messages.MESSAGE_OF` is compiled
once into a tuple of per-field codecs looked up in :data:`FIELD_CODECS` by the field's
annotation string; adding a message needs no code here. Small fields are packed into one
``bytearray`` that also holds the frame header; large buffers and arrays are appended to
the output list as uncopied ``memoryview`` objects, ready for ``socket.sendmsg``. Decoding
slices the frame's own buffer, so ``Buffer`` fields come back as ``memoryview`` slices and
arrays as ``np.frombuffer`` views: no copy. Every length is checked against what is left of
the payload and against the caps in :class:`Limits` before it is used.

Example:
    >>> from kvsync.protocol.messages import Set, Opcode
    >>> parts = encode_frame(5, Set(key="k", value=b"v"))
    >>> payload = bytearray(b"".join(parts)[24:])
    >>> msg = Decoder(Limits()).decode(Opcode.SET, payload)
    >>> msg.key, bytes(msg.value)
    ('k', b'v')
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvsync import defaults
from kvsync.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol.frame import HEADER_SIZE, pack_header
from kvsync.protocol.messages import MESSAGE_OF, OPCODE_OF, Opcode

__all__ = ["FIELD_CODECS", "Decoder", "Limits", "encode_frame"]

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
#: Buffers at least this long are sent as their own uncopied memoryview.
BIG_BUFFER: int = 16 * 1024
#: Array data starts at a payload offset that is a multiple of this (padding is zero).
ARRAY_ALIGN: int = 16
MAX_NDIM: int = 32
_DTYPE_RE = re.compile(r"[<>|=][biufc][0-9]{1,2}")


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


class _Writer:
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


class _Reader:
    """Walks a payload, refusing any length that runs past its end."""

    __slots__ = ("buf", "end", "limits", "pos", "view")

    def __init__(self, buf: bytearray, limits: Limits) -> None:
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
        return st.unpack_from(self.buf, self.take(st.size, what))[0]

    def count(self, what: str) -> int:
        n: int = self.unpack(_U32, what)
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


def _enc_str(w: _Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be str, not {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{what} {value!r:.80} is not valid UTF-8: {exc}") from None
    w.cap(len(data), cap, f"{what} {value!r:.80}")
    w.small(_U32.pack(len(data)))
    w.small(data)


def _enc_buffer(w: _Writer, value: Any, what: str, cap: int) -> None:
    mv = _as_bytes_view(value, what)
    w.cap(mv.nbytes, cap, what)
    w.small(_U64.pack(mv.nbytes))
    w.buffer(mv)


def _enc_int(w: _Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"{what} must be int, not {type(value).__name__}")
    if not -(1 << 63) <= value < (1 << 63):
        raise LocalProtocolError(f"{what}={value} does not fit in a signed 64-bit integer")
    w.small(_I64.pack(value))


def _enc_bool(w: _Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, bool):
        raise LocalProtocolError(f"{what} must be bool, not {type(value).__name__}")
    w.small(b"\x01" if value else b"\x00")


def _enc_float(w: _Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise LocalProtocolError(f"{what} must be float, not {type(value).__name__}")
    w.small(_F64.pack(value))


def _enc_array(w: _Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, np.ndarray):
        raise LocalProtocolError(f"{what} must be a numpy array, not {type(value).__name__}")
    dt = value.dtype
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise LocalProtocolError(f"{what} has dtype {dt}; only bool/int/uint/float/complex")
    if value.ndim > MAX_NDIM:
        raise LocalProtocolError(f"{what} has {value.ndim} dimensions, over {MAX_NDIM}")
    arr = np.ascontiguousarray(value)
    w.cap(arr.nbytes, cap, what)
    code = dt.str.encode("ascii")
    w.small(_U8.pack(len(code)) + code + _U8.pack(arr.ndim))
    w.small(struct.pack(f"<{arr.ndim}Q", *arr.shape))
    w.small(_U64.pack(arr.nbytes))
    w.small(bytes(-w.size % ARRAY_ALIGN))
    w.buffer(arr.reshape(-1).view(np.uint8).data)


def _enc_optional_array(w: _Writer, value: Any, what: str, cap: int) -> None:
    w.small(b"\x00" if value is None else b"\x01")
    if value is not None:
        _enc_array(w, value, what, cap)


def _enc_tuple(item: Callable[[_Writer, Any, str, int], None]) -> Any:
    def encode(w: _Writer, value: Any, what: str, cap: int) -> None:
        if not isinstance(value, tuple | list):
            raise LocalProtocolError(f"{what} must be a tuple, not {type(value).__name__}")
        w.small(_U32.pack(len(value)))
        for i, v in enumerate(value):
            item(w, v, f"{what}[{i}]", cap)

    return encode


def _enc_ints(w: _Writer, value: Any, what: str, cap: int) -> None:
    if not isinstance(value, tuple | list):
        raise LocalProtocolError(f"{what} must be a tuple, not {type(value).__name__}")
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or not -(1 << 63) <= v < (1 << 63):
            raise LocalProtocolError(f"{what}[{i}]={v!r} is not a signed 64-bit integer")
    w.small(_U32.pack(len(value)) + struct.pack(f"<{len(value)}q", *value))


# --- field decoders: (reader, what, cap) -> value ---------------------------------------------


def _dec_str(r: _Reader, what: str, cap: int) -> str:
    n: int = r.unpack(_U32, what)
    if cap and n > cap:
        raise LimitExceededError(f"{what} is {n} bytes, over the limit of {cap} bytes")
    start = r.take(n, what)
    try:
        return r.buf[start : start + n].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"{what} is not valid UTF-8: {exc}") from None


def _dec_buffer(r: _Reader, what: str, cap: int) -> memoryview:
    n: int = r.unpack(_U64, what)
    if cap and n > cap:
        raise LimitExceededError(f"{what} is {n} bytes, over the limit of {cap} bytes")
    start = r.take(n, what)
    return r.view[start : start + n]


def _dec_int(r: _Reader, what: str, cap: int) -> int:
    value: int = r.unpack(_I64, what)
    return value


def _dec_bool(r: _Reader, what: str, cap: int) -> bool:
    raw: int = r.unpack(_U8, what)
    if raw > 1:
        raise RemoteProtocolError(f"{what} is a bool encoded as {raw}, not 0 or 1")
    return raw == 1


def _dec_float(r: _Reader, what: str, cap: int) -> float:
    value: float = r.unpack(_F64, what)
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


def _dec_array(r: _Reader, what: str, cap: int) -> np.ndarray[Any, Any]:
    code_len: int = r.unpack(_U8, what)
    start = r.take(code_len, what)
    try:
        code = r.buf[start : start + code_len].decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} has a non-ASCII dtype") from None
    dt = _dtype(code, what)
    ndim: int = r.unpack(_U8, what)
    if ndim > MAX_NDIM:
        raise RemoteProtocolError(f"{what} has {ndim} dimensions, over {MAX_NDIM}")
    shape = struct.unpack_from(f"<{ndim}Q", r.buf, r.take(8 * ndim, what))
    nbytes: int = r.unpack(_U64, what)
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


def _dec_optional_array(r: _Reader, what: str, cap: int) -> np.ndarray[Any, Any] | None:
    return _dec_array(r, what, cap) if _dec_bool(r, what, cap) else None


def _dec_tuple(item: Callable[[_Reader, str, int], Any]) -> Any:
    def decode(r: _Reader, what: str, cap: int) -> tuple[Any, ...]:
        n = r.count(what)
        if n > r.end - r.pos:  # every item takes at least one byte
            raise RemoteProtocolError(f"{what} claims {n} items in {r.end - r.pos} bytes")
        return tuple([item(r, what, cap) for _ in range(n)])

    return decode


def _dec_ints(r: _Reader, what: str, cap: int) -> tuple[int, ...]:
    n = r.count(what)
    return struct.unpack_from(f"<{n}q", r.buf, r.take(8 * n, what))


_Encode = Callable[[_Writer, Any, str, int], None]
_Decode = Callable[[_Reader, str, int], Any]

#: annotation string -> (encoder, decoder, the Limits attribute capping it or "").
FIELD_CODECS: dict[str, tuple[_Encode, _Decode, str]] = {
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


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    what: str
    encode: _Encode
    decode: _Decode
    cap_attr: str


def _compile(cls: type) -> tuple[_Field, ...]:
    out = []
    for f in dataclasses.fields(cls):
        annotation = str(f.type)
        try:
            enc, dec, cap_attr = FIELD_CODECS[annotation]
        except KeyError:
            raise LocalProtocolError(
                f"{cls.__name__}.{f.name}: no codec for annotation {annotation!r}"
            ) from None
        if f.name in KEY_FIELDS:
            cap_attr = "max_key_bytes"
        out.append(_Field(f.name, f"{cls.__name__}.{f.name}", enc, dec, cap_attr))
    return tuple(out)


_LAYOUT: dict[type, tuple[_Field, ...]] = {}


def _layout(cls: type) -> tuple[_Field, ...]:
    layout = _LAYOUT.get(cls)
    if layout is None:
        layout = _LAYOUT[cls] = _compile(cls)
    return layout


def encode_frame(
    request_id: int, msg: object, limits: Limits | None = None
) -> list[bytes | bytearray | memoryview]:
    """Header and payload of ``msg`` as a list of buffers for ``socket.sendmsg``.

    The first buffer holds the header and the small fields; values of at least
    :data:`BIG_BUFFER` bytes follow as uncopied memoryviews. With ``limits``, keys and
    values are checked against its caps (a client checks the server's caps this way).

    Raises:
        LocalProtocolError: ``msg`` is not a registered message or a field has the wrong type.
        LimitExceededError: a key, value or the whole frame is over a cap of ``limits``.

    Example:
        >>> from kvsync.protocol.messages import Ping
        >>> [bytes(b) for b in encode_frame(1, Ping())][0][:6]
        b'KVSY\\x01\\x1f'
    """
    try:
        opcode = OPCODE_OF[type(msg)]
    except KeyError:
        raise LocalProtocolError(f"{type(msg).__name__} is not a protocol message") from None
    w = _Writer(limits)
    for field in _layout(type(msg)):
        cap = getattr(limits, field.cap_attr) if limits is not None and field.cap_attr else 0
        field.encode(w, getattr(msg, field.name), field.what, cap)
    if limits is not None and w.size > limits.max_frame_bytes:
        raise LimitExceededError(
            f"{type(msg).__name__} frame is {w.size} bytes, over the limit of"
            f" {limits.max_frame_bytes} bytes"
        )
    if not 0 <= request_id < (1 << 64):
        raise LocalProtocolError(f"request id {request_id} does not fit in 64 bits")
    w.first[:HEADER_SIZE] = pack_header(opcode, request_id, w.size)
    return [p for p in w.parts if len(p)]


class Decoder:
    """Decodes payloads into messages under fixed :class:`Limits`.

    Example:
        >>> from kvsync.protocol.messages import Opcode
        >>> Decoder(Limits()).decode(Opcode.NUM_KEYS, bytearray())
        NumKeys()
    """

    __slots__ = ("_caps", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._caps: dict[type, tuple[tuple[_Field, int], ...]] = {}

    def _fields(self, cls: type) -> tuple[tuple[_Field, int], ...]:
        fields = self._caps.get(cls)
        if fields is None:
            fields = self._caps[cls] = tuple(
                (f, getattr(self.limits, f.cap_attr) if f.cap_attr else 0) for f in _layout(cls)
            )
        return fields

    def decode(self, opcode: int, payload: bytearray) -> object:
        """The message of ``opcode`` held in ``payload`` (views into it, no copy).

        Raises:
            RemoteProtocolError: unknown opcode, truncated or trailing bytes, bad UTF-8,
                bad dtype or an array whose shape does not match its byte length.
            LimitExceededError: a key, value or item count is over a cap.
        """
        try:
            cls = MESSAGE_OF[Opcode(opcode)]
        except (ValueError, KeyError):
            raise RemoteProtocolError(f"unknown opcode 0x{opcode:02x}") from None
        r = _Reader(payload, self.limits)
        values = [field.decode(r, field.what, cap) for field, cap in self._fields(cls)]
        if r.pos != r.end:
            raise RemoteProtocolError(f"{cls.__name__} payload has {r.end - r.pos} trailing bytes")
        return cls(*values)
