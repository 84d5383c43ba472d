"""MXNet's KVStore API over numpy arrays.

A KVStore keeps one array per key (an ``int`` or a ``str``). Training code ``init`` s
each parameter once, then every step ``push`` es gradients (one array per device, summed)
and ``pull`` s the updated weights; with an optimizer set, the store runs it on every
push. Types: ``local`` and ``device`` (one process, :mod:`kvsync.kv.local`); more
types register through :meth:`KVStoreBase.register` and are built by :func:`create`.

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

from kvsync.kv import dist, local  # importing registers the types
from kvsync.kv.base import KVStoreBase, create
from kvsync.kv.local import LocalKVStore

__all__ = ["KVStoreBase", "LocalKVStore", "create", "dist", "local"]
