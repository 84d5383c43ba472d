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

import importlib
from typing import TYPE_CHECKING, Any

from kvsync import errors

if TYPE_CHECKING:
    from kvsync import kv, optimizer, sparse
    from kvsync.store import HashStore, PrefixStore, Store
    from kvsync.store.tcp import TCPStore

__version__ = "0.1.0"

#: public name -> the module it comes from (imported on first use, PEP 562: ``import
#: kvsync.cli`` or the launcher need neither numpy nor the KVStore layer).
_LAZY = {
    "HashStore": "kvsync.store",
    "PrefixStore": "kvsync.store",
    "Store": "kvsync.store",
    "TCPStore": "kvsync.store.tcp",
    "kv": "kvsync",
    "optimizer": "kvsync",
    "sparse": "kvsync",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'kvsync' has no attribute {name!r}")
    value = (
        importlib.import_module(f"kvsync.{name}")
        if where == "kvsync"
        else getattr(importlib.import_module(where), name)
    )
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

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
