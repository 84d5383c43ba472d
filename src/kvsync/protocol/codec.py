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
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass

from kvsync.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol.fields import (
    BIG_BUFFER,
    FIELD_CODECS,
    I64,
    KEY_FIELDS,
    U32,
    U64,
    Decode,
    Encode,
    Limits,
    Payload,
    Reader,
    Writer,
)
from kvsync.protocol.frame import HEADER_SIZE, MAGIC, PROTOCOL_VERSION, pack_header
from kvsync.protocol.messages import (
    MESSAGE_OF,
    OPCODE_OF,
    Add,
    Append,
    Barrier,
    Check,
    DeleteKey,
    Get,
    IntReply,
    OkReply,
    Opcode,
    QueuePush,
    Set,
    ValueReply,
    Wait,
)

__all__ = [
    "BIG_BUFFER",
    "FIELD_CODECS",
    "Decoder",
    "FastEncode",
    "Limits",
    "encode_frame",
    "fast_encoder",
]


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    what: str
    encode: Encode
    decode: Decode
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


#: message class -> (opcode, its fields as (name, encoder, what, cap attribute)).
_ENCODE: dict[type, tuple[int, tuple[tuple[str, Encode, str, str], ...]]] = {}


def _encode_layout(cls: type) -> tuple[int, tuple[tuple[str, Encode, str, str], ...]]:
    try:
        opcode = int(OPCODE_OF[cls])
    except KeyError:
        raise LocalProtocolError(f"{cls.__name__} is not a protocol message") from None
    entry = _ENCODE[cls] = (
        opcode,
        tuple((f.name, f.encode, f.what, f.cap_attr) for f in _layout(cls)),
    )
    return entry


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
    cls = type(msg)
    fast = _FAST.get(cls)
    if fast is not None:
        frame = fast(request_id, msg, limits)
        if frame is not None:
            return [frame]
    return _encode_fields(request_id, msg, limits)


def _encode_fields(
    request_id: int, msg: object, limits: Limits | None
) -> list[bytes | bytearray | memoryview]:
    """The general encoder: every message, every field type, every error."""
    cls = type(msg)
    enc = _ENCODE.get(cls)
    if enc is None:
        enc = _encode_layout(cls)
    opcode, fields = enc
    if not fields:  # OkReply, Ping, ...: the header is the whole frame
        if not 0 <= request_id < (1 << 64):
            raise LocalProtocolError(f"request id {request_id} does not fit in 64 bits")
        return [pack_header(opcode, request_id, 0)]
    w = Writer(limits)
    for name, encode, what, cap_attr in fields:
        cap = getattr(limits, cap_attr) if limits is not None and cap_attr else 0
        encode(w, getattr(msg, name), what, cap)
    if limits is not None and w.size > limits.max_frame_bytes:
        raise LimitExceededError(
            f"{cls.__name__} frame is {w.size} bytes, over the limit of"
            f" {limits.max_frame_bytes} bytes"
        )
    if not 0 <= request_id < (1 << 64):
        raise LocalProtocolError(f"request id {request_id} does not fit in 64 bits")
    w.first[:HEADER_SIZE] = pack_header(opcode, request_id, w.size)
    if len(w.parts) == 1:
        return w.parts
    return [p for p in w.parts if len(p)]


# --- fast encoders for the small messages of the hot path ------------------------------------
# Each builds the whole frame as one ``bytes`` in a couple of calls, byte for byte what
# ``_encode_fields`` builds, but only for the plain case: exact types, small values, within
# the caps. Anything else (a subclass, a surrogate in a key, a value worth sending uncopied,
# a cap or range exceeded) returns ``None`` and takes the general path, which raises the
# errors. tests/protocol/test_fast_encode.py checks the equality with hypothesis.

