"""A torch client's connection on the store server: torch requests onto the shared state.

The event loop gives a connection whose first byte is ``00`` (torch's VALIDATE; kvsync
frames start with ``K``) a :class:`TorchSession` instead of a kvsync ``Connection``. The
session decodes torch's requests with the sans-IO
:class:`~kvsync.protocol.torch_connection.TorchConnection`, translates each into the Store
API messages :class:`~kvsync.server.state.StoreState` answers for kvsync clients (through
the table :data:`_TRANSLATE`), gives them request ids of its own, and turns their replies
back into torch's bytes (through :data:`_REPLY`); requests torch sends no reply to get none.

Key names: torch's client sends ``/`` + the user's key; the session strips that ``/``, so
``torch_store.set("a", ...)`` and ``kvsync_store.get("a")`` meet. A key without the leading
``/`` (torch's own worker counter ``init/``) lives under :data:`TORCH_RAW_PREFIX`
(``__kvsync/torch/init/``), the reserved ``__kvsync/`` namespace, and goes back unchanged.

torch's protocol carries no errors: a request the store refuses (a value over a cap,
``add`` on a non-integer, a key that holds a queue) closes that connection, as torch's own
server does; nothing else is affected.

Example:
    >>> from kvsync.protocol import torch_wire as tw
    >>> from kvsync.protocol.connection import drain_events
    >>> from kvsync.server.state import StoreState
    >>> st, session = StoreState(), TorchSession()
    >>> parts = tw.encode(tw.Validate(tw.MAGIC)) + tw.encode(tw.Add("/n", 2))
    >>> wire = b"".join(bytes(b) for b in parts)
    >>> session.receive_buffer()[: len(wire)] = wire
    >>> session.advance(len(wire))
    >>> events, error = drain_events(session)
    >>> [(e.message, st.handle(1, e.request_id, e.message, now=0.0)[0].reply) for e in events]
    [(Add(key='n', amount=2), IntReply(value=2))]
    >>> b"".join(bytes(b) for b in session.encode(events[0].request_id, m.IntReply(2)))
    b'\\x02\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from kvsync import defaults
from kvsync.errors import KVSyncError, RemoteProtocolError, error_from_code
from kvsync.protocol import messages as m
from kvsync.protocol import torch_wire as tw
from kvsync.protocol.connection import Event, NeedData, Role
from kvsync.protocol.fields import Limits
from kvsync.protocol.torch_connection import TorchConnection
from kvsync.protocol.torch_requests import CancelWaits, CountBarrier

__all__ = ["TORCH_RAW_PREFIX", "TorchSession", "key_from_torch", "key_to_torch"]

logger = logging.getLogger(__name__)

#: Where keys a torch client sends without the leading ``/`` (``init/``) are stored.
TORCH_RAW_PREFIX = "__kvsync/torch/"
_PARK_MS = int(defaults.TORCH_PARK_SECONDS * 1000)
_Buffers = list[bytes | bytearray | memoryview]


def key_from_torch(raw: str) -> str:
    """The store key of a key as torch sends it.

    Example:
        >>> key_from_torch("/a"), key_from_torch("init/")
        ('a', '__kvsync/torch/init/')
    """
    return raw[1:] if raw.startswith("/") else TORCH_RAW_PREFIX + raw


def key_to_torch(key: str) -> str:
    """The key as torch stores it for a store key (the inverse of :func:`key_from_torch`).

    Example:
        >>> key_to_torch("a"), key_to_torch("__kvsync/torch/init/")
        ('/a', 'init/')
    """
    if key.startswith(TORCH_RAW_PREFIX):
        return key[len(TORCH_RAW_PREFIX) :]
    return "/" + key


def _keys(raw: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(map(key_from_torch, raw))


class _QueuePopParts:
    """A QUEUE_POP is two store requests: QueueLen (torch answers the length before the
    pop) then a non-blocking QueuePop; this holds the length between their replies."""

    __slots__ = ("length",)

    def __init__(self) -> None:
        self.length: int | None = None  # set by the QueueLen reply


# torch request -> the store requests it becomes, each with a context for its reply.
_TRANSLATE: dict[type, Callable[[Any], list[tuple[object, object]]]] = {
    tw.Validate: lambda r: [],
    tw.Set: lambda r: [(m.Set(key_from_torch(r.key), r.value), None)],
    tw.CompareSet: lambda r: [(m.CompareSet(key_from_torch(r.key), r.expected, r.desired), None)],
    tw.Get: lambda r: [(m.Get(key_from_torch(r.key), False, 0), None)],
    tw.Add: lambda r: [(m.Add(key_from_torch(r.key), r.delta), None)],
    tw.Check: lambda r: [(m.Check(_keys(r.keys)), None)],
    tw.Wait: lambda r: [(m.Wait(_keys(r.keys), _PARK_MS), None)],
    tw.NumKeys: lambda r: [(m.NumKeys(), None)],
    tw.DeleteKey: lambda r: [(m.DeleteKey(key_from_torch(r.key)), None)],
    tw.Append: lambda r: [(m.Append(key_from_torch(r.key), r.value), None)],
    tw.MultiGet: lambda r: [(m.MultiGet(_keys(r.keys), False, 0), None)],
    tw.MultiSet: lambda r: [(m.MultiSet(_keys(r.keys), r.values), None)],
    tw.CancelWait: lambda r: [(CancelWaits(), None)],
    tw.Ping: lambda r: [(m.Ping(), r.nonce)],
    tw.QueuePush: lambda r: [(m.QueuePush(key_from_torch(r.key), r.value), None)],
    tw.QueuePop: lambda r: _queue_pop(key_from_torch(r.key)),
    tw.QueueLen: lambda r: [(m.QueueLen(key_from_torch(r.key)), None)],
    tw.ListKeys: lambda r: [(m.ListKeys(), None)],
    tw.Barrier: lambda r: [(CountBarrier(key_from_torch(r.key), r.world_size, _PARK_MS), None)],
}


def _queue_pop(key: str) -> list[tuple[object, object]]:
    parts = _QueuePopParts()
    return [(m.QueueLen(key), parts), (m.QueuePop(key, False, 0), parts)]


def _popped(reply: object, parts: _QueuePopParts) -> object:
    if parts.length is None:  # the QueueLen part: torch's reply comes with the pop
        if not isinstance(reply, m.IntReply):
            raise _refusal(reply)
        parts.length = reply.value
        return None
    if parts.length == 0:  # empty (or no queue there): torch answers length 0
        return tw.QueuePopReply(0, None)
    if not isinstance(reply, m.ValueReply):
        raise _refusal(reply)
    return tw.QueuePopReply(parts.length, reply.value)


def _refusal(reply: object) -> KVSyncError:
    """The error a store reply that torch's protocol cannot carry stands for."""
    if isinstance(reply, m.ErrorReply):
        return error_from_code(reply.code, reply.message)
    return RemoteProtocolError(f"the store answered {reply!r}")


