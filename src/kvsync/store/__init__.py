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

from kvsync.store.base import Store
from kvsync.store.hash import HashStore
from kvsync.store.prefix import PrefixStore

__all__ = ["HashStore", "PrefixStore", "Store"]
