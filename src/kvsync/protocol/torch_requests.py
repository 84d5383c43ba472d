"""Store requests that only torch's protocol asks for (no kvsync opcode, never on our wire).

The server's torch session (:mod:`kvsync.server.torch_session`) translates torch's
CANCEL_WAIT and BARRIER into these and hands them to
:class:`~kvsync.server.state.StoreState` like any other request, so torch clients and
kvsync clients share one store state.

Example:
    >>> CountBarrier("b", world_size=2, timeout_ms=1000).key
    'b'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CancelWaits", "CountBarrier"]


@dataclass(frozen=True, slots=True)
class CancelWaits:
    """Forget every request this connection has parked (torch's CANCEL_WAIT).
    Reply: ``OkReply``."""


@dataclass(frozen=True, slots=True)
class CountBarrier:
    """torch's BARRIER: add 1 to the decimal counter ``key`` and wait until it is at least
    ``world_size`` (or ``timeout_ms`` passes). Unlike kvsync's ``Barrier`` it has no
    generations: once the counter reached ``world_size`` every later call passes at once.
    Reply: ``OkReply``, or an ``ErrorReply`` (TIMEOUT)."""

    key: str
    world_size: int
    timeout_ms: int
