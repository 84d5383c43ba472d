"""A server's connection limits, and the deadlines that enforce them (no I/O, no clock).

:class:`ServerSettings` holds every limit of a :class:`~kvsync.server.StoreServer` beyond
the key and value caps; :meth:`ServerSettings.from_environment` fills what the
environment sets (``KVSYNC_HANDSHAKE_TIMEOUT`` ...) over :mod:`kvsync.defaults`.

:class:`ConnectionGuard` is told when a connection is accepted, finishes its handshake,
receives bytes (and whether a frame is left half received) and goes; it answers which
connections have overrun a deadline. Only the connections at risk are tracked (those in
the handshake, those with a half-received frame, and every one only when an idle limit
is set), and they are checked at most every :data:`SWEEP_SECONDS` (a tenth of the
shortest limit when that is less), so the cost is no scan per event.

Example:
    >>> g = ConnectionGuard(ServerSettings(handshake_timeout=5.0, frame_timeout=10.0))
    >>> g.accepted(1, now=0.0); g.accepted(2, now=0.0); g.handshaken(2)
    >>> g.received(2, now=1.0, mid_frame=True)
    >>> [(c, type(e).__name__) for c, e in g.expired(now=6.0, busy=lambda c: False)]
    [(1, 'StoreTimeoutError')]
    >>> [(c, str(e)[:40]) for c, e in g.expired(now=11.5, busy=lambda c: False)]
    [(2, 'no byte of a half-received frame arrived')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from kvsync import defaults
from kvsync.env import Environment
from kvsync.errors import KVSyncError, StoreTimeoutError

__all__ = ["SWEEP_SECONDS", "ConnectionGuard", "ServerSettings"]

#: Longest time between two checks of the tracked connections' deadlines.
SWEEP_SECONDS: float = 0.5


@dataclass(frozen=True)
class ServerSettings:
    """Connection limits of a store server (each also an environment variable and a
    ``kvsync serve`` flag; docs/security.md lists them).

    Attributes:
        handshake_timeout: seconds from accept to a completed handshake (and
            authentication); ``0`` disables the limit.
        frame_timeout: seconds a half-received frame may go without a byte arriving;
            ``0`` disables the limit.
        idle_timeout: seconds a connection with nothing parked may go without traffic;
            ``0`` (the default) lets it stay open.
        max_connections: connections held at most; the next gets an error reply.
        max_pending_bytes: memory reserved at most for half-received frames, over all
            connections (raised to one value at its cap, plus its key, if lower).

    Raises:
        ValueError: a timeout is negative or a count is below 1.

    Example:
        >>> from kvsync import env
        >>> ServerSettings.from_environment(env.read({"KVSYNC_IDLE_TIMEOUT": "600"})).idle_timeout
        600.0
    """

    handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT_SECONDS
    frame_timeout: float = defaults.FRAME_TIMEOUT_SECONDS
    idle_timeout: float = defaults.IDLE_TIMEOUT_SECONDS
    max_connections: int = defaults.MAX_CONNECTIONS
    max_pending_bytes: int = defaults.MAX_PENDING_BYTES

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "frame_timeout", "idle_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, not {getattr(self, name)!r}")
        for name in ("max_connections", "max_pending_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")

    @classmethod
    def from_environment(cls, environment: Environment) -> ServerSettings:
        """The defaults with what ``environment`` sets over them."""
        given = {
            f.name: getattr(environment, f.name)
            for f in fields(cls)
            if getattr(environment, f.name) is not None
        }
        return replace(cls(), **given)


class ConnectionGuard:
    """Deadlines of a server's connections (see the module docstring).

    Args:
        settings: the limits to enforce.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._handshaking: dict[int, float] = {}  # conn -> deadline
        self._partial: dict[int, float] = {}  # conn -> deadline of its half-received frame
        self._idle: dict[int, float] | None = {} if settings.idle_timeout else None  # -> last
        shortest = [t for t in (settings.handshake_timeout, settings.frame_timeout,
                                settings.idle_timeout) if t]  # fmt: skip
        self._every = min([SWEEP_SECONDS, *(t / 10 for t in shortest)])
        self._next_sweep = 0.0

    def accepted(self, conn_id: int, now: float) -> None:
        """A connection was accepted at ``now``."""
        if self.settings.handshake_timeout:
            self._handshaking[conn_id] = now + self.settings.handshake_timeout
        if self._idle is not None:
            self._idle[conn_id] = now

    def handshaken(self, conn_id: int) -> None:
        """``conn_id`` completed its handshake."""
        self._handshaking.pop(conn_id, None)

    def received(self, conn_id: int, now: float, mid_frame: bool) -> None:
        """``conn_id`` received bytes at ``now``; ``mid_frame``: a frame is left half in."""
        if mid_frame:
            if self.settings.frame_timeout:
                self._partial[conn_id] = now + self.settings.frame_timeout
        elif self._partial:
            self._partial.pop(conn_id, None)
        if self._idle is not None:
            self._idle[conn_id] = now

    def sent(self, conn_id: int, now: float) -> None:
        """``conn_id`` was sent a reply at ``now`` (traffic, for the idle limit)."""
        if self._idle is not None and conn_id in self._idle:
            self._idle[conn_id] = now

    def dropped(self, conn_id: int) -> None:
        """``conn_id`` is gone."""
        self._handshaking.pop(conn_id, None)
        self._partial.pop(conn_id, None)
        if self._idle is not None:
            self._idle.pop(conn_id, None)

    def next_deadline(self) -> float | None:
        """When :meth:`expired` should next be called (``None``: nothing tracked)."""
        if self._handshaking or self._partial or self._idle:
            return self._next_sweep
        return None

    def expired(self, now: float, busy: Callable[[int], bool]) -> list[tuple[int, KVSyncError]]:
        """The connections past a deadline at ``now``, each with the error to tell it; they
        are forgotten. ``busy(conn_id)`` says whether it has requests parked (then it is
        not idle). Checks only every sweep interval; returns ``[]`` between."""
        if now < self._next_sweep:
            return []
        self._next_sweep = now + self._every
        s = self.settings
        out: dict[int, KVSyncError] = {}
        for conn_id, deadline in list(self._handshaking.items()):
            if deadline <= now:
                out.setdefault(conn_id, StoreTimeoutError(
                    f"the handshake did not complete within {s.handshake_timeout:g} s"
                    " (handshake_timeout)"))  # fmt: skip
        for conn_id, deadline in list(self._partial.items()):
            if deadline <= now:
                out.setdefault(conn_id, StoreTimeoutError(
                    f"no byte of a half-received frame arrived for {s.frame_timeout:g} s"
                    " (frame_timeout)"))  # fmt: skip
        if self._idle is not None:
            for conn_id, last in list(self._idle.items()):
                if last + s.idle_timeout <= now and not busy(conn_id):
                    out.setdefault(conn_id, StoreTimeoutError(
                        f"connection idle for {s.idle_timeout:g} s with nothing parked"
                        " (idle_timeout)"))  # fmt: skip
        for conn_id in out:
            self.dropped(conn_id)
        return list(out.items())
