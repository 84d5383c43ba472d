"""Field codecs: how each annotation string of a message field is laid out in a payload.

Fixed-size fields (``int``, ``bool``, ``float``: :data:`SCALAR_CODES`) are laid out by
``struct`` codes, so the codec fuses a run of them into one ``struct.Struct``. Every other
annotation has an entry in :data:`FIELD_CODECS`: an encoder that appends the field's pieces
to a list of buffers (small pieces are joined later, big buffers stay uncopied views) and a
decoder that reads the field at an offset of the frame's own payload buffer, checks every
length against what is left and against the caps, and returns views of it (no copy). The
byte layout of each is documented in ``docs/protocol.md``.

Example:
    >>> enc, dec, _ = FIELD_CODECS["str"]
    >>> parts = []
    >>> enc("hé", "f", 0, 0, parts, 0)
    7
    >>> payload = bytearray(b"".join(parts))
    >>> payload, dec(payload, 0, len(payload), "f", 0, 0)
    (bytearray(b'\\x03\\x00\\x00\\x00h\\xc3\\xa9'), ('hé', 7))
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvsync import defaults
from kvsync.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol.framing import Payload

if TYPE_CHECKING:  # numpy is imported when an array is encoded or decoded, not before
    import numpy as np

__all__ = [
    "ARRAY_ALIGN",
    "BIG_BUFFER",
    "FIELD_CODECS",
    "KEY_FIELDS",
    "MAX_NDIM",
    "SCALAR_CODES",
    "Decode",
    "Encode",
    "Limits",
    "buffer_data",
    "str_data",
]

U8 = struct.Struct("<B")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
#: Buffers at least this long are sent as their own uncopied memoryview.
BIG_BUFFER: int = 16 * 1024
#: Array data starts at a payload offset that is a multiple of this (padding is zero).
ARRAY_ALIGN: int = 16
MAX_NDIM: int = 32
#: fixed-size field annotation -> its little-endian ``struct`` code (a bool is one byte).
SCALAR_CODES: dict[str, str] = {"int": "q", "bool": "?", "float": "d"}
_DTYPE_RE = re.compile(r"[<>|=][biufc][0-9]{1,2}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps applied while encoding or decoding (``0``: no key/value cap on encode).

    ``max_key_bytes`` applies to fields named ``key``/``keys``; ``max_value_bytes`` to every
    ``Buffer`` and array field; ``max_items`` to every tuple's element count.

    Example:
        >>> Limits(max_key_bytes=8).max_key_bytes
        8
    """

    max_key_bytes: int = defaults.MAX_KEY_BYTES
    max_value_bytes: int = defaults.MAX_VALUE_BYTES
    max_frame_bytes: int = defaults.MAX_FRAME_BYTES
    max_items: int = defaults.MAX_KEYS_PER_REQUEST
    #: Derived: ``(0, max_key_bytes, max_value_bytes, max_items)``, the cap of a field
    #: looked up by its index (no cap, key, value) without an attribute lookup per field.
    caps: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        caps = (0, self.max_key_bytes, self.max_value_bytes, self.max_items)
        object.__setattr__(self, "caps", caps)


#: ``(value, what, cap, max_items, parts, size) -> size``: append the field's buffers to
#: ``parts`` (``size`` payload bytes came before it) and return the payload size after it.
Encode = Callable[[Any, str, int, int, list[Any], int], int]
#: ``(payload, pos, end, what, cap, max_items) -> (value, pos after it)``.
Decode = Callable[[Payload, int, int, str, int, int], tuple[Any, int]]


def _over(what: str, n: int, cap: int) -> LimitExceededError:
    return LimitExceededError(f"{what} is {n} bytes, over the limit of {cap} bytes")


def _need(what: str, n: int, pos: int, end: int) -> None:
    """Refuse a field that claims more bytes than the payload has left."""
    if n > end - pos:
        raise RemoteProtocolError(
            f"{what} claims {n} bytes but only {end - pos} remain in the payload"
        )


def _count(value: Any, what: str, items: int) -> int:
    """The element count of a tuple field to encode, checked against ``items``."""
    if not isinstance(value, tuple | list):
        raise LocalProtocolError(f"{what} must be a tuple, not {type(value).__name__}")
    n = len(value)
    if n > items:
        raise LimitExceededError(f"{what} holds {n} items, over the limit of {items}")
    return n


def _read_count(buf: Payload, pos: int, end: int, what: str, items: int) -> int:
    _need(what, 4, pos, end)
    n: int = U32.unpack_from(buf, pos)[0]
    if n > items:
        raise LimitExceededError(f"{what} holds {n} items, over the limit of {items}")
    return n


# --- variable-size fields ----------------------------------------------------------------


