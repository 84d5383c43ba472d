"""The messages of kvsync's wire protocol: small slotted dataclasses, one per opcode.

This module is the contract between the codec (``kvsync.protocol``), the server's pure state
machine (``kvsync.server``) and the client (``kvsync.client``). It holds no I/O and no
encoding logic. Field types are restricted to what the codec knows how to lay out:
``str`` (UTF-8), ``Buffer`` (raw bytes; decoded as a zero-copy ``memoryview``), ``int``
(signed 64-bit), ``bool``, ``float`` (IEEE double), ``tuple[str, ...]``,
``tuple[Buffer, ...]``, ``tuple[int, ...]``, ``NDArray`` (a numpy array of a plain numeric
or bool dtype; decoded as a zero-copy view), ``tuple[NDArray, ...]`` and ``NDArray | None``.
The byte layout of each is in ``docs/protocol.md``. They are not frozen (treat them as
values all the same): a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, which made building a ``Get`` 2.8x slower (0.42 against 0.15 us),
and every request builds one.

Blocking requests carry ``timeout_ms``: how long the server may park them before it answers
with a timeout error. It is always given (no request waits forever) and is ``>= 0``.

Opcodes 0x01-0x0F are the connection handshake, 0x10-0x3F the Store API, 0x40-0x7F the
parameter-server messages (:mod:`kvsync.protocol.ps_messages`), 0x80-0xFF replies.

Example:
    >>> from kvsync.protocol.messages import Set, Opcode, STORE_MESSAGE_OF
    >>> STORE_MESSAGE_OF[Opcode.SET] is Set
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "HANDSHAKE_OPCODES",
    "STORE_MESSAGE_OF",
    "Add",
    "Append",
    "Auth",
    "Barrier",
    "Buffer",
    "Check",
    "CompareSet",
    "DeleteKey",
    "ErrorReply",
    "Get",
    "Hello",
    "HelloReply",
    "Identify",
    "Inspect",
    "IntReply",
    "KeysReply",
    "ListKeys",
    "Message",
    "MultiGet",
    "MultiSet",
    "NDArray",
    "NumKeys",
    "OkReply",
    "Opcode",
    "Ping",
    "QueueLen",
    "QueuePop",
    "QueuePush",
    "Set",
    "ValueReply",
    "ValuesReply",
    "Wait",
]

#: Raw bytes on the wire. Encoders accept any of these; decoders return ``memoryview``
#: slices of the received frame (no copy).
Buffer: TypeAlias = "bytes | bytearray | memoryview"

#: A numpy array of a plain numeric or bool dtype. Annotate message fields with this exact
#: name (``NDArray``, ``tuple[NDArray, ...]``, ``NDArray | None``); decoders return
#: zero-copy ``np.frombuffer`` views of the received frame.
NDArray: TypeAlias = "np.ndarray[Any, Any]"


class Opcode(IntEnum):
    """One byte in every frame header saying which message the payload holds."""

    # Connection handshake (both directions)
    HELLO = 0x01
    HELLO_REPLY = 0x02
    AUTH = 0x03

    # Store API requests
    SET = 0x10
    GET = 0x11
    ADD = 0x12
    COMPARE_SET = 0x13
    WAIT = 0x14
    CHECK = 0x15
    DELETE_KEY = 0x16
    NUM_KEYS = 0x17
    MULTI_GET = 0x18
    MULTI_SET = 0x19
    APPEND = 0x1A
    LIST_KEYS = 0x1B
    QUEUE_PUSH = 0x1C
    QUEUE_POP = 0x1D
    QUEUE_LEN = 0x1E
    PING = 0x1F
    BARRIER = 0x20
    INSPECT = 0x21
    IDENTIFY = 0x22
    # Parameter-server requests (owner: dist; classes at the end of this file)
    PS_HELLO = 0x40
    PS_INIT = 0x41
    PS_WAIT_INIT = 0x42
    PS_PUSH = 0x43
    PS_PUSH_ROWS = 0x44
    PS_PULL = 0x45
    PS_PULL_ROWS = 0x46
    PS_SET_OPTIMIZER = 0x47
    PS_SET_UPDATER = 0x48
    PS_SET_COMPRESSION = 0x49
    PS_SAVE_STATES = 0x4A
    PS_LOAD_STATES = 0x4B
    PS_BARRIER = 0x4C
    PS_STATS = 0x4D
    PS_SHUTDOWN = 0x4E
    PS_PUSH_SHM = 0x4F
    PS_PULL_SHM = 0x50
    PS_PUSH_PACKED = 0x51
    PS_WAITING = 0x52
    # Replies
    OK = 0x80
    VALUE = 0x81
    VALUES = 0x82
    INT = 0x83
    KEYS = 0x84
    PS_VALUES = 0xC0  # parameter-server arrays (owner: dist)
    PS_SHM = 0xC1  # where a parameter server's slice lives in shared memory (owner: dist)
    PS_PACKED = 0xC2  # many small parameter-server arrays in one (owner: dist)
    ERROR = 0xFF


# --- Connection handshake -----------------------------------------------------------------


@dataclass(slots=True)
class Hello:
    """First frame a client sends: its protocol ``version`` and, when it holds a shared
    secret, a random ``nonce`` the server must sign to prove it knows the secret too
    (empty otherwise). Reply: :class:`HelloReply` or :class:`ErrorReply`."""

    version: int
    nonce: Buffer


@dataclass(slots=True)
class HelloReply:
    """The server's answer to :class:`Hello`: its ``version``, its caps (so the client can
    refuse an oversize request before sending it), a random ``challenge`` when it requires
    the shared secret (empty otherwise) and ``proof``, its HMAC over the client's nonce
    (empty when either side has no secret)."""

    version: int
    max_key_bytes: int
    max_value_bytes: int
    max_frame_bytes: int
    challenge: Buffer
    proof: Buffer


@dataclass(slots=True)
class Auth:
    """The client's HMAC-SHA256 over the server's challenge. Reply: :class:`OkReply`, or
    :class:`ErrorReply` (AUTHENTICATION) and the server closes the connection."""

    proof: Buffer


# --- Store API requests -----------------------------------------------------------------


@dataclass(slots=True)
class Set:
    """Store ``value`` under ``key``, overwriting. Reply: :class:`OkReply`."""

    key: str
    value: Buffer


@dataclass(slots=True)
class Get:
    """Read ``key``. With ``block`` the server waits up to ``timeout_ms`` for the key to
    exist (torch semantics); without it a missing key reads as ``b""`` (the reference
    document's semantics). Reply: :class:`ValueReply`."""

    key: str
    block: bool
    timeout_ms: int


@dataclass(slots=True)
class Add:
    """Add ``amount`` to the decimal integer stored under ``key`` (missing reads as 0),
    store the result as decimal text. Reply: :class:`IntReply` with the new value."""

    key: str
    amount: int


@dataclass(slots=True)
class CompareSet:
    """Set ``key`` to ``desired`` if its value equals ``expected`` (a missing key matches
    an empty ``expected``). Reply: :class:`ValueReply` with the value now stored (or
    ``expected`` echoed back when the key is missing and ``expected`` is not empty, as
    torch does)."""

    key: str
    expected: Buffer
    desired: Buffer


@dataclass(slots=True)
class Wait:
    """Park until every key exists or ``timeout_ms`` passes. Reply: :class:`OkReply`, or
    an :class:`ErrorReply` (TIMEOUT) naming the keys still missing."""

    keys: tuple[str, ...]
    timeout_ms: int


@dataclass(slots=True)
class Check:
    """Whether every key exists, without waiting. Reply: :class:`IntReply` (1 or 0)."""

    keys: tuple[str, ...]


@dataclass(slots=True)
class DeleteKey:
    """Delete ``key``. Reply: :class:`IntReply` (1 if it existed, else 0)."""

    key: str


@dataclass(slots=True)
class NumKeys:
    """Count the keys stored (queues included). Reply: :class:`IntReply`."""


@dataclass(slots=True)
class MultiGet:
    """Read several keys at once; ``block`` and ``timeout_ms`` as in :class:`Get`.
    Reply: :class:`ValuesReply` in the order of ``keys``."""

    keys: tuple[str, ...]
    block: bool
    timeout_ms: int


@dataclass(slots=True)
class MultiSet:
    """Set several keys at once, atomically. ``keys`` and ``values`` have equal length.
    Reply: :class:`OkReply`."""

    keys: tuple[str, ...]
    values: tuple[Buffer, ...]


@dataclass(slots=True)
class Append:
    """Append ``value`` to the bytes stored under ``key`` (missing: set it).
    Reply: :class:`OkReply`."""

    key: str
    value: Buffer


@dataclass(slots=True)
class ListKeys:
    """Every key stored. Reply: :class:`KeysReply`."""


@dataclass(slots=True)
class QueuePush:
    """Push ``value`` at the tail of the queue ``key``. Reply: :class:`OkReply`."""

    key: str
    value: Buffer


@dataclass(slots=True)
class QueuePop:
    """Pop the head of the queue ``key``; with ``block`` wait up to ``timeout_ms`` for an
    item. Reply: :class:`ValueReply`, or an :class:`ErrorReply` (TIMEOUT, or
    INVALID_ARGUMENT "queue is empty" without ``block``)."""

    key: str
    block: bool
    timeout_ms: int


@dataclass(slots=True)
class QueueLen:
    """Number of items in the queue ``key`` (0 if missing). Reply: :class:`IntReply`."""

    key: str


@dataclass(slots=True)
class Ping:
    """Liveness check. Reply: :class:`OkReply`."""


@dataclass(slots=True)
class Barrier:
    """Enter the barrier ``key`` of ``world_size`` callers, in one request: the server
    adds 1 to the counter ``<key>/arrived``; the call that completes a group of
    ``world_size`` (generation ``(count - 1) // world_size``) sets ``<key>/done/<gen>`` and
    is answered at once, the others are parked until that flag exists. The keys are those
    of :func:`kvsync.store.sync.barrier`, so callers of either meet. ``rank`` is the
    caller's rank, ``-1`` when it does not know it: the server names the ranks still
    missing from those of the parked arrivals. Reply: :class:`OkReply`, or an
    :class:`ErrorReply` (TIMEOUT) saying how many arrived and which ranks are missing."""

    key: str
    world_size: int
    timeout_ms: int
    rank: int = -1


@dataclass(slots=True)
class Inspect:
    """What the server is doing, for ``kvsync inspect``: its counters (connections,
    requests by type, bytes in and out, uptime, memory held by half-received frames) and
    its parked requests. Reply: :class:`ValueReply` holding a JSON object
    (``docs/protocol.md`` lists its fields)."""


@dataclass(slots=True)
class Identify:
    """Tell the server this connection's rank (shown by ``kvsync inspect``). Reply:
    :class:`OkReply`."""

    rank: int


# --- Replies ------------------------------------------------------------------------------


@dataclass(slots=True)
class OkReply:
    """The request was carried out and has no result."""


@dataclass(slots=True)
class ValueReply:
    """One value."""

    value: Buffer


@dataclass(slots=True)
class ValuesReply:
    """Several values, in request order."""

    values: tuple[Buffer, ...]


@dataclass(slots=True)
class IntReply:
    """One integer (counts, booleans as 0/1, ``add`` results)."""

    value: int


@dataclass(slots=True)
class KeysReply:
    """A list of keys."""

    keys: tuple[str, ...]


@dataclass(slots=True)
class ErrorReply:
    """The request failed: ``code`` is a :class:`kvsync.errors.ErrorCode`, ``message``
    names the key, peer or limit involved."""

    code: int
    message: str


Message: TypeAlias = (
    "Hello | HelloReply | Auth | Set | Get | Add | CompareSet | Wait | Check | DeleteKey"
    " | NumKeys | MultiGet | MultiSet | Append | ListKeys | QueuePush | QueuePop | QueueLen"
    " | Ping | Barrier | OkReply | ValueReply"
    " | ValuesReply | IntReply | KeysReply | ErrorReply"
)

#: opcode -> handshake, Store API or reply message class (the parameter server's are in
#: :mod:`kvsync.protocol.ps_messages`; :data:`kvsync.protocol.codec.MESSAGE_OF` has both
#: once that is imported).
STORE_MESSAGE_OF: dict[Opcode, type] = {
    Opcode.HELLO: Hello,
    Opcode.HELLO_REPLY: HelloReply,
    Opcode.AUTH: Auth,
    Opcode.SET: Set,
    Opcode.GET: Get,
    Opcode.ADD: Add,
    Opcode.COMPARE_SET: CompareSet,
    Opcode.WAIT: Wait,
    Opcode.CHECK: Check,
    Opcode.DELETE_KEY: DeleteKey,
    Opcode.NUM_KEYS: NumKeys,
    Opcode.MULTI_GET: MultiGet,
    Opcode.MULTI_SET: MultiSet,
    Opcode.APPEND: Append,
    Opcode.LIST_KEYS: ListKeys,
    Opcode.QUEUE_PUSH: QueuePush,
    Opcode.QUEUE_POP: QueuePop,
    Opcode.QUEUE_LEN: QueueLen,
    Opcode.PING: Ping,
    Opcode.BARRIER: Barrier,
    Opcode.INSPECT: Inspect,
    Opcode.IDENTIFY: Identify,
    Opcode.OK: OkReply,
    Opcode.VALUE: ValueReply,
    Opcode.VALUES: ValuesReply,
    Opcode.INT: IntReply,
    Opcode.KEYS: KeysReply,
    Opcode.ERROR: ErrorReply,
}

#: The opcodes a connection exchanges before its handshake is complete.
HANDSHAKE_OPCODES: frozenset[Opcode] = frozenset({Opcode.HELLO, Opcode.HELLO_REPLY, Opcode.AUTH})