#: A fast encoder: ``(request_id, msg, limits)`` -> the whole frame, or ``None`` (see
#: :func:`fast_encoder`).
FastEncode = Callable[[int, object, "Limits | None"], "bytes | None"]
_HEAD_U32 = struct.Struct("<4sBBHQQI")  # header + the first str field's length
_HEAD_I64 = struct.Struct("<4sBBHQQq")  # header + one int field
_HEAD_U64 = struct.Struct("<4sBBHQQQ")  # header + a Buffer field's length
_SMALL = BIG_BUFFER  # values at least this long are sent uncopied by the general path


def _fits(limits: Limits | None, key_bytes: int, value_bytes: int, size: int) -> bool:
    """Whether a frame with these sizes is within ``limits`` (0 caps nothing); a payload
    of at most ``limits.within`` bytes is, in one comparison."""
    if limits is None or size <= limits.within:
        return True
    return not (
        (limits.max_key_bytes and key_bytes > limits.max_key_bytes)
        or (limits.max_value_bytes and value_bytes > limits.max_value_bytes)
        or size > limits.max_frame_bytes
    )


def _plain_bytes(value: object) -> bool:
    """``value`` is bytes-like with one-byte items in one piece (no cast or copy needed)."""
    t = type(value)
    if t is bytes or t is bytearray:
        return True
    return t is memoryview and value.format == "B" and value.ndim == 1 and value.contiguous  # type: ignore[attr-defined]


def _fast_key_value(opcode: int) -> FastEncode:
    def encode(request_id: int, msg: object, limits: Limits | None) -> bytes | None:
        key, value = msg.key, msg.value  # type: ignore[attr-defined]
        if type(key) is not str or (type(value) is not bytes and not _plain_bytes(value)):
            return None
        try:
            k = key.encode()
            size = 12 + len(k) + len(value)
            if len(value) >= _SMALL or not _fits(limits, len(k), len(value), size):
                return None
            head = _HEAD_U32.pack(MAGIC, PROTOCOL_VERSION, opcode, 0, request_id, size, len(k))
        except (UnicodeEncodeError, struct.error):
            return None
        return b"".join((head, k, U64.pack(len(value)), value))

    return encode


def _fast_key(opcode: int, tail: Callable[[object], bytes] | None) -> FastEncode:
    def encode(request_id: int, msg: object, limits: Limits | None) -> bytes | None:
        key = msg.key  # type: ignore[attr-defined]
        if type(key) is not str:
            return None
        try:
            rest = b"" if tail is None else tail(msg)
            k = key.encode()
            size = 4 + len(k) + len(rest)
            if not _fits(limits, len(k), 0, size):
                return None
            head = _HEAD_U32.pack(MAGIC, PROTOCOL_VERSION, opcode, 0, request_id, size, len(k))
        except (UnicodeEncodeError, struct.error, TypeError):
            return None
        return b"".join((head, k, rest))

    return encode


#: fixed-size field annotation -> its struct code (a bool is one byte, 0 or 1).
_SCALAR_CODES = {"int": "q", "bool": "?", "float": "d"}
_SCALAR_TYPES = {"int": int, "bool": bool, "float": float}


def _scalar_tail(cls: type) -> Callable[[object], bytes]:
    """The bytes of the one or two fixed-size fields after ``cls``'s leading key, laid out
    from their annotations (as :func:`_scalars` reads them); raises ``TypeError`` for a
    value not of its annotation's exact type (the general path then names it)."""
    fields = dataclasses.fields(cls)[1:]
    annotations = [str(f.type) for f in fields]
    layout = struct.Struct("<" + "".join(_SCALAR_CODES[a] for a in annotations))
    kinds = [_SCALAR_TYPES[a] for a in annotations]
    get = operator.attrgetter(*(f.name for f in fields))
    if len(fields) == 1:
        (kind,) = kinds

        def one(msg: object) -> bytes:
            value = get(msg)
            if type(value) is not kind:
                raise TypeError
            return layout.pack(value)

        return one
    if len(fields) != 2:
        raise ValueError(f"{cls.__name__}: a fast tail takes one or two fields")
    first, second = kinds

    def two(msg: object) -> bytes:
        x, y = get(msg)
        if type(x) is not first or type(y) is not second:
            raise TypeError
        return layout.pack(x, y)

    return two


