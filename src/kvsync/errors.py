"""The exception hierarchy of kvsync: every error a public function raises lives here.

Each class subclasses the built-in it means, so callers can catch ``TimeoutError``,
``ConnectionError``, ``ValueError`` or ``KeyError`` without importing kvsync. Errors that
cross the wire travel as a numeric :class:`ErrorCode`; :func:`error_from_code` maps a code
back to its class through a table (never by matching message text).

Example:
    >>> from kvsync.errors import StoreTimeoutError, error_from_code, ErrorCode
    >>> isinstance(StoreTimeoutError("waited 1.0 s for keys ['a']"), TimeoutError)
    True
    >>> exc = error_from_code(ErrorCode.LIMIT_EXCEEDED, "key is 5000 bytes, cap 4096")
    >>> isinstance(exc, ValueError)
    True
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AuthenticationError",
    "ErrorCode",
    "InvalidArgumentError",
    "InvalidPortError",
    "KVStoreError",
    "KVSyncError",
    "KeyTypeError",
    "LimitExceededError",
    "LocalProtocolError",
    "NameTypeError",
    "PeerLostError",
    "ProtocolError",
    "RankFailedError",
    "RemoteProtocolError",
    "ServerError",
    "ShapeMismatchError",
    "StoreConnectionError",
    "StoreTimeoutError",
    "UninitializedKeyError",
    "UnknownNameError",
    "UnsupportedOperationError",
    "VersionMismatchError",
    "code_for",
    "error_from_code",
]


class KVSyncError(Exception):
    """Base class of every error kvsync raises on purpose."""


class StoreTimeoutError(KVSyncError, TimeoutError):
    """A deadline passed: the message names what was waited for, what is missing, how long."""


class StoreConnectionError(KVSyncError, ConnectionError):
    """A connection could not be made, was refused, or was lost; names the peer address."""


class PeerLostError(StoreConnectionError):
    """A server answered that a rank the request needs has disconnected; names the ranks."""


class LimitExceededError(KVSyncError, ValueError):
    """A key, value, frame or count is over a configured cap; names the limit."""


class InvalidPortError(KVSyncError, ValueError):
    """A TCP port outside 0-65535 (given as an argument, a flag or a variable); names it."""


class ProtocolError(KVSyncError):
    """The byte stream broke the wire protocol (see ``docs/protocol.md``)."""


class LocalProtocolError(ProtocolError):
    """We misused the protocol API (a bug or bad argument on this side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or message."""


class VersionMismatchError(RemoteProtocolError):
    """The peer speaks another protocol version or is not a kvsync peer; names both versions."""


class AuthenticationError(KVSyncError, PermissionError):
    """The shared-secret handshake failed."""


class UnsupportedOperationError(KVSyncError, NotImplementedError):
    """The server's protocol cannot express the operation (a kvsync client of a torch store
    server); names the operation and the server."""


class ServerError(KVSyncError, RuntimeError):
    """The server failed to carry out a request for a reason with no more specific class."""


class RankFailedError(KVSyncError, RuntimeError):
    """A rank of :func:`kvsync.testing.spawn_ranks` raised; names the rank, keeps its traceback.

    Attributes:
        rank: the rank that failed first.
        traceback_text: the formatted traceback of its exception.
    """

    def __init__(self, message: str, *, rank: int, traceback_text: str = "") -> None:
        super().__init__(message)
        self.rank = rank
        self.traceback_text = traceback_text


class KVStoreError(KVSyncError):
    """Base class of KVStore (parameter-server) usage errors."""


class UninitializedKeyError(KVStoreError, KeyError):
    """A push or pull named a key that was never initialised."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class ShapeMismatchError(KVStoreError, ValueError):
    """A value's shape or dtype does not match the one stored under its key."""


class InvalidArgumentError(KVStoreError, ValueError):
    """A KVStore call is malformed: counts of keys and values differ, a value is not an
    array, a key is initialised twice, or the store type does not support the operation."""


class KeyTypeError(KVStoreError, TypeError):
    """Keys of the wrong type, or int and str keys mixed in one call."""


class UnknownNameError(KVSyncError, ValueError):
    """A registry (store types, optimizers, compressions) has no entry of that name."""


class NameTypeError(UnknownNameError, TypeError):
    """A registry was asked for a name that is not a ``str`` (``kv.create(3)``)."""


