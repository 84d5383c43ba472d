"""A sans-IO kvsync connection (the h11 model): bytes in, events out, messages to buffers.

Strategy: a :class:`~kvsync.protocol.framing.FrameBuffer` splits the byte stream into
frames (``receive_data`` copies into it; ``receive_buffer`` and ``advance`` let a socket
``recv_into`` it directly, big payloads straight into their own fresh buffer, or into a
caller's buffer registered with :meth:`Connection.register_landing`). Each header is
checked (magic, version, flags, opcode, payload length against the frame cap) before
anything is allocated; each payload is decoded by the codec into views of itself.

The handshake is handled inside: frames it produces are queued for :meth:`data_to_send`;
dispatch is the ``(role, state) -> handler`` table :data:`_HANDLERS`. Any error while
receiving makes the object refuse further use.

Example:
    >>> from kvsync.protocol.messages import Ping, OkReply
    >>> client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    >>> def pump(a, b):
    ...     b.receive_data(b"".join(bytes(x) for x in a.data_to_send()))
    ...     return b.next_event()
    >>> pump(client, server), pump(server, client), client.handshake_complete
    (NEED_DATA, NEED_DATA, True)
    >>> server.receive_data(b"".join(bytes(x) for x in client.send(7, Ping())))
    >>> server.next_event()
    Event(request_id=7, message=Ping())
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Mapping
from enum import Enum
from functools import partial
from typing import Final, NamedTuple

from kvsync.errors import (
    AuthenticationError,
    KVSyncError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
    code_for,
    error_from_code,
)
from kvsync.protocol import handshake
from kvsync.protocol.codec import (
    DECODERS,
    ENCODERS,
    MESSAGE_OF,
    Limits,
    check_prefix,
    encode_frame,
    on_register,
)
from kvsync.protocol.framing import (
    PROTOCOL_VERSION,
    SMALL_FRAME,
    FrameBuffer,
    Landed,
    Landing,
    ReceiveBudget,
)
from kvsync.protocol.messages import (
    HANDSHAKE_OPCODES,
    Auth,
    ErrorReply,
    Hello,
    HelloReply,
    OkReply,
    Opcode,
)

__all__ = [
    "NEED_DATA",
    "SMALL_FRAME",
    "Connection",
    "Event",
    "NeedData",
    "Role",
    "drain_events",
    "encode_error",
]

_REPLY_MIN: Final = 0x80
#: Longest frame payload accepted before the handshake completes (Hello, Auth and their
#: replies are a few dozen bytes): an unauthenticated peer cannot make a server read more.
HANDSHAKE_FRAME_BYTES: Final = 4096
Buffers = list[bytes | bytearray | memoryview]
_Encode = Callable[[int, object, Limits | None], Buffers]


class NeedData:
    """Type of :data:`NEED_DATA`: no complete frame yet, feed more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class Role(Enum):
    """Which end of the connection this object plays."""

    CLIENT = "client"
    SERVER = "server"
    # Members are singletons: hashed by identity in C, not by Enum's Python __hash__
    # (each connection looks its handlers up by (role, state) at every state change).
    __hash__ = object.__hash__


