"""How a client connection ends, written once for both dialects' clients.

:class:`ConnectionLifetime` gives :class:`~kvsync.client.Client` and
:class:`~kvsync.client.torch.TorchClient` their ``closed`` property, ``close()``, the
context manager, their repr, and the release of the socket of a client collected unclosed;
each client keeps its own ``_fail``, which records the first error and closes the socket.

Example:
    >>> from kvsync.client import Client
    >>> issubclass(Client, ConnectionLifetime)
    True
"""

from __future__ import annotations

import abc
import socket
from types import TracebackType
from typing import TypeVar

from kvsync.errors import KVSyncError, StoreConnectionError

__all__ = ["ConnectionLifetime"]

_C = TypeVar("_C", bound="ConnectionLifetime")


class ConnectionLifetime(abc.ABC):
    """Mixin of a client with a ``_sock``, an ``address`` and ``_error`` (``None`` while
    the connection is usable); :meth:`_fail` records the first error and closes the socket.
    """

    #: What the client is connected to, as its errors name it ("store server host:port").
    peer: str
    _sock: socket.socket
    _error: KVSyncError | None
    address: str

    @abc.abstractmethod
    def _fail(self, exc: KVSyncError) -> None:
        """Record ``exc`` as the connection's error (the first one wins); close the socket."""

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or lost."""
        return self._error is not None

    def close(self) -> None:
        """Close the connection; later calls raise :class:`StoreConnectionError`."""
        self._fail(StoreConnectionError(f"client of {self.peer} is closed"))

    def __del__(self) -> None:  # an unclosed client must not leak its socket
        sock = getattr(self, "_sock", None)
        if sock is not None and getattr(self, "_error", True) is None:
            sock.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address}{', closed' if self.closed else ''})"