def _fast_keys(opcode: int, with_timeout: bool) -> FastEncode:
    def encode(request_id: int, msg: object, limits: Limits | None) -> bytes | None:
        keys = msg.keys  # type: ignore[attr-defined]
        if type(keys) is not tuple or len(keys) > 64:
            return None
        try:
            parts: list[bytes] = []
            longest = 0
            for key in keys:
                if type(key) is not str:
                    return None
                k = key.encode()
                longest = max(longest, len(k))
                parts += (U32.pack(len(k)), k)
            if with_timeout:
                timeout_ms = msg.timeout_ms  # type: ignore[attr-defined]
                if type(timeout_ms) is not int:
                    return None
                parts.append(I64.pack(timeout_ms))
            body = b"".join(parts)
            if not _fits(limits, longest, 0, 4 + len(body)) or (
                limits is not None and len(keys) > limits.max_items
            ):
                return None
            head = _HEAD_U32.pack(
                MAGIC, PROTOCOL_VERSION, opcode, 0, request_id, 4 + len(body), len(keys)
            )
        except (UnicodeEncodeError, struct.error):
            return None
        return head + body

    return encode


def _fast_int_reply(request_id: int, msg: object, limits: Limits | None) -> bytes | None:
    value = msg.value  # type: ignore[attr-defined]
    if type(value) is not int or not _fits(limits, 0, 0, 8):
        return None
    try:
        frame: bytes = _HEAD_I64.pack(MAGIC, PROTOCOL_VERSION, _INT_REPLY, 0, request_id, 8, value)
    except struct.error:
        return None
    return frame


def _fast_value_reply(request_id: int, msg: object, limits: Limits | None) -> bytes | None:
    value = msg.value  # type: ignore[attr-defined]
    if (type(value) is not bytes and not _plain_bytes(value)) or len(value) >= _SMALL:
        return None
    if not _fits(limits, 0, len(value), 8 + len(value)):
        return None
    try:
        head = _HEAD_U64.pack(
            MAGIC, PROTOCOL_VERSION, _VALUE_REPLY, 0, request_id, 8 + len(value), len(value)
        )
    except struct.error:
        return None
    frame: bytes = head + value
    return frame


def _fast_ok_reply(request_id: int, msg: object, limits: Limits | None) -> bytes | None:
    try:
        frame = pack_header(_OK_REPLY, request_id, 0)
    except struct.error:
        return None
    return frame


_OK_REPLY = int(Opcode.OK)
_INT_REPLY = int(Opcode.INT)
_VALUE_REPLY = int(Opcode.VALUE)
#: message class -> its fast encoder (see above); every other class takes the general path.
_FAST: dict[type, FastEncode] = {
    Set: _fast_key_value(int(Opcode.SET)),
    Append: _fast_key_value(int(Opcode.APPEND)),
    QueuePush: _fast_key_value(int(Opcode.QUEUE_PUSH)),
    Get: _fast_key(int(Opcode.GET), _scalar_tail(Get)),
    Add: _fast_key(int(Opcode.ADD), _scalar_tail(Add)),
    Barrier: _fast_key(int(Opcode.BARRIER), _scalar_tail(Barrier)),
    DeleteKey: _fast_key(int(Opcode.DELETE_KEY), None),
    Wait: _fast_keys(int(Opcode.WAIT), with_timeout=True),
    Check: _fast_keys(int(Opcode.CHECK), with_timeout=False),
    OkReply: _fast_ok_reply,
    IntReply: _fast_int_reply,
    ValueReply: _fast_value_reply,
}