class _State(Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    AWAIT_HELLO_REPLY = "await_hello_reply"
    AWAIT_AUTH_OK = "await_auth_ok"
    READY = "ready"
    __hash__ = object.__hash__  # (as Role's)


class Event(NamedTuple):
    """A complete message from the peer and the request id it carries (immutable)."""

    request_id: int
    message: object


def encode_error(request_id: int, exc: BaseException) -> Buffers:
    """An :class:`ErrorReply` frame for ``exc``, usable even on a failed connection.

    Example:
        >>> from kvsync.errors import LimitExceededError
        >>> bytes(encode_error(3, LimitExceededError("too big"))[0])[5]
        255
    """
    return encode_frame(request_id, ErrorReply(code=int(code_for(exc)), message=str(exc)))


class Connection:
    """One end of a kvsync connection, with no I/O of its own.

    Args:
        role: ``Role.CLIENT`` (sends requests; starts the handshake at once, see
            :meth:`data_to_send`) or ``Role.SERVER``.
        limits: caps applied to received frames (the server's caps on a server; a client
            uses generous ones and learns the server's in the handshake).
        secret: shared secret for HMAC authentication, or ``None``.
        token: source of random nonces (tests may inject a deterministic one).
        budget: the server-wide allowance for half-received frames, or ``None``.

    The frame buffer refers to nothing of this object's, so a dropped connection is freed
    by reference counting, its buffers at once; :meth:`close` frees them even while
    something still refers to it.
    """

    def __init__(
        self,
        role: Role,
        *,
        limits: Limits | None = None,
        secret: str | bytes | None = None,
        token: Callable[[int], bytes] = secrets.token_bytes,
        budget: ReceiveBudget | None = None,
    ) -> None:
        self.role = role
        self.limits = limits or (
            Limits() if role is Role.SERVER else Limits(0, 0, 1 << 40, 1 << 32)
        )
        self.peer_limits: Limits | None = None
        self._secret = handshake.secret_bytes(secret)
        self._token = token
        self._frames = FrameBuffer(
            _OPCODES,
            self.limits.max_frame_bytes,
            check_prefix=partial(_check_prefix, self.limits),
            budget=budget,
        )
        self._error: KVSyncError | None = None
        self._state = _State.READY
        self._dispatch: _Handler = Connection._on_reply
        self._sendable: dict[type, _Encode] = {}  # what send() takes (set by _enter)
        self._receivable: Collection[type] = frozenset()  # what needs no handler (ditto)
        self._outbox: Buffers = []
        self._nonce = b""
        self._challenge = b""
        if role is Role.CLIENT:
            self._nonce = token(handshake.NONCE_BYTES) if self._secret else b""
            self._outbox += encode_frame(0, Hello(version=PROTOCOL_VERSION, nonce=self._nonce))
            self._enter(_State.AWAIT_HELLO_REPLY)
        else:
            self._enter(_State.AWAIT_HELLO)

    # --- state -------------------------------------------------------------------------

    def _enter(self, state: _State) -> None:
        self._state = state
        self._dispatch = _HANDLERS[(self.role, state)]
        ready = state is _State.READY
        self._sendable = _SENDABLE[self.role] if ready else {}
        self._receivable = _RECEIVABLE[self.role] if ready else frozenset()
        cap = self.limits.max_frame_bytes
        self._frames.max_length = cap if ready else min(cap, HANDSHAKE_FRAME_BYTES)
        self._frames.cap_name = "max_frame_bytes" if ready else "before the handshake completes"

    @property
    def last_request_id(self) -> int | None:
        """The request id of the last frame header received (``0`` after bytes that cannot
        be kvsync), ``None`` before the first: what an error reply should answer."""
        return self._frames.last_request_id

    @property
    def held(self) -> int:
        """Bytes reserved for the big frame being received (``0`` between big frames)."""
        return self._frames.held

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return self._frames.mid_frame

    def close(self) -> None:
        """Release every received byte and reservation now; the object is unusable after.

        Example:
            >>> c = Connection(Role.SERVER); c.receive_data(b"KVS"); c.mid_frame
            True
            >>> c.close(); c.mid_frame, c.handshake_complete
            (False, False)
        """
        self._frames.discard()
        self._outbox = []
        if self._error is None:
            self._error = LocalProtocolError("connection closed")

    @property
    def handshake_complete(self) -> bool:
        """True once requests may flow."""
        return self._state is _State.READY and self._error is None

    def _check_usable(self) -> None:
        """Raise LocalProtocolError if the connection failed."""
        if self._error is not None:
            raise LocalProtocolError(f"connection unusable after an earlier error: {self._error}")

    def data_to_send(self) -> Buffers:
        """Take the handshake frames this object queued (send them in order)."""
        out, self._outbox = self._outbox, []
        return out

    # --- sending ------------------------------------------------------------------------

    def send(self, request_id: int, msg: object) -> Buffers:
        """Encode ``msg`` with ``request_id`` into buffers for ``socket.sendmsg``.

        A client checks keys and values against the server's caps here.

        Raises:
            LocalProtocolError: handshake not complete, the connection failed, or ``msg``
                is not a message this role may send.
            LimitExceededError: a key/value is over the server's cap (client side).
        """
        encode = self._sendable.get(type(msg))  # empty until READY
        if encode is not None and self._error is None:
            return encode(request_id, msg, self.peer_limits)
        self._check_usable()
        if self._state is not _State.READY:
            raise LocalProtocolError("cannot send requests before the handshake completes")
        raise LocalProtocolError(f"a {self.role.value} cannot send {type(msg).__name__}")

    # --- receiving ----------------------------------------------------------------------

    def receive_buffer(self) -> memoryview | bytearray:
        """A writable buffer to ``recv_into``; call :meth:`advance` with the count received.

        While a large payload is being received this is the rest of that payload's own
        buffer, or of a registered landing's (zero copy); otherwise free space in a small
        scratch buffer.

        Raises:
            LocalProtocolError: the connection had already failed.
        """
        if self._error is not None:
            self._check_usable()
        return self._frames.receive_buffer()

    def advance(self, n: int) -> None:
        """Record that ``n`` bytes were written into the last :meth:`receive_buffer`.

        Raises:
            LocalProtocolError: ``n`` is negative or larger than that buffer.
        """
        self._frames.advance(n)

    def register_landing(self, request_id: int, landing: Landing | None) -> None:
        """Register where the payload of the reply to ``request_id`` lands (``None``
        forgets it): a reply of ``landing.opcode`` bigger than :data:`SMALL_FRAME` whose
        payload starts with ``landing.prefix`` is received straight into
        ``landing.target``, and :meth:`next_event` gives ``landing.value`` as its message.
        Any other reply to that id takes the ordinary path. Nothing is received here.

        Example:
            >>> conn = Connection(Role.CLIENT)
            >>> conn.register_landing(5, Landing(0xC0, b"", memoryview(bytearray(9)), None))
        """
        self._frames.land(request_id, landing)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (copied; any split of the stream gives the same events).

        Raises:
            LocalProtocolError: the connection had already failed.
        """
        self._check_usable()
        self._frames.feed(data)

    def next_event(self) -> Event | NeedData:
        """The next complete message from the peer, or :data:`NEED_DATA`.

        Handshake frames are consumed here (their answers go to :meth:`data_to_send`).

        Raises:
            RemoteProtocolError: the peer's bytes are not a valid frame or message
                (:class:`VersionMismatchError` for a wrong magic or version).
            LimitExceededError: a frame, key or value is over a cap.
            AuthenticationError: the shared-secret check failed.
            LocalProtocolError: the connection had already failed.
        """
        if self._error is not None:
            self._check_usable()
        frames = self._frames
        try:
            frame = frames.next_frame()
            if frame is None:
                return NEED_DATA
            opcode, request_id, payload = frame
            if type(payload) is Landed:
                msg = payload.value
            else:
                frames.last_request_id = request_id  # an error answers this message
                msg = DECODERS[opcode](payload, self.limits)  # type: ignore[arg-type]
            if type(msg) in self._receivable:  # a request or reply: what _dispatch does
                return tuple.__new__(Event, (request_id, msg))  # Event(...) minus a call
            event = self._dispatch(self, request_id, msg)  # handshake, or a refusal
        except KVSyncError as exc:
            self._error = exc
            raise
        # A handshake frame gives no event: on to the next frame (two in a row at most,
        # as each moves the handshake on and a third is refused).
        return self.next_event() if event is None else event

    @property
    def error(self) -> KVSyncError | None:
        """The error that made this connection unusable, ``None`` while it is usable."""
        return self._error

    # --- handshake handlers ---------------------------------------------------------------

    def _expect(self, msg: object, *types: type) -> None:
        if not isinstance(msg, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise RemoteProtocolError(
                f"expected {wanted} in state {self._state.value}, got {type(msg).__name__}"
            )

    def _on_hello(self, request_id: int, msg: object) -> None:
        self._expect(msg, Hello)
        assert isinstance(msg, Hello)
        if msg.version != PROTOCOL_VERSION:
            raise VersionMismatchError(
                f"peer speaks kvsync protocol version {msg.version}, this side speaks"
                f" version {PROTOCOL_VERSION}"
            )
        proof = b""
        if self._secret is not None:
            self._challenge = self._token(handshake.NONCE_BYTES)
            if msg.nonce:
                proof = handshake.sign(self._secret, handshake.SERVER_LABEL, msg.nonce)
        lim = self.limits
        reply = HelloReply(
            PROTOCOL_VERSION, lim.max_key_bytes, lim.max_value_bytes, lim.max_frame_bytes,
            self._challenge, proof,
        )  # fmt: skip
        self._outbox += encode_frame(request_id, reply)
        self._enter(_State.AWAIT_AUTH if self._secret is not None else _State.READY)

    def _on_auth(self, request_id: int, msg: object) -> None:
        self._expect(msg, Auth)
        assert isinstance(msg, Auth) and self._secret is not None
        if not handshake.verify(self._secret, handshake.CLIENT_LABEL, self._challenge, msg.proof):
            raise AuthenticationError(
                "shared-secret authentication failed: the client's proof does not match"
                " (check KVSYNC_SECRET on both sides)"
            )
        self._outbox += encode_frame(request_id, OkReply())
        self._enter(_State.READY)

    def _on_hello_reply(self, request_id: int, msg: object) -> None:
        self._expect(msg, HelloReply, ErrorReply)
        if isinstance(msg, ErrorReply):
            raise error_from_code(msg.code, msg.message)
        assert isinstance(msg, HelloReply)
        self.peer_limits = Limits(msg.max_key_bytes, msg.max_value_bytes, msg.max_frame_bytes)
        if self._secret is None:
            if msg.challenge:
                raise AuthenticationError(
                    "the server requires a shared secret and this client has none"
                    " (set KVSYNC_SECRET or pass secret=)"
                )
            self._enter(_State.READY)
            return
        if not msg.challenge or not handshake.verify(
            self._secret, handshake.SERVER_LABEL, self._nonce, msg.proof
        ):
            raise AuthenticationError(
                "the server did not prove it knows the shared secret (it has none or a"
                " different one); refusing to talk to it"
            )
        proof = handshake.sign(self._secret, handshake.CLIENT_LABEL, msg.challenge)
        self._outbox += encode_frame(request_id, Auth(proof=proof))
        self._enter(_State.AWAIT_AUTH_OK)

    def _on_auth_ok(self, request_id: int, msg: object) -> None:
        self._expect(msg, OkReply, ErrorReply)
        if isinstance(msg, ErrorReply):
            raise error_from_code(msg.code, msg.message)
        self._enter(_State.READY)

    def _on_request(self, request_id: int, msg: object) -> Event:
        if type(msg) in _NOT_REQUESTS:
            raise RemoteProtocolError(f"a client may not send {type(msg).__name__} here")
        return Event(request_id, msg)

    def _on_reply(self, request_id: int, msg: object) -> Event:
        if type(msg) not in _REPLY_TYPES:
            raise RemoteProtocolError(f"a server may not send {type(msg).__name__} here")
        return Event(request_id, msg)


def _check_prefix(limits: Limits, opcode: int, prefix: bytes) -> None:
    check_prefix(opcode, prefix, limits)


#: Every opcode of the wire (one whose class is not compiled yet is imported on first use).
_OPCODES: frozenset[int] = frozenset(int(op) for op in Opcode)
_HANDSHAKE_TYPES: frozenset[type] = frozenset(MESSAGE_OF[op] for op in HANDSHAKE_OPCODES)
# The tables below cover every message class compiled so far; _learn adds those compiled
# later (the parameter server's) in place, so connections that hold them see them too.
_REPLY_TYPES: set[type] = set()
_NOT_REQUESTS: set[type] = set(_HANDSHAKE_TYPES)
#: role -> the message types it may send once the handshake is complete, with their encoders.
_SENDABLE: dict[Role, dict[type, _Encode]] = {Role.SERVER: {}, Role.CLIENT: {}}
#: role -> the message types the handshake-complete handler passes on as events.
_RECEIVABLE: dict[Role, set[type]] = {Role.SERVER: set(), Role.CLIENT: _REPLY_TYPES}


def _learn(messages: Mapping[Opcode, type]) -> None:
    """Add newly compiled message classes to the tables above."""
    for op, cls in messages.items():
        if op >= _REPLY_MIN:
            _REPLY_TYPES.add(cls)
            _NOT_REQUESTS.add(cls)
            _SENDABLE[Role.SERVER][cls] = ENCODERS[cls]
        else:
            _SENDABLE[Role.CLIENT][cls] = ENCODERS[cls]
            if cls not in _HANDSHAKE_TYPES:
                _RECEIVABLE[Role.SERVER].add(cls)


on_register(_learn)
_Handler = Callable[[Connection, int, object], "Event | None"]
#: (role, state) -> what to do with the next decoded message.
_HANDLERS: dict[tuple[Role, _State], _Handler] = {
    (Role.SERVER, _State.AWAIT_HELLO): Connection._on_hello,
    (Role.SERVER, _State.AWAIT_AUTH): Connection._on_auth,
    (Role.SERVER, _State.READY): Connection._on_request,
    (Role.CLIENT, _State.AWAIT_HELLO_REPLY): Connection._on_hello_reply,
    (Role.CLIENT, _State.AWAIT_AUTH_OK): Connection._on_auth_ok,
    (Role.CLIENT, _State.READY): Connection._on_reply,
}


def drain_events(conn: Connection) -> tuple[list[Event], KVSyncError | None]:
    """Every event ``conn`` can give now, and the error that stopped it (``None`` when it
    ran out of data): the events before a bad frame still count (answer them, then fail).

    Example:
        >>> drain_events(Connection(Role.SERVER))
        ([], None)
    """
    events: list[Event] = []
    try:
        for _ in range(1 << 62):  # bounded by the bytes received
            event = conn.next_event()
            if event is NEED_DATA:
                break
            events.append(event)  # type: ignore[arg-type]
    except KVSyncError as exc:
        return events, exc
    return events, None
