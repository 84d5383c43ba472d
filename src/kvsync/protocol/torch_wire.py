"""torch's c10d ``TCPStore`` wire protocol: its messages and how each is laid out.

torch's protocol has no frames: a request is a ``u8`` query type followed by its arguments,
a reply is the bare result, and which reply answers which request follows from their order.
Strings and byte strings are a ``u64`` length and the bytes, lists a ``u64`` count and the
items; integers are little endian. This module holds one small frozen dataclass per query
type (requests) and per reply shape, the :class:`Query` numbers, the :data:`REPLY_OF` table
(which reply shape answers which query; ``None``: no reply at all) and :func:`encode`, which
turns any of them into buffers for ``sendmsg``. Decoding is the job of the sans-IO
:class:`kvsync.protocol.torch_connection.TorchConnection`. Byte-level facts were checked
against torch 2.13's own client and server (``docs/torch.md``).

Keys are kept as they travel: torch's client prepends ``/`` to every user key
(``store.get("a")`` sends ``/a``) except its worker counter ``init/``; mapping them to
kvsync's key names is the server session's business (:mod:`kvsync.server.torch_session`).

Example:
    >>> from kvsync.protocol import torch_wire as tw
    >>> b"".join(bytes(b) for b in tw.encode(tw.Get("/a")))
    b'\\x03\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00/a'
    >>> tw.REPLY_OF[tw.Query.GET].__name__, tw.REPLY_OF[tw.Query.SET]
    ('ValueReply', None)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from kvsync.errors import LocalProtocolError
from kvsync.protocol.fields import BIG_BUFFER, U8, U32, U64
from kvsync.protocol.messages import Buffer

__all__ = [
    "I64",
    "MAGIC",
    "REPLY_OF",
    "REQUEST_OF",
    "Add",
    "Append",
    "Barrier",
    "CancelWait",
    "Check",
    "CheckReply",
    "CompareSet",
    "DeleteKey",
    "Get",
    "IntReply",
    "KeysReply",
    "ListKeys",
    "MultiGet",
    "MultiSet",
    "NumKeys",
    "Ping",
    "PingReply",
    "Query",
    "QueueLen",
    "QueuePop",
    "QueuePopReply",
    "QueuePush",
    "Set",
    "StopWaiting",
    "Validate",
    "ValueReply",
    "ValuesReply",
    "Wait",
    "WaitCanceled",
    "encode",
    "query_of",
]

#: torch's ``i64`` (ADD's delta, counts in replies); its other fixed-size fields have the
#: layouts of kvsync's own (``fields.U8``, ``U32``, ``U64``: little endian wherever torch runs).
I64 = struct.Struct("<q")
#: The u32 a torch client sends with VALIDATE, its first message: bytes ``CE F7 85 3C``.
MAGIC: Final = 0x3C85F7CE


class Query(IntEnum):
    """torch's ``QueryType``: the first byte of every request."""

    VALIDATE = 0
    SET = 1
    COMPARE_SET = 2
    GET = 3
    ADD = 4
    CHECK = 5
    WAIT = 6
    GETNUMKEYS = 7
    DELETE_KEY = 8
    APPEND = 9
    MULTI_GET = 10
    MULTI_SET = 11
    CANCEL_WAIT = 12
    PING = 13
    QUEUE_PUSH = 14
    QUEUE_POP = 15
    QUEUE_LEN = 16
    LIST_KEYS = 17
    BARRIER = 18


# --- requests (keys exactly as on the wire) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Validate:
    """The first message of a torch client: ``magic`` must be :data:`MAGIC`. No reply."""

    magic: int


@dataclass(frozen=True, slots=True)
class Set:
    """Store ``value`` under ``key``. No reply."""

    key: str
    value: Buffer


@dataclass(frozen=True, slots=True)
class CompareSet:
    """Compare-and-set. Reply: :class:`ValueReply` (the value now stored, or ``expected``
    when the key is missing and ``expected`` is not empty)."""

    key: str
    expected: Buffer
    desired: Buffer


@dataclass(frozen=True, slots=True)
class Get:
    """Read ``key`` (torch's client WAITs for it first). Reply: :class:`ValueReply`."""

    key: str


@dataclass(frozen=True, slots=True)
class Add:
    """Add ``delta`` to the decimal integer under ``key``. Reply: :class:`IntReply`."""

    key: str
    delta: int


@dataclass(frozen=True, slots=True)
class Check:
    """Whether every key exists. Reply: :class:`CheckReply`."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait, with no deadline on the server, until every key exists. Reply:
    :class:`StopWaiting` once they do (nothing if a CANCEL_WAIT comes first)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NumKeys:
    """Count the keys. Reply: :class:`IntReply`."""


@dataclass(frozen=True, slots=True)
class DeleteKey:
    """Delete ``key``. Reply: :class:`IntReply` (how many were deleted, 0 or 1)."""

    key: str


@dataclass(frozen=True, slots=True)
class Append:
    """Append ``value`` to ``key``'s bytes. No reply."""

    key: str
    value: Buffer


