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
import struct
from collections.abc import Callable
from dataclasses import dataclass

from kvsync.errors import LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol.fields import (
    BIG_BUFFER,
    FIELD_CODECS,
    KEY_FIELDS,
    Decode,
    Encode,
    Limits,
    Reader,
    Writer,
)
from kvsync.protocol.frame import HEADER_SIZE, pack_header
from kvsync.protocol.messages import MESSAGE_OF, OPCODE_OF, Opcode

__all__ = ["BIG_BUFFER", "FIELD_CODECS", "Decoder", "Limits", "encode_frame"]


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


#: A decoder for the common case: the message, or ``None`` when the general path must decide.
_Fast = Callable[[bytearray], object | None]
_DecodeEntry = tuple[type, tuple[tuple[Decode, str, int], ...], _Fast | None]
#: (caps, opcode) -> the decoding entry, shared by every Decoder with those caps.
_DECODE: dict[tuple[Limits, int], _DecodeEntry] = {}
_KEY_LEN = struct.Struct("<I")
_VALUE_LEN = struct.Struct("<Q")
#: fixed-size field annotation -> its struct code (a bool is one byte, 0 or 1).
_SCALAR_CODES = {"int": "q", "bool": "B", "float": "d"}


def _key_then_scalars(cls: type, key_cap: int, annotations: list[str]) -> _Fast:
    """Fast decoder of a message made of a ``str`` then fixed-size fields (Get, Add, ...)."""
    tail = struct.Struct("<" + "".join(_SCALAR_CODES[a] for a in annotations))
    bools = tuple(i for i, a in enumerate(annotations) if a == "bool")
    size = tail.size

    def decode(payload: bytearray) -> object | None:
        if len(payload) < 4:
            return None
        end = 4 + _KEY_LEN.unpack_from(payload)[0]
        if len(payload) != end + size or (key_cap and end - 4 > key_cap):
            return None
        values = list(tail.unpack_from(payload, end))
        for i in bools:
            if values[i] > 1:
                return None
            values[i] = values[i] == 1
        try:
            key = payload[4:end].decode()
        except UnicodeDecodeError:
            return None
        msg: object = cls(key, *values)
        return msg

    return decode


def _key_then_buffer(cls: type, key_cap: int, value_cap: int) -> _Fast:
    """Fast decoder of a message made of a ``str`` then a ``Buffer`` (Set, QueuePush, ...)."""

    def decode(payload: bytearray) -> object | None:
        size = len(payload)
        if size < 12:
            return None
        end = 4 + _KEY_LEN.unpack_from(payload)[0]
        if end + 8 > size or (key_cap and end - 4 > key_cap):
            return None
        n = _VALUE_LEN.unpack_from(payload, end)[0]
        if end + 8 + n != size or (value_cap and n > value_cap):
            return None
        try:
            key = payload[4:end].decode()
        except UnicodeDecodeError:
            return None
        msg: object = cls(key, memoryview(payload)[end + 8 :])
        return msg

    return decode


def _fast_decoder(cls: type, limits: Limits) -> _Fast | None:
    """A fast decoder for ``cls`` when its layout is a key then scalars or one buffer.

    It returns the very message the general path would, or ``None`` for any payload it
    does not fully accept (the general path then decodes it or names what is wrong).
    """
    fields = dataclasses.fields(cls)
    annotations = [str(f.type) for f in fields]
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

    def decode(self, opcode: int, payload: bytearray) -> object:
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


def _decode_fields(entry: _DecodeEntry, payload: bytearray, limits: Limits) -> object:
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