def str_data(value: Any, what: str, cap: int) -> bytes:
    """The UTF-8 bytes of the ``str`` field ``what``, checked against ``cap`` (0: none).

    Raises:
        LocalProtocolError: not a ``str``, or not encodable (a lone surrogate).
        LimitExceededError: longer than ``cap`` bytes.

    Example:
        >>> str_data("hé", "f", 0)
        b'h\\xc3\\xa9'
    """
    if not isinstance(value, str):
        raise LocalProtocolError(f"{what} must be str, not {type(value).__name__}")
    try:
        data = value.encode()
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{what} {value!r:.80} is not valid UTF-8: {exc}") from None
    if cap and len(data) > cap:
        raise _over(f"{what} {value!r:.80}", len(data), cap)
    return data


def _enc_str(value: Any, what: str, cap: int, items: int, parts: list[Any], size: int) -> int:
    data = str_data(value, what, cap)
    parts += (U32.pack(len(data)), data)
    return size + 4 + len(data)


def _dec_str(buf: Payload, pos: int, end: int, what: str, cap: int, items: int) -> tuple[str, int]:
    if end - pos < 4:
        _need(what, 4, pos, end)
    n: int = U32.unpack_from(buf, pos)[0]
    if cap and n > cap:
        raise _over(what, n, cap)
    pos += 4
    if n > end - pos:
        _need(what, n, pos, end)
    try:
        return str(buf[pos : pos + n], "utf-8"), pos + n
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"{what} is not valid UTF-8: {exc}") from None


def buffer_data(value: Any, what: str, cap: int) -> bytes | bytearray | memoryview:
    """The ``Buffer`` field ``what`` as a buffer whose ``len`` counts its bytes (``value``
    itself unless it is a memoryview of other items), checked against ``cap`` (0: none).

    Raises:
        LocalProtocolError: not bytes-like, or not contiguous.
        LimitExceededError: longer than ``cap`` bytes.

    Example:
        >>> len(buffer_data(memoryview(bytes(8)).cast("d"), "f", 0))
        8
    """
    t = type(value)
    if t is bytes or t is bytearray:
        data = value
    elif not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"{what} must be bytes-like, not {type(value).__name__}")
    else:
        data = memoryview(value)
        if not data.c_contiguous:
            raise LocalProtocolError(f"{what} must be a contiguous buffer")
        if data.format != "B" or data.ndim != 1:
            data = data.cast("B")
    if cap and len(data) > cap:
        raise _over(what, len(data), cap)
    return data  # type: ignore[no-any-return]


def _enc_buffer(value: Any, what: str, cap: int, items: int, parts: list[Any], size: int) -> int:
    data = buffer_data(value, what, cap)
    parts += (U64.pack(len(data)), data)
    return size + 8 + len(data)


def _dec_buffer(
    buf: Payload, pos: int, end: int, what: str, cap: int, items: int
) -> tuple[memoryview, int]:
    if end - pos < 8:
        _need(what, 8, pos, end)
    n: int = U64.unpack_from(buf, pos)[0]
    if cap and n > cap:
        raise _over(what, n, cap)
    pos += 8
    if n > end - pos:
        _need(what, n, pos, end)
    return memoryview(buf)[pos : pos + n], pos + n


def _enc_array(value: Any, what: str, cap: int, items: int, parts: list[Any], size: int) -> int:
    import numpy as np  # on first use: a store that moves no array never imports it

    if not isinstance(value, np.ndarray):
        raise LocalProtocolError(f"{what} must be a numpy array, not {type(value).__name__}")
    dt = value.dtype
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise LocalProtocolError(f"{what} has dtype {dt}; only bool/int/uint/float/complex")
    if value.ndim > MAX_NDIM:
        raise LocalProtocolError(f"{what} has {value.ndim} dimensions, over {MAX_NDIM}")
    arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)  # keeps 0-d
    if cap and arr.nbytes > cap:
        raise _over(what, arr.nbytes, cap)
    code = dt.str.encode("ascii")
    head = struct.pack(f"<B{len(code)}sB{arr.ndim}QQ", len(code), code, arr.ndim, *arr.shape,
                       arr.nbytes)  # fmt: skip
    size += len(head)
    pad = bytes(-size % ARRAY_ALIGN)
    parts += (head, pad, arr.reshape(-1).view(np.uint8).data)
    return size + len(pad) + arr.nbytes


def _dtype(code: str, what: str) -> np.dtype[Any]:
    import numpy as np  # on first use, as in _enc_array

    if _DTYPE_RE.fullmatch(code) is None:
        raise RemoteProtocolError(f"{what} has dtype {code!r}; only plain numeric/bool dtypes")
    try:
        dt = np.dtype(code)
    except TypeError as exc:
        raise RemoteProtocolError(f"{what} has unknown dtype {code!r}") from exc
    if dt.kind not in "biufc" or dt.itemsize == 0:
        raise RemoteProtocolError(f"{what} has dtype {code!r}; only plain numeric/bool dtypes")
    return dt


