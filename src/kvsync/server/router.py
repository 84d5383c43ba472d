"""The interface between the event loop and the server's pure logics, and a router.

A :class:`ServerLogic` turns requests into :class:`Outgoing` replies with no I/O and no
clock (the caller passes ``now``, ``time.monotonic()`` seconds); its handlers refuse a
request by raising :class:`RejectError`. :class:`Router` puts
several logics behind one (the store's :class:`~kvsync.server.state.StoreState` beside the
parameter-server logic), dispatching by message type through a table.

Example:
    >>> from kvsync.server.state import StoreState
    >>> from kvsync.protocol.messages import Ping
    >>> router = Router({StoreState.MESSAGE_TYPES: StoreState()})
    >>> router.handle(3, 9, Ping(), now=0.0)
    [Outgoing(conn_id=3, request_id=9, reply=OkReply())]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from kvsync.errors import ErrorCode
from kvsync.protocol.messages import ErrorReply

__all__ = ["Outgoing", "RejectError", "Router", "ServerLogic"]


class Outgoing(NamedTuple):
    """One reply to send: ``reply`` answers request ``request_id`` of connection ``conn_id``.

    Immutable; a named tuple because one is made for nearly every request.
    """

    conn_id: int
    request_id: int
    reply: object


class RejectError(Exception):
    """A request a logic refuses, raised inside its handlers; the logic answers it with
    :meth:`reply`. Server-internal: the client raises the class ``code`` maps to.

    Example:
        >>> RejectError(ErrorCode.INVALID_ARGUMENT, "timeout_ms is -1").reply().message
        'timeout_ms is -1'
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> ErrorReply:
        """The error reply that answers the refused request."""
        return ErrorReply(self.code, self.message)


class ServerLogic(Protocol):
    """What the event loop drives: pure request handling, no I/O, no clock."""

    def handle(self, conn_id: int, request_id: int, msg: object, now: float) -> list[Outgoing]:
        """Handle one request; return the replies to send now (possibly to other conns)."""
        ...

    def expire(self, now: float) -> list[Outgoing]:
        """Answer the parked requests whose deadline is ``<= now``."""
        ...

    def next_deadline(self) -> float | None:
        """The earliest deadline of a parked request, ``None`` if nothing is parked."""
        ...

    def drop_connection(self, conn_id: int) -> None:
        """Forget everything parked for ``conn_id`` (it disconnected)."""
        ...


class Router:
    """Dispatch requests by message type to several :class:`ServerLogic` objects.

    Args:
        routes: ``{message type or tuple of types: logic}``.

    Raises:
        ValueError: a message type is routed to two logics.

    Example:
        >>> from kvsync.protocol.messages import Ping
        >>> from kvsync.server.state import StoreState
        >>> st = StoreState()
        >>> router = Router({StoreState.MESSAGE_TYPES: st})
        >>> router.handle(1, 1, Ping(), now=0.0)[0].reply
        OkReply()
        >>> int(router.handle(1, 2, object(), now=0.0)[0].reply.code)
        6
    """

    def __init__(self, routes: Mapping[type | tuple[type, ...], ServerLogic]) -> None:
        self._route: dict[type, ServerLogic] = {}
        self._logics: list[ServerLogic] = []
        for types, logic in routes.items():
            if not any(logic is x for x in self._logics):
                self._logics.append(logic)
            for t in types if isinstance(types, tuple) else (types,):
                if t in self._route and self._route[t] is not logic:
                    raise ValueError(f"message type {t.__name__} is routed to two logics")
                self._route[t] = logic

    def handle(self, conn_id: int, request_id: int, msg: object, now: float) -> list[Outgoing]:
        """Pass ``msg`` to the logic registered for its type (UNKNOWN_OPCODE if none)."""
        logic = self._route.get(type(msg))
        if logic is None:
            text = f"no server logic handles {type(msg).__name__} messages"
            return [Outgoing(conn_id, request_id, ErrorReply(ErrorCode.UNKNOWN_OPCODE, text))]
        return logic.handle(conn_id, request_id, msg, now)

    def expire(self, now: float) -> list[Outgoing]:
        """Expire parked requests of every logic."""
        return [o for logic in self._logics for o in logic.expire(now)]

    def next_deadline(self) -> float | None:
        """The earliest deadline over every logic."""
        deadlines = [d for d in (lg.next_deadline() for lg in self._logics) if d is not None]
        return min(deadlines, default=None)

    def waiting(self, now: float) -> list[dict[str, Any]]:
        """The parked requests of every logic that can list them (see
        :meth:`~kvsync.server.state.StoreState.waiting`)."""
        return [w for lg in self._logics if hasattr(lg, "waiting") for w in lg.waiting(now)]

    def drop_connection(self, conn_id: int) -> None:
        """Tell every logic that ``conn_id`` is gone."""
        for logic in self._logics:
            logic.drop_connection(conn_id)