@dataclass(frozen=True, slots=True)
class MultiGet:
    """Read several keys. Reply: :class:`ValuesReply` (no count on the wire)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MultiSet:
    """Set several keys (``keys`` and ``values`` of equal length). No reply."""

    keys: tuple[str, ...]
    values: tuple[Buffer, ...]


@dataclass(frozen=True, slots=True)
class CancelWait:
    """Drop this connection's pending WAIT / BARRIER. Reply: :class:`WaitCanceled`."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness check with a u32 ``nonce`` (torch sends its pid). Reply: :class:`PingReply`
    echoing it."""

    nonce: int


@dataclass(frozen=True, slots=True)
class QueuePush:
    """Push ``value`` at the tail of the queue ``key``. No reply."""

    key: str
    value: Buffer


@dataclass(frozen=True, slots=True)
class QueuePop:
    """Pop the head of the queue ``key`` without waiting (torch's client WAITs on the key
    first when it blocks). Reply: :class:`QueuePopReply`."""

    key: str


@dataclass(frozen=True, slots=True)
class QueueLen:
    """Length of the queue ``key``. Reply: :class:`IntReply`."""

    key: str


@dataclass(frozen=True, slots=True)
class ListKeys:
    """Every key, as stored. Reply: :class:`KeysReply`."""


@dataclass(frozen=True, slots=True)
class Barrier:
    """Add 1 to the counter ``key`` and wait until it is at least ``world_size``. Reply:
    :class:`StopWaiting` (nothing if a CANCEL_WAIT comes first)."""

    key: str
    world_size: int


# --- replies -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueReply:
    """One byte string (``u64`` length + bytes)."""

    value: Buffer


@dataclass(frozen=True, slots=True)
class IntReply:
    """One ``i64``."""

    value: int


@dataclass(frozen=True, slots=True)
class ValuesReply:
    """Byte strings, one per key asked for; the count is not on the wire."""

    values: tuple[Buffer, ...]


@dataclass(frozen=True, slots=True)
class KeysReply:
    """An ``i64`` count, then that many keys."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CheckReply:
    """``u8`` 0 (READY: every key exists) or 1 (NOT_READY)."""

    ready: bool


@dataclass(frozen=True, slots=True)
class StopWaiting:
    """``u8`` 0: the WAIT or BARRIER is satisfied."""


@dataclass(frozen=True, slots=True)
class WaitCanceled:
    """``u8`` 1: the CANCEL_WAIT is done."""


@dataclass(frozen=True, slots=True)
class PingReply:
    """The ``u32`` nonce of the PING."""

    nonce: int


@dataclass(frozen=True, slots=True)
class QueuePopReply:
    """``i64`` length of the queue before the pop, then (if it was > 0) the popped value."""

    length: int
    value: Buffer | None


#: request class -> its query type.
_QUERY: dict[type, Query] = {
    Validate: Query.VALIDATE, Set: Query.SET, CompareSet: Query.COMPARE_SET, Get: Query.GET,
    Add: Query.ADD, Check: Query.CHECK, Wait: Query.WAIT, NumKeys: Query.GETNUMKEYS,
    DeleteKey: Query.DELETE_KEY, Append: Query.APPEND, MultiGet: Query.MULTI_GET,
    MultiSet: Query.MULTI_SET, CancelWait: Query.CANCEL_WAIT, Ping: Query.PING,
    QueuePush: Query.QUEUE_PUSH, QueuePop: Query.QUEUE_POP, QueueLen: Query.QUEUE_LEN,
    ListKeys: Query.LIST_KEYS, Barrier: Query.BARRIER,
}  # fmt: skip

#: query type -> the reply class that answers it (``None``: torch sends no reply).
REPLY_OF: dict[Query, type | None] = {
    Query.VALIDATE: None, Query.SET: None, Query.COMPARE_SET: ValueReply,
    Query.GET: ValueReply, Query.ADD: IntReply, Query.CHECK: CheckReply,
    Query.WAIT: StopWaiting, Query.GETNUMKEYS: IntReply, Query.DELETE_KEY: IntReply,
    Query.APPEND: None, Query.MULTI_GET: ValuesReply, Query.MULTI_SET: None,
    Query.CANCEL_WAIT: WaitCanceled, Query.PING: PingReply, Query.QUEUE_PUSH: None,
    Query.QUEUE_POP: QueuePopReply, Query.QUEUE_LEN: IntReply, Query.LIST_KEYS: KeysReply,
    Query.BARRIER: StopWaiting,
}  # fmt: skip

#: request class by query type (for the decoder's table).
REQUEST_OF: dict[Query, type] = {q: cls for cls, q in _QUERY.items()}


def query_of(msg: object) -> Query:
    """The query type of the request ``msg``.

    Raises:
        LocalProtocolError: ``msg`` is not a torch request.

    Example:
        >>> query_of(Ping(7)).name
        'PING'
    """
    try:
        return _QUERY[type(msg)]
    except KeyError:
        raise LocalProtocolError(f"{type(msg).__name__} is not a torch request") from None


