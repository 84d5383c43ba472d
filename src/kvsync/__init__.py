"""kvsync: a pure-Python distributed key-value store for machine-learning training.

Two layers in one package:

* :class:`kvsync.TCPStore` — a rendezvous key-value store with PyTorch's / MindSpore's
  ``TCPStore`` API, served by one event-loop thread (in the master process, in
  ``kvsync-run``, or alone with ``kvsync serve``). :class:`HashStore` (in-process) and
  :class:`PrefixStore` share its API; :mod:`kvsync.compat.torch` has the torch flavour.
* :mod:`kvsync.kv` — MXNet's ``KVStore`` parameter-server API over numpy arrays
  (``local``, ``device``, ``dist_sync``, ``dist_async``, ``dist_device_sync``), with the
  optimizers of :mod:`kvsync.optimizer` and :class:`kvsync.sparse.RowSparseArray`.

Example:
    >>> import kvsync
    >>> with kvsync.TCPStore("127.0.0.1", 0, is_master=True, timeout=10) as store:
    ...     store.set("first_key", "first_value")
    ...     store.get("first_key"), store.add("counter", 2), store.delete_key("first_key")
    (b'first_value', 2, True)
    >>> kv = kvsync.kv.create("local")
    >>> import numpy as np
    >>> kv.init("w", np.zeros(3)); kv.push("w", np.ones(3)); kv.pull("w")
    array([1., 1., 1.])
"""

from __future__ import annotations

from kvsync import errors, kv, optimizer, sparse
from kvsync.store import HashStore, PrefixStore, Store
from kvsync.store.tcp import TCPStore

__version__ = "0.1.0"

__all__ = [
    "HashStore",
    "PrefixStore",
    "Store",
    "TCPStore",
    "__version__",
    "errors",
    "kv",
    "optimizer",
    "sparse",
]
