"""The server side of kvsync: pure request logic driven by one event-loop thread.

:mod:`kvsync.server.state` (``StoreState``) and :mod:`kvsync.server.router` (``Router``,
``Outgoing``) decide what to answer with no I/O; :class:`StoreServer`
(:mod:`kvsync.server.loop`) moves the bytes under the connection limits of
:class:`ServerSettings` (:mod:`kvsync.server.guard`); :mod:`kvsync.server.host` runs a
master's server on a thread or in a child process. Processes that only serve (``kvsync
serve``, the parameter servers) are entry points of the layer above, :mod:`kvsync.launcher`.

Both names are imported on first use (PEP 562): ``import kvsync.server.state``, as the
in-process ``HashStore`` does, loads no event loop.

Example:
    >>> from kvsync.server import StoreServer
    >>> with StoreServer(port=0).start() as server:
    ...     server.port > 0
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvsync.lazy import lazy_names

if TYPE_CHECKING:
    from kvsync.server.guard import ServerSettings
    from kvsync.server.loop import StoreServer

__all__ = ["ServerSettings", "StoreServer"]

#: public name -> the module it comes from.
_LAZY = {"ServerSettings": "kvsync.server.guard", "StoreServer": "kvsync.server.loop"}
__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
