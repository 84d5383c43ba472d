"""The store server's reply encoder: the common small replies in one ``struct`` call each.

``OkReply``, ``IntReply`` and a ``ValueReply`` of a small byte value make up nearly every
answer of the Store API. Each is laid out exactly as :func:`~kvsync.protocol.codec.
encode_frame` lays it out (the frame header, then the fields as ``docs/protocol.md``
describes them), packed by one precompiled :class:`struct.Struct` into one ``bytes``;
every other reply, and any field the fast path does not vouch for (out of range, a ``bool``
for an ``int``, an exotic buffer), goes through ``encode_frame`` itself.

Example:
    >>> from kvsync.protocol.messages import IntReply
    >>> encode_reply(7, IntReply(3)) == encode_frame(7, IntReply(3))
    True
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from kvsync.protocol.codec import BIG_BUFFER, encode_frame
from kvsync.protocol.frame import MAGIC, PROTOCOL_VERSION
from kvsync.protocol.messages import IntReply, OkReply, Opcode, ValueReply

__all__ = ["encode_reply"]

_Buffers = list[bytes | bytearray | memoryview]
_OK = struct.Struct("<4sBBHQQ")  # the header alone
_INT = struct.Struct("<4sBBHQQq")  # header, i64 value
_VALUE = struct.Struct("<4sBBHQQQ")  # header, u64 value length; the value follows
_OK_OP, _INT_OP, _VALUE_OP = int(Opcode.OK), int(Opcode.INT), int(Opcode.VALUE)


def _ok(request_id: int, reply: object) -> bytes | None:
    return _OK.pack(MAGIC, PROTOCOL_VERSION, _OK_OP, 0, request_id, 0)


def _int(request_id: int, reply: object) -> bytes | None:
    assert isinstance(reply, IntReply)
    value = reply.value
    if type(value) is not int:
        return None
    return _INT.pack(MAGIC, PROTOCOL_VERSION, _INT_OP, 0, request_id, 8, value)


def _value(request_id: int, reply: object) -> bytes | None:
    assert isinstance(reply, ValueReply)
    value = reply.value
    kind = type(value)
    if kind is memoryview:
        if value.format != "B" or value.ndim != 1 or not value.c_contiguous:  # type: ignore[union-attr]
            return None
    elif kind is not bytes:
        return None
    n = len(value)
    if n >= BIG_BUFFER:
        return None
    head = _VALUE.pack(MAGIC, PROTOCOL_VERSION, _VALUE_OP, 0, request_id, 8 + n, n)
    return head + value


#: reply type -> its fast encoder (``None`` from it: use ``encode_frame``).
_FAST: dict[type, Callable[[int, object], bytes | None]] = {
    OkReply: _ok,
    IntReply: _int,
    ValueReply: _value,
}


def encode_reply(request_id: int, reply: object) -> _Buffers:
    """The buffers :func:`encode_frame` gives for ``reply``, the common replies packed fast.

    Raises:
        Whatever :func:`encode_frame` raises for a reply it refuses.
    """
    fast = _FAST.get(type(reply))
    if fast is not None:
        try:
            data = fast(request_id, reply)
        except struct.error:  # out of range: encode_frame names the field
            data = None
        if data is not None:
            return [data]
    return encode_frame(request_id, reply)