def fast_encoder(cls: type) -> FastEncode | None:
    """The fast encoder of ``cls`` (``None`` if it has none): ``(request_id, msg, limits)``
    -> the whole frame as one ``bytes``, as :func:`encode_frame` would build it, or
    ``None`` when :func:`encode_frame` must decide (and raise any error). A caller that
    sends many frames looks it up once instead of on every :func:`encode_frame`.

    Example:
        >>> from kvsync.protocol.messages import Add, Ping
        >>> fast_encoder(Add)(7, Add("n", 1), None) == bytes(encode_frame(7, Add("n", 1))[0])
        True
        >>> fast_encoder(Ping) is None
        True
    """
    return _FAST.get(cls)


#: A decoder for the common case: the message, or ``None`` when the general path must decide.
_FastDecode = Callable[[Payload], object | None]
_DecodeEntry = tuple[type, tuple[tuple[Decode, str, int], ...], _FastDecode | None]
#: (caps, opcode) -> the decoding entry, shared by every Decoder with those caps.
_DECODE: dict[tuple[Limits, int], _DecodeEntry] = {}


def _scalars(
    annotations: list[str],
) -> tuple[int, Callable[[Payload, int], tuple[object, ...] | None]]:
    """(byte size, unpacker) of consecutive fixed-size fields: the unpacker gives their
    values at an offset (bools as ``bool``), or ``None`` when a bool byte is not 0 or 1."""
    codes = [_SCALAR_CODES[a] for a in annotations]
    layout = struct.Struct("<" + "".join(codes))
    bool_at = tuple(
        struct.calcsize("<" + "".join(codes[:i])) for i, a in enumerate(annotations) if a == "bool"
    )
    if not bool_at:
        return layout.size, layout.unpack_from

    def unpack(payload: Payload, offset: int) -> tuple[object, ...] | None:
        for at in bool_at:
            if payload[offset + at] > 1:
                return None
        values: tuple[object, ...] = layout.unpack_from(payload, offset)
        return values

    return layout.size, unpack


def _key_then_scalars(cls: type, key_cap: int, annotations: list[str]) -> _FastDecode:
    """Fast decoder of a message made of a ``str`` then fixed-size fields (Get, Add, ...)."""
    size, unpack = _scalars(annotations)

    def decode(payload: Payload) -> object | None:
        if len(payload) < 4:
            return None
        end = 4 + U32.unpack_from(payload)[0]
        if len(payload) != end + size or (key_cap and end - 4 > key_cap):
            return None
        values = unpack(payload, end)
        if values is None:
            return None
        try:
            key = str(payload[4:end], "utf-8")
        except UnicodeDecodeError:
            return None
        msg: object = cls(key, *values)
        return msg

    return decode


def _only_scalars(cls: type, annotations: list[str]) -> _FastDecode:
    """Fast decoder of a message made only of fixed-size fields (IntReply, ...)."""
    size, unpack = _scalars(annotations)

    def decode(payload: Payload) -> object | None:
        values = unpack(payload, 0) if len(payload) == size else None
        if values is None:
            return None
        msg: object = cls(*values)
        return msg

    return decode


def _only_buffer(cls: type, value_cap: int) -> _FastDecode:
    """Fast decoder of a message made of one ``Buffer`` (ValueReply)."""

    def decode(payload: Payload) -> object | None:
        size = len(payload)
        if size < 8:
            return None
        n = U64.unpack_from(payload)[0]
        if 8 + n != size or (value_cap and n > value_cap):
            return None
        msg: object = cls(memoryview(payload)[8:])
        return msg

    return decode