# --- encoding ------------------------------------------------------------------------------

_Out = list[bytes | bytearray | memoryview]


class _Writer:
    """Small fields copied into one ``bytearray``; big buffers kept as their own parts."""

    __slots__ = ("head", "parts")

    def __init__(self) -> None:
        self.head = bytearray()
        self.parts: _Out = [self.head]

    def raw(self, data: bytes) -> None:
        self.head += data

    def buffer(self, data: Buffer) -> None:
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else data
        self.head += U64.pack(len(view))
        if len(view) < BIG_BUFFER:
            self.head += view
        else:  # sent uncopied; later fields go into a fresh head
            self.head = bytearray()
            self.parts += [view, self.head]

    def string(self, text: str) -> None:
        self.buffer(text.encode())

    def strings(self, items: tuple[str, ...]) -> None:
        self.head += U64.pack(len(items))
        for s in items:
            self.string(s)

    def done(self) -> _Out:
        return [p for p in self.parts if len(p)]


def _keyed_value(w: _Writer, m: Set | Append | QueuePush) -> None:
    w.string(m.key)
    w.buffer(m.value)


def _multi_set(w: _Writer, m: MultiSet) -> None:
    if len(m.keys) != len(m.values):
        raise LocalProtocolError(f"multi_set got {len(m.keys)} keys but {len(m.values)} values")
    w.raw(U64.pack(len(m.keys)))
    for k, v in zip(m.keys, m.values, strict=True):
        w.string(k)
        w.buffer(v)


def _compare_set(w: _Writer, m: CompareSet) -> None:
    w.string(m.key)
    w.buffer(m.expected)
    w.buffer(m.desired)


def _values(w: _Writer, m: ValuesReply) -> None:
    for v in m.values:
        w.buffer(v)


def _popped(w: _Writer, m: QueuePopReply) -> None:
    w.raw(I64.pack(m.length))
    if m.length > 0:
        if m.value is None:
            raise LocalProtocolError(f"a queue pop reply of length {m.length} needs a value")
        w.buffer(m.value)


def _key_int(w: _Writer, m: Add | Barrier) -> None:
    w.string(m.key)
    w.raw(I64.pack(m.delta if isinstance(m, Add) else m.world_size))


def _keys(w: _Writer, m: KeysReply) -> None:
    w.raw(I64.pack(len(m.keys)))
    for k in m.keys:
        w.string(k)


def _nothing(w: _Writer, m: object) -> None:
    return None


#: message class -> how its fields are written (after the query byte, for requests).
_ENCODERS: dict[type, Callable[[_Writer, Any], object]] = {
    Validate: lambda w, m: w.raw(U32.pack(m.magic)),
    Set: _keyed_value,
    CompareSet: _compare_set,
    Get: lambda w, m: w.string(m.key),
    Add: _key_int,
    Check: lambda w, m: w.strings(m.keys),
    Wait: lambda w, m: w.strings(m.keys),
    NumKeys: _nothing,
    DeleteKey: lambda w, m: w.string(m.key),
    Append: _keyed_value,
    MultiGet: lambda w, m: w.strings(m.keys),
    MultiSet: _multi_set,
    CancelWait: _nothing,
    Ping: lambda w, m: w.raw(U32.pack(m.nonce)),
    QueuePush: _keyed_value,
    QueuePop: lambda w, m: w.string(m.key),
    QueueLen: lambda w, m: w.string(m.key),
    ListKeys: _nothing,
    Barrier: _key_int,
    ValueReply: lambda w, m: w.buffer(m.value),
    IntReply: lambda w, m: w.raw(I64.pack(m.value)),
    ValuesReply: _values,
    KeysReply: _keys,
    CheckReply: lambda w, m: w.raw(U8.pack(0 if m.ready else 1)),
    StopWaiting: lambda w, m: w.raw(b"\x00"),
    WaitCanceled: lambda w, m: w.raw(b"\x01"),
    PingReply: lambda w, m: w.raw(U32.pack(m.nonce)),
    QueuePopReply: _popped,
}


def encode(msg: object) -> _Out:
    """The bytes of one torch request or reply, as buffers for ``sendmsg`` (big values
    are their own uncopied parts).

    Raises:
        LocalProtocolError: ``msg`` is not a torch message, or is inconsistent (a
            MULTI_SET with more keys than values).
        struct.error: an integer does not fit its field.

    Example:
        >>> [bytes(b) for b in encode(CheckReply(ready=True))]
        [b'\\x00']
        >>> bytes(encode(Ping(nonce=1))[0]).hex()
        '0d01000000'
    """
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise LocalProtocolError(f"{type(msg).__name__} is not a torch message")
    w = _Writer()
    query = _QUERY.get(type(msg))
    if query is not None:
        w.raw(bytes((query,)))
    encoder(w, msg)
    return w.done()