class ErrorCode(IntEnum):
    """Numeric codes of the errors that travel in an error reply."""

    UNKNOWN = 0
    TIMEOUT = 1
    LIMIT_EXCEEDED = 2
    PROTOCOL = 3
    VERSION_MISMATCH = 4
    AUTHENTICATION = 5
    UNKNOWN_OPCODE = 6
    INVALID_ARGUMENT = 7
    UNINITIALIZED_KEY = 8
    SHAPE_MISMATCH = 9
    KEY_TYPE = 10
    UNKNOWN_NAME = 11
    CONNECTION = 12
    SERVER = 13
    KVSTORE_USAGE = 14
    PEER_LOST = 15


_CLASS_OF_CODE: dict[ErrorCode, type[KVSyncError]] = {
    ErrorCode.UNKNOWN: ServerError,
    ErrorCode.TIMEOUT: StoreTimeoutError,
    ErrorCode.LIMIT_EXCEEDED: LimitExceededError,
    ErrorCode.PROTOCOL: RemoteProtocolError,
    ErrorCode.VERSION_MISMATCH: VersionMismatchError,
    ErrorCode.AUTHENTICATION: AuthenticationError,
    ErrorCode.UNKNOWN_OPCODE: RemoteProtocolError,
    ErrorCode.INVALID_ARGUMENT: ServerError,
    ErrorCode.UNINITIALIZED_KEY: UninitializedKeyError,
    ErrorCode.SHAPE_MISMATCH: ShapeMismatchError,
    ErrorCode.KEY_TYPE: KeyTypeError,
    ErrorCode.UNKNOWN_NAME: UnknownNameError,
    ErrorCode.CONNECTION: StoreConnectionError,
    ErrorCode.SERVER: ServerError,
    ErrorCode.KVSTORE_USAGE: InvalidArgumentError,
    ErrorCode.PEER_LOST: PeerLostError,
}

_CODE_OF_CLASS: dict[type[KVSyncError], ErrorCode] = {
    StoreTimeoutError: ErrorCode.TIMEOUT,
    LimitExceededError: ErrorCode.LIMIT_EXCEEDED,
    RemoteProtocolError: ErrorCode.PROTOCOL,
    LocalProtocolError: ErrorCode.PROTOCOL,
    ProtocolError: ErrorCode.PROTOCOL,
    VersionMismatchError: ErrorCode.VERSION_MISMATCH,
    AuthenticationError: ErrorCode.AUTHENTICATION,
    UninitializedKeyError: ErrorCode.UNINITIALIZED_KEY,
    ShapeMismatchError: ErrorCode.SHAPE_MISMATCH,
    KeyTypeError: ErrorCode.KEY_TYPE,
    UnknownNameError: ErrorCode.UNKNOWN_NAME,
    StoreConnectionError: ErrorCode.CONNECTION,
    ServerError: ErrorCode.SERVER,
    InvalidArgumentError: ErrorCode.KVSTORE_USAGE,
    PeerLostError: ErrorCode.PEER_LOST,
}


def error_from_code(code: int, message: str) -> KVSyncError:
    """Build the exception for an error reply's ``code`` and ``message``.

    Unknown codes (a newer peer) become :class:`ServerError`.

    Example:
        >>> type(error_from_code(8, "key 3 was never initialised")).__name__
        'UninitializedKeyError'
        >>> type(error_from_code(999, "?")).__name__
        'ServerError'
    """
    try:
        cls = _CLASS_OF_CODE[ErrorCode(code)]
    except ValueError:
        cls = ServerError
    return cls(message)


def code_for(exc: BaseException) -> ErrorCode:
    """The wire code for an exception raised while serving a request.

    Walks the class's MRO so subclasses map to their nearest known parent; plain
    ``ValueError``/``TypeError``/``KeyError`` from argument checks map to
    ``INVALID_ARGUMENT``/``KEY_TYPE``/``UNINITIALIZED_KEY``.

    Example:
        >>> code_for(StoreTimeoutError("x")) is ErrorCode.TIMEOUT
        True
        >>> code_for(ValueError("bad")) is ErrorCode.INVALID_ARGUMENT
        True
    """
    for cls in type(exc).__mro__:
        if cls in _CODE_OF_CLASS:
            return _CODE_OF_CLASS[cls]
    builtin: dict[type[BaseException], ErrorCode] = {
        TimeoutError: ErrorCode.TIMEOUT,
        TypeError: ErrorCode.KEY_TYPE,
        KeyError: ErrorCode.UNINITIALIZED_KEY,
        ValueError: ErrorCode.INVALID_ARGUMENT,
    }
    for cls in type(exc).__mro__:
        if cls in builtin:
            return builtin[cls]
    return ErrorCode.SERVER