def _key_then_buffer(cls: type, key_cap: int, value_cap: int) -> _FastDecode:
    """Fast decoder of a message made of a ``str`` then a ``Buffer`` (Set, QueuePush, ...)."""

    def decode(payload: Payload) -> object | None:
        size = len(payload)
        if size < 12:
            return None
        end = 4 + U32.unpack_from(payload)[0]
        if end + 8 > size or (key_cap and end - 4 > key_cap):
            return None
        n = U64.unpack_from(payload, end)[0]
        if end + 8 + n != size or (value_cap and n > value_cap):
            return None
        try:
            key = str(payload[4:end], "utf-8")
        except UnicodeDecodeError:
            return None
        msg: object = cls(key, memoryview(payload)[end + 8 :])
        return msg

    return decode


def _fast_decoder(cls: type, limits: Limits) -> _FastDecode | None:
    """A fast decoder for ``cls`` when its layout is scalars, one buffer, or a key then
    scalars or one buffer.

    It returns the very message the general path would, or ``None`` for any payload it
    does not fully accept (the general path then decodes it or names what is wrong).
    """
    fields = dataclasses.fields(cls)
    annotations = [str(f.type) for f in fields]
    if not fields:  # OkReply, Ping, ...: one shared (immutable) instance
        instance = cls()
        return lambda payload: None if payload else instance
    if annotations == ["Buffer"]:
        return _only_buffer(cls, limits.max_value_bytes)
    if annotations and all(a in _SCALAR_CODES for a in annotations):
        return _only_scalars(cls, annotations)
    if not annotations or annotations[0] != "str":
        return None
    key_cap = limits.max_key_bytes if fields[0].name in KEY_FIELDS else 0
    if annotations[1:] == ["Buffer"]:
        return _key_then_buffer(cls, key_cap, limits.max_value_bytes)
    if all(a in _SCALAR_CODES for a in annotations[1:]):
        return _key_then_scalars(cls, key_cap, annotations[1:])
    return None


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
        #: opcode -> (message class, its fields with the cap of each, its fast decoder or
        #: None), filled on first use.
        self._caps: dict[int, _DecodeEntry] = {}

    def _entry(self, opcode: int) -> _DecodeEntry:
        entry = _DECODE.get((self.limits, opcode))  # shared: a server makes a Decoder per client
        if entry is None:
            try:
                cls = MESSAGE_OF[Opcode(opcode)]
            except (ValueError, KeyError):
                raise RemoteProtocolError(f"unknown opcode 0x{opcode:02x}") from None
            fields = tuple(
                (f.decode, f.what, getattr(self.limits, f.cap_attr) if f.cap_attr else 0)
                for f in _layout(cls)
            )
            entry = (cls, fields, _fast_decoder(cls, self.limits))
            if len(_DECODE) < 4096:  # bounded: one entry per (caps, opcode) in use
                _DECODE[(self.limits, opcode)] = entry
        self._caps[opcode] = entry
        return entry

    def decode(self, opcode: int, payload: Payload) -> object:
        """The message of ``opcode`` held in ``payload`` (views into it, no copy).

        Raises:
            RemoteProtocolError: unknown opcode, truncated or trailing bytes, bad UTF-8,
                bad dtype or an array whose shape does not match its byte length.
            LimitExceededError: a key, value or item count is over a cap.
        """
        entry = self._caps.get(opcode)
        if entry is None:
            entry = self._entry(opcode)
        fast = entry[2]
        if fast is not None:
            msg = fast(payload)
            if msg is not None:
                return msg
        return _decode_fields(entry, payload, self.limits)


def _decode_fields(entry: _DecodeEntry, payload: Payload, limits: Limits) -> object:
    """The general path of :meth:`Decoder.decode`: field by field, naming any fault."""
    cls, fields, _ = entry
    if not fields:
        if payload:
            raise RemoteProtocolError(f"{cls.__name__} payload has {len(payload)} trailing bytes")
        return cls()
    r = Reader(payload, limits)
    values = [decode(r, what, cap) for decode, what, cap in fields]
    if r.pos != r.end:
        raise RemoteProtocolError(f"{cls.__name__} payload has {r.end - r.pos} trailing bytes")
    return cls(*values)