def _dec_array(
    buf: Payload, pos: int, end: int, what: str, cap: int, items: int
) -> tuple[np.ndarray[Any, Any], int]:
    _need(what, 1, pos, end)
    code_len = buf[pos]
    _need(what, code_len + 1, pos + 1, end)  # the code, then ndim
    try:
        code = str(buf[pos + 1 : pos + 1 + code_len], "ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} has a non-ASCII dtype") from None
    dt = _dtype(code, what)
    pos += 1 + code_len
    ndim = buf[pos]
    if ndim > MAX_NDIM:
        raise RemoteProtocolError(f"{what} has {ndim} dimensions, over {MAX_NDIM}")
    pos += 1
    _need(what, 8 * ndim + 8, pos, end)
    *dims, nbytes = struct.unpack_from(f"<{ndim}QQ", buf, pos)
    shape = tuple(dims)
    pos += 8 * ndim + 8
    if cap and nbytes > cap:
        raise _over(what, nbytes, cap)
    count = 1
    for dim in shape:
        count *= dim
    if count * dt.itemsize != nbytes:
        raise RemoteProtocolError(
            f"{what} of shape {shape} and dtype {code} needs {count * dt.itemsize} bytes,"
            f" the frame says {nbytes}"
        )
    pad = -pos % ARRAY_ALIGN
    _need(what, pad, pos, end)
    if any(buf[pos : pos + pad]):
        raise RemoteProtocolError(f"{what} has non-zero alignment padding")
    pos += pad
    _need(what, nbytes, pos, end)
    import numpy as np  # on first use, as in _enc_array

    try:
        arr = np.frombuffer(buf, dtype=dt, count=count, offset=pos).reshape(shape)
    except ValueError as exc:  # e.g. a zero-size shape with a dimension over intp
        raise RemoteProtocolError(f"{what} has an unusable shape {shape}: {exc}") from None
    return arr, pos + nbytes


def _enc_optional_array(
    value: Any, what: str, cap: int, items: int, parts: list[Any], size: int
) -> int:
    parts.append(b"\x00" if value is None else b"\x01")
    return size + 1 if value is None else _enc_array(value, what, cap, items, parts, size + 1)


def _dec_optional_array(
    buf: Payload, pos: int, end: int, what: str, cap: int, items: int
) -> tuple[np.ndarray[Any, Any] | None, int]:
    _need(what, 1, pos, end)
    flag = buf[pos]
    if flag > 1:
        raise RemoteProtocolError(f"{what} is a bool encoded as {flag}, not 0 or 1")
    if not flag:
        return None, pos + 1
    return _dec_array(buf, pos + 1, end, what, cap, items)


def _enc_tuple(item: Encode) -> Encode:
    def encode(value: Any, what: str, cap: int, items: int, parts: list[Any], size: int) -> int:
        parts.append(U32.pack(_count(value, what, items)))
        size += 4
        for i, v in enumerate(value):
            size = item(v, f"{what}[{i}]", cap, items, parts, size)
        return size

    return encode


def _dec_tuple(item: Decode) -> Decode:
    def decode(
        buf: Payload, pos: int, end: int, what: str, cap: int, items: int
    ) -> tuple[tuple[Any, ...], int]:
        n = _read_count(buf, pos, end, what, items)
        pos += 4
        if n > end - pos:  # every item takes at least one byte
            raise RemoteProtocolError(f"{what} claims {n} items in {end - pos} bytes")
        out = []
        for _ in range(n):
            value, pos = item(buf, pos, end, what, cap, items)
            out.append(value)
        return tuple(out), pos

    return decode


def _enc_ints(value: Any, what: str, cap: int, items: int, parts: list[Any], size: int) -> int:
    n = _count(value, what, items)
    for i, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or not -(1 << 63) <= v < (1 << 63):
            raise LocalProtocolError(f"{what}[{i}]={v!r} is not a signed 64-bit integer")
    parts.append(struct.pack(f"<I{n}q", n, *value))
    return size + 4 + 8 * n


def _dec_ints(
    buf: Payload, pos: int, end: int, what: str, cap: int, items: int
) -> tuple[tuple[int, ...], int]:
    n = _read_count(buf, pos, end, what, items)
    pos += 4
    _need(what, 8 * n, pos, end)
    return struct.unpack_from(f"<{n}q", buf, pos), pos + 8 * n


#: annotation string -> (encoder, decoder, the Limits attribute capping it or "").
FIELD_CODECS: dict[str, tuple[Encode, Decode, str]] = {
    "str": (_enc_str, _dec_str, ""),
    "Buffer": (_enc_buffer, _dec_buffer, "max_value_bytes"),
    "tuple[str, ...]": (_enc_tuple(_enc_str), _dec_tuple(_dec_str), ""),
    "tuple[Buffer, ...]": (_enc_tuple(_enc_buffer), _dec_tuple(_dec_buffer), "max_value_bytes"),
    "tuple[int, ...]": (_enc_ints, _dec_ints, ""),
    "NDArray": (_enc_array, _dec_array, "max_value_bytes"),
    "tuple[NDArray, ...]": (_enc_tuple(_enc_array), _dec_tuple(_dec_array), "max_value_bytes"),
    "NDArray | None": (_enc_optional_array, _dec_optional_array, "max_value_bytes"),
}
#: Field names whose strings are keys, capped by ``max_key_bytes``.
KEY_FIELDS: frozenset[str] = frozenset({"key", "keys"})
