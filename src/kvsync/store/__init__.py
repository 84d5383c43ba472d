"""The Store API: a key-value store for rendezvous and coordination between ranks.

:class:`Store` implements every public method once over a single request method; the
concrete stores only move requests: :class:`HashStore` into an in-process
:class:`~kvsync.server.state.StoreState`, :class:`PrefixStore` into another store under a
key prefix, ``kvsync.TCPStore`` over a socket to the server. :mod:`kvsync.store.sync` holds
barriers and rendezvous built only from the Store API.

Example:
    >>> from kvsync.store import HashStore
    >>> store = HashStore()
    >>> store.set("k", "v"); store.get("k")
    b'v'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvsync.lazy import lazy_names
from kvsync.store.base import Store

if TYPE_CHECKING:
    from kvsync.store.hash import HashStore
    from kvsync.store.prefix import PrefixStore

__all__ = ["HashStore", "PrefixStore", "Store"]

#: public name -> its module, imported on first use (PEP 562): ``kvsync.TCPStore`` loads
#: neither the in-process store's request logic nor the prefix wrapper.
_LAZY = {"HashStore": "kvsync.store.hash", "PrefixStore": "kvsync.store.prefix"}
__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
