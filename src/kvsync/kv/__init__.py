"""MXNet's KVStore API over numpy arrays.

A KVStore keeps one array per key (an ``int`` or a ``str``). Training code ``init`` s
each parameter once, then every step ``push`` es gradients (one array per device, summed)
and ``pull`` s the updated weights; with an optimizer set, the store runs it on every
push. Types: ``local`` and ``device`` (one process, :mod:`kvsync.kv.local`) and the
``dist_*`` types (parameter servers, :mod:`kvsync.kv.dist`, imported with the client on
their first :func:`create`); more types register through :meth:`KVStoreBase.register`.

Example:
    >>> import numpy as np
    >>> from kvsync import kv
    >>> store = kv.create("local")
    >>> store.type, store.rank, store.num_workers
    ('local', 0, 1)
    >>> store.init(3, np.zeros(2))
    >>> store.push(3, [np.ones(2), np.ones(2)])
    >>> store.pull(3)
    array([2., 2.])
"""

from __future__ import annotations

from kvsync.kv import local
from kvsync.kv.base import KVStoreBase, create
from kvsync.kv.local import LocalKVStore

__all__ = ["KVStoreBase", "LocalKVStore", "create", "local"]