# torch request -> (store reply type expected, how it becomes torch's reply; None: none).
_REPLY: dict[type, tuple[type | None, Callable[[Any, Any], object]]] = {
    tw.Set: (m.OkReply, lambda r, c: None),
    tw.CompareSet: (m.ValueReply, lambda r, c: tw.ValueReply(r.value)),
    tw.Get: (m.ValueReply, lambda r, c: tw.ValueReply(r.value)),
    tw.Add: (m.IntReply, lambda r, c: tw.IntReply(r.value)),
    tw.Check: (m.IntReply, lambda r, c: tw.CheckReply(bool(r.value))),
    tw.Wait: (m.OkReply, lambda r, c: tw.StopWaiting()),
    tw.NumKeys: (m.IntReply, lambda r, c: tw.IntReply(r.value)),
    tw.DeleteKey: (m.IntReply, lambda r, c: tw.IntReply(r.value)),
    tw.Append: (m.OkReply, lambda r, c: None),
    tw.MultiGet: (m.ValuesReply, lambda r, c: tw.ValuesReply(r.values)),
    tw.MultiSet: (m.OkReply, lambda r, c: None),
    tw.CancelWait: (m.OkReply, lambda r, c: tw.WaitCanceled()),
    tw.Ping: (m.OkReply, lambda r, c: tw.PingReply(c)),
    tw.QueuePush: (m.OkReply, lambda r, c: None),
    tw.QueuePop: (None, _popped),
    tw.QueueLen: (m.IntReply, lambda r, c: tw.IntReply(r.value)),
    tw.ListKeys: (m.KeysReply, lambda r, c: tw.KeysReply(tuple(map(key_to_torch, r.keys)))),
    tw.Barrier: (m.OkReply, lambda r, c: tw.StopWaiting()),
}

