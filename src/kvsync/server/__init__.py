"""The server side of kvsync: pure request logic driven by one event-loop thread.

:mod:`kvsync.server.state` (``StoreState``) and :mod:`kvsync.server.router` (``Router``,
``Outgoing``) decide what to answer with no I/O; :class:`StoreServer`
(:mod:`kvsync.server.loop`) moves the bytes under the connection limits of
:class:`ServerSettings` (:mod:`kvsync.server.guard`); :mod:`kvsync.server.host` runs a
master's server on a thread or in a child process. Processes that only serve (``kvsync
serve``, the parameter servers) are entry points of the layer above, :mod:`kvsync.launcher`.

Example:
    >>> with StoreServer(port=0).start() as server:
    ...     server.port > 0
    True
"""

from __future__ import annotations

from kvsync.server.guard import ServerSettings
from kvsync.server.loop import StoreServer

__all__ = ["ServerSettings", "StoreServer"]
