"""A sans-IO connection speaking torch's ``TCPStore`` protocol (the h11 model).

Strategy: torch's messages carry no length, so each one is decoded field by field by a
small generator (one per layout, found through tables) that yields what it needs next (a
``u8``, a ``u64`` count, a key...) and is resumed when enough bytes have arrived; any split
of the byte stream therefore gives the same messages. Every length and count is checked
against :class:`~kvsync.protocol.fields.Limits` before anything is allocated, and so is the
running size of the message (``max_frame_bytes``), so a MULTI_SET cannot grow without
bound. A value of :data:`LANDING_BYTES` or more gets its own buffer as soon as its length is
known, and :meth:`TorchConnection.receive_buffer` hands out the rest of it, so a socket's
``recv_into`` fills it directly.

A server-role connection decodes requests and encodes replies; a client-role connection
encodes requests, remembers which of them expect a reply, and decodes the replies in order
(including torch's CANCEL_WAIT race: a STOP_WAITING that crossed the cancel, then
WAIT_CANCELED). Bytes that break the protocol raise :class:`RemoteProtocolError` (or
:class:`LimitExceededError`) once, after which the object refuses further use.

Example:
    >>> from kvsync.protocol import torch_wire as tw
    >>> from kvsync.protocol.connection import Role
    >>> client, server = TorchConnection(Role.CLIENT), TorchConnection(Role.SERVER)
    >>> for part in client.send(tw.Validate(tw.MAGIC)) + client.send(tw.Get("/a")):
    ...     server.receive_data(part)
    >>> server.next_event(), server.next_event(), server.next_event()
    (Validate(magic=1015412686), Get(key='/a'), NEED_DATA)
    >>> for part in server.send(tw.ValueReply(b"xy")):
    ...     client.receive_data(part)
    >>> client.next_event()
    ValueReply(value=b'xy')
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Mapping
from typing import Final

from kvsync.errors import KVSyncError, LimitExceededError, LocalProtocolError, RemoteProtocolError
from kvsync.protocol import torch_wire as tw
from kvsync.protocol.connection import NEED_DATA, NeedData, Role
from kvsync.protocol.fields import U32, U64, Limits
from kvsync.protocol.torch_wire import I64

__all__ = ["LANDING_BYTES", "TorchConnection"]

#: A value at least this long is received straight into its own buffer.
LANDING_BYTES: Final = 64 * 1024
_SCRATCH = 4 * 1024  # bytes first offered to recv_into: 10,000 idle connections hold 40 MB
_SCRATCH_MAX = 256 * 1024  # it doubles up to this while receives fill it
_COMPACT = 64 * 1024  # consumed bytes kept at the buffer's head before it is compacted

# What a decoder yields: the next field it needs.
_U8, _U32, _I64, _COUNT, _KEY, _VALUE = range(6)
# Layout entries beyond the single fields: a counted list of keys, of (key, value) pairs.
_KEYS, _PAIRS = 6, 7

_Decoder = Generator[int, object, object]

#: request query type -> (request class, layout of its fields).
_REQUEST_LAYOUT: dict[int, tuple[type, tuple[int, ...]]] = {
    tw.Query.VALIDATE: (tw.Validate, (_U32,)),
    tw.Query.SET: (tw.Set, (_KEY, _VALUE)),
    tw.Query.COMPARE_SET: (tw.CompareSet, (_KEY, _VALUE, _VALUE)),
    tw.Query.GET: (tw.Get, (_KEY,)),
    tw.Query.ADD: (tw.Add, (_KEY, _I64)),
    tw.Query.CHECK: (tw.Check, (_KEYS,)),
    tw.Query.WAIT: (tw.Wait, (_KEYS,)),
    tw.Query.GETNUMKEYS: (tw.NumKeys, ()),
    tw.Query.DELETE_KEY: (tw.DeleteKey, (_KEY,)),
    tw.Query.APPEND: (tw.Append, (_KEY, _VALUE)),
    tw.Query.MULTI_GET: (tw.MultiGet, (_KEYS,)),
    tw.Query.MULTI_SET: (tw.MultiSet, (_PAIRS,)),
    tw.Query.CANCEL_WAIT: (tw.CancelWait, ()),
    tw.Query.PING: (tw.Ping, (_U32,)),
    tw.Query.QUEUE_PUSH: (tw.QueuePush, (_KEY, _VALUE)),
    tw.Query.QUEUE_POP: (tw.QueuePop, (_KEY,)),
    tw.Query.QUEUE_LEN: (tw.QueueLen, (_KEY,)),
    tw.Query.LIST_KEYS: (tw.ListKeys, ()),
    tw.Query.BARRIER: (tw.Barrier, (_KEY, _I64)),
}


def _fields(cls: type, layout: tuple[int, ...]) -> _Decoder:
    """Decode the fields of ``layout`` and build ``cls`` from them."""
    args: list[object] = []
    for kind in layout:
        if kind == _KEYS:
            n = yield _COUNT
            keys = []
            for _ in range(n):  # type: ignore[call-overload]
                keys.append((yield _KEY))  # noqa: PERF401 (yield: no comprehension)
            args.append(tuple(keys))
        elif kind == _PAIRS:
            n = yield _COUNT
            ks, vs = [], []
            for _ in range(n):  # type: ignore[call-overload]
                ks.append((yield _KEY))
                vs.append((yield _VALUE))
            args += (tuple(ks), tuple(vs))
        else:
            args.append((yield kind))
    return cls(*args)


def _request() -> _Decoder:
    query = yield _U8
    layout = _REQUEST_LAYOUT.get(query)  # type: ignore[call-overload]
    if layout is None:
        raise RemoteProtocolError(f"unknown torch query type {query} (0x{query:02x})")
    msg = yield from _fields(*layout)
    if isinstance(msg, tw.Validate) and msg.magic != tw.MAGIC:
        raise RemoteProtocolError(
            f"torch VALIDATE with magic 0x{msg.magic:08x}, expected 0x{tw.MAGIC:08x}"
        )
    return msg


def _flag(expected: Mapping[int, object], what: str) -> _Decoder:
    """A one-byte reply, mapped through ``expected``."""
    byte = yield _U8
    if byte not in expected:
        raise RemoteProtocolError(f"torch server sent {byte} as the reply to {what}")
    return expected[byte]  # type: ignore[index]


def _queue_pop() -> _Decoder:
    length = yield _I64
    value = (yield _VALUE) if length > 0 else None  # type: ignore[operator]
    return tw.QueuePopReply(length, value)  # type: ignore[arg-type]


def _values(n: int) -> _Decoder:
    values = []
    for _ in range(n):
        values.append((yield _VALUE))  # noqa: PERF401 (yield: no comprehension)
    return tw.ValuesReply(tuple(values))  # type: ignore[arg-type]


_READY = {0: tw.CheckReply(True), 1: tw.CheckReply(False)}
_STOP = {0: tw.StopWaiting()}
_STOP_OR_CANCELED = {0: tw.StopWaiting(), 1: tw.WaitCanceled()}
_CANCELED = {1: tw.WaitCanceled()}

#: reply class -> decoder of it, given (query, key count, whether a cancel follows).
_REPLY_DECODERS: dict[type, Callable[[tw.Query, int, bool], _Decoder]] = {
    tw.ValueReply: lambda q, n, c: _fields(tw.ValueReply, (_VALUE,)),
    tw.IntReply: lambda q, n, c: _fields(tw.IntReply, (_I64,)),
    tw.ValuesReply: lambda q, n, c: _values(n),
    tw.KeysReply: lambda q, n, c: _fields(tw.KeysReply, (_KEYS,)),
    tw.CheckReply: lambda q, n, c: _flag(_READY, q.name),
    tw.StopWaiting: lambda q, n, c: _flag(_STOP_OR_CANCELED if c else _STOP, q.name),
    tw.WaitCanceled: lambda q, n, c: _flag(_CANCELED, q.name),
    tw.PingReply: lambda q, n, c: _fields(tw.PingReply, (_U32,)),
    tw.QueuePopReply: lambda q, n, c: _queue_pop(),
}


class TorchConnection:
    """One end of a torch ``TCPStore`` connection, with no I/O of its own.

    Args:
        role: ``Role.SERVER`` (decodes requests, sends replies) or ``Role.CLIENT`` (sends
            requests, decodes their replies).
        limits: caps on received keys, values, counts (``max_items``) and message size.
    """

    def __init__(self, role: Role, *, limits: Limits | None = None) -> None:
        self.role = role
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._pos = 0
        self._scratch = memoryview(bytearray(_SCRATCH))
        self._offered: memoryview | None = None
        self._landing: bytearray | None = None  # a big value being received
        self._landed = 0
        self._decoder: _Decoder | None = None
        self._need = _U8
        self._size = 0  # bytes of the message being decoded so far
        self._pending: deque[tuple[tw.Query, int]] = deque()  # client: replies expected
        self._error: KVSyncError | None = None
        self._unraised: KVSyncError | None = None  # held back behind good messages

    @property
    def error(self) -> KVSyncError | None:
        """The error that made this connection unusable, ``None`` while it is usable."""
        return self._error

    @property
    def awaiting_replies(self) -> int:
        """Client role: how many sent requests still expect a reply."""
        return len(self._pending)

    def _check_usable(self) -> None:
        if self._unraised is not None:
            exc, self._unraised = self._unraised, None
            raise exc
        if self._error is not None:
            raise LocalProtocolError(f"connection unusable after an earlier error: {self._error}")

    # --- sending --------------------------------------------------------------------------

    def send(self, msg: object) -> list[bytes | bytearray | memoryview]:
        """Encode ``msg`` (a request for a client, a reply for a server) into buffers.

        Raises:
            LocalProtocolError: the connection failed, or ``msg`` is not something this
                role sends.
        """
        self._check_usable()
        is_request = type(msg) in tw.REQUEST_OF.values()
        if is_request != (self.role is Role.CLIENT):
            raise LocalProtocolError(f"a torch {self.role.value} cannot send {type(msg).__name__}")
        out = tw.encode(msg)
        if is_request:
            query = tw.query_of(msg)
            if tw.REPLY_OF[query] is not None:
                keys = getattr(msg, "keys", ())
                self._pending.append((query, len(keys)))
        return out

    # --- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (copied; any split of the stream gives the same messages).

        Raises:
            LocalProtocolError: the connection had already failed.
        """
        self._check_usable()
        data = memoryview(data).cast("B")
        if self._landing is not None:
            n = min(len(data), len(self._landing) - self._landed)
            self._landing[self._landed : self._landed + n] = data[:n]
            self._landed += n
            data = data[n:]
        self._buf += data

    def receive_buffer(self) -> memoryview:
        """A writable view to ``recv_into``; then call :meth:`advance` with the count.

        While a big value is landing this is the rest of that value's own buffer.

        Raises:
            LocalProtocolError: the connection had already failed.
        """
        self._check_usable()
        if self._landing is not None and self._landed < len(self._landing):
            self._offered = memoryview(self._landing)[self._landed :]
        else:
            self._offered = self._scratch
        return self._offered

    def advance(self, n: int) -> None:
        """Record that ``n`` bytes were written into the last :meth:`receive_buffer`.

        Raises:
            LocalProtocolError: no buffer was offered, or ``n`` does not fit it.
        """
        offered, self._offered = self._offered, None
        if offered is None or not 0 <= n <= len(offered):
            raise LocalProtocolError(f"advance({n}) does not match the buffer offered")
        if offered is self._scratch:
            self._buf += offered[:n]
            if n == len(offered) and n < _SCRATCH_MAX:  # a busy connection: offer more
                self._scratch = memoryview(bytearray(2 * n))
        else:
            self._landed += n

    def receive_from(self, recv_into: Callable[[memoryview], int]) -> tuple[int, int]:
        """Call ``recv_into`` (e.g. a socket's) once on :meth:`receive_buffer`, then
        :meth:`advance`. Returns ``(bytes received, size of the buffer offered)``; what
        ``recv_into`` raises propagates with nothing recorded."""
        view = self.receive_buffer()
        try:
            n = recv_into(view)
        except BaseException:
            self._offered = None
            raise
        self.advance(n)
        return n, len(view)

    def next_event(self) -> object:
        """The next complete message from the peer, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: the peer's bytes are not torch's protocol (unknown query
                type, wrong magic, a key that is not UTF-8, a reply nobody asked for).
            LimitExceededError: a key, value, count or message is over a cap.
            LocalProtocolError: the connection had already failed.
        """
        self._check_usable()
        try:
            return self._next()
        except KVSyncError as exc:
            self._error = exc
            self._decoder = None
            raise

    def events(self) -> list[object]:
        """Every message now complete (:meth:`next_event` until ``NEED_DATA``).

        The messages before a protocol error are returned; the error then goes to
        :attr:`error` and is raised by the next receiving call (at once if there were no
        messages before it).

        Raises:
            The errors of :meth:`next_event`.
        """
        if self._unraised is not None:
            exc, self._unraised = self._unraised, None
            raise exc
        out: list[object] = []
        for _ in range(1 << 20):  # bounded: each message consumes at least one byte
            try:
                event = self.next_event()
            except KVSyncError as exc:
                if not out or isinstance(exc, LocalProtocolError):
                    raise
                self._unraised = exc
                break
            if isinstance(event, NeedData):
                break
            out.append(event)
        return out

    def _next(self) -> object:
        while True:
            decoder = self._decoder
            if decoder is None:
                if self._pos == len(self._buf):
                    self._compact()
                    return NEED_DATA
                decoder = self._decoder = self._start()
                self._need = next(decoder)
            got = self._take(self._need)
            if got is _MISSING:
                self._compact()
                return NEED_DATA
            try:
                self._need = decoder.send(got)
            except StopIteration as stop:
                self._decoder = None
                self._size = 0
                return self._finish(stop.value)

    def _start(self) -> _Decoder:
        if self.role is Role.SERVER:
            return _request()
        if not self._pending:
            raise RemoteProtocolError("torch server sent bytes that answer no request")
        query, n = self._pending[0]
        cancel_follows = any(q is tw.Query.CANCEL_WAIT for q, _ in self._pending)
        reply = tw.REPLY_OF[query]
        assert reply is not None
        return _REPLY_DECODERS[reply](query, n, cancel_follows)

    def _finish(self, msg: object) -> object:
        if self.role is Role.CLIENT:
            query, _ = self._pending.popleft()
            if isinstance(msg, tw.WaitCanceled) and query is not tw.Query.CANCEL_WAIT:
                # the cancel's one byte answered the wait too: drop the cancel's entry
                cancel = next(p for p in self._pending if p[0] is tw.Query.CANCEL_WAIT)
                self._pending.remove(cancel)
        return msg

    def _compact(self) -> None:
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > _COMPACT:
            del self._buf[: self._pos]
            self._pos = 0

    def _take(self, need: int) -> object:
        """The field ``need`` from the buffered bytes, or ``_MISSING``."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if need == _U8:
            if avail < 1:
                return _MISSING
            self._consume(1)
            return buf[pos]
        if need <= _COUNT:
            layout = U32 if need == _U32 else (I64 if need == _I64 else U64)
            if avail < layout.size:
                return _MISSING
            self._consume(layout.size)
            (value,) = layout.unpack_from(buf, pos)
            if need == _COUNT and value > self.limits.max_items:
                raise LimitExceededError(
                    f"torch request lists {value} items, over the limit of"
                    f" {self.limits.max_items} (max_items)"
                )
            return value
        return self._take_string(need)

    def _take_string(self, need: int) -> object:
        landing = self._landing
        if landing is not None:
            if self._landed < len(landing):
                return _MISSING
            self._landing = None
            return landing
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 8:
            return _MISSING
        (length,) = U64.unpack_from(buf, pos)
        self._check_length(need, length)
        if avail - 8 >= length:
            self._consume(8 + length)
            data = bytes(buf[pos + 8 : pos + 8 + length])
            if need == _VALUE:
                return data
            try:
                return data.decode()
            except UnicodeDecodeError:
                raise RemoteProtocolError(f"torch key {data[:64]!r} is not UTF-8") from None
        if need == _VALUE and length >= LANDING_BYTES:  # give it its own buffer now
            self._consume(avail)
            self._size += length - (avail - 8)  # the rest lands outside the buffer
            self._landing = bytearray(length)
            self._landing[: avail - 8] = buf[pos + 8 :]
            self._landed = avail - 8
        return _MISSING

    def _check_length(self, need: int, length: int) -> None:
        lim = self.limits
        cap, what = (lim.max_key_bytes, "key") if need == _KEY else (lim.max_value_bytes, "value")
        if cap and length > cap:
            raise LimitExceededError(
                f"torch {what} of {length} bytes is over the limit of {cap} bytes"
                f" (max_{what}_bytes)"
            )
        if self._size + length > lim.max_frame_bytes:
            raise LimitExceededError(
                f"torch message of more than {self._size + length} bytes is over the limit"
                f" of {lim.max_frame_bytes} bytes (max_frame_bytes)"
            )

    def _consume(self, n: int) -> None:
        self._pos += n
        self._size += n


class _Missing:
    __slots__ = ()


_MISSING: Final = _Missing()