#: Requests a CANCEL_WAIT abandons: the store forgets them, so they are never answered.
_CANCELABLE = (tw.Wait, tw.Barrier)


class TorchSession:
    """The server side of one torch client connection (see the module docstring).

    It offers the event loop what a kvsync ``Connection`` does (:meth:`receive_buffer`,
    :meth:`advance`, :meth:`next_event`, :attr:`error`, :attr:`last_request_id`,
    :attr:`handshake_complete`, :meth:`data_to_send`), plus :meth:`encode` for the store's
    replies.

    Args:
        limits: caps on received keys, values, key counts and request size.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self._conn = TorchConnection(Role.SERVER, limits=limits)
        self._next_id = 1
        self._pending: dict[int, tuple[object, object]] = {}  # id -> (torch request, context)
        self._error: KVSyncError | None = None
        self._ready: deque[Event] = deque()  # translated, not yet taken
        self.handshake_complete = True
        self.last_request_id: int | None = None  # torch's replies carry no request id

    @property
    def error(self) -> KVSyncError | None:
        """Why this connection must close (a protocol error, or a request the store
        refused: torch's protocol cannot carry the error), ``None`` while it is usable."""
        return self._error or self._conn.error

    def data_to_send(self) -> _Buffers:
        """Nothing: torch's handshake (VALIDATE, PING) is answered as requests are."""
        return []

    def receive_buffer(self) -> memoryview:
        """A writable buffer to ``recv_into``; then call :meth:`advance` with the count.

        Raises:
            LocalProtocolError: the connection had already failed.
        """
        return self._conn.receive_buffer()

    def advance(self, n: int) -> None:
        """Record that ``n`` bytes were written into the last :meth:`receive_buffer`."""
        self._conn.advance(n)

    def next_event(self) -> Event | NeedData:
        """The next store request event ``(request_id, message)``, or ``NEED_DATA``.

        Raises:
            KVSyncError: the bytes broke torch's protocol (see
                :meth:`TorchConnection.next_event`).
        """
        for _ in range(1 << 62):  # bounded by the bytes received: each round eats some
            if self._ready:
                return self._ready.popleft()
            request = self._conn.next_event()
            if isinstance(request, NeedData):
                return request
            for msg, context in _TRANSLATE[type(request)](request):
                request_id, self._next_id = self._next_id, self._next_id + 1
                self._pending[request_id] = (request, context)
                self._ready.append(Event(request_id, msg))
        raise AssertionError("unreachable")

    def encode(self, request_id: int, reply: object) -> _Buffers:
        """torch's bytes for the store's ``reply`` to ``request_id`` (often none).

        A refusal (an ``ErrorReply``) or an unexpected reply sets :attr:`error` instead, so
        the loop closes the connection.
        """
        entry = self._pending.pop(request_id, None)
        if entry is None or self._error is not None:
            return []
        request, context = entry
        expected, convert = _REPLY[type(request)]
        try:
            if expected is not None and type(reply) is not expected:
                raise _refusal(reply)
            answer = convert(reply, context)
        except KVSyncError as exc:
            logger.info(
                "closing a torch connection: its %s was refused (%s); torch's protocol has"
                " no error reply", type(request).__name__, exc,
            )  # fmt: skip
            self._error = exc
            return []
        if isinstance(request, tw.CancelWait):  # the store forgot them: no reply will come
            self._pending = {
                i: e for i, e in self._pending.items() if not isinstance(e[0], _CANCELABLE)
            }
        return [] if answer is None else tw.encode(answer)
