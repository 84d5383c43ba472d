"""Test helpers: run a function on N localhost ranks against a fresh store.

:func:`spawn_ranks` runs ``fn(rank, world_size, store_address)`` on ``world_size`` ranks
(threads, or one process each) with a new store server on a free 127.0.0.1 port, returns
their results in rank order and re-raises the first failure as
:class:`~kvsync.errors.RankFailedError` with the rank and its traceback. The pytest plugin
:mod:`kvsync.testing.plugin` wraps it in fixtures (``kvsync_ranks``,
``kvsync_store_server``, ``kvsync_store``).

Example:
    >>> from kvsync.testing import spawn_ranks
    >>> spawn_ranks(lambda rank, world_size, address: rank * 10, 3, mode="thread")
    [0, 10, 20]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvsync.lazy import lazy_names

if TYPE_CHECKING:
    from kvsync.testing.child import StoreAddress
    from kvsync.testing.spawn import RankFunction, spawn_ranks

__all__ = ["RankFunction", "StoreAddress", "spawn_ranks"]

#: public name -> its module, imported on first use (PEP 562), so the pytest plugin (a
#: submodule, loaded into every pytest run of an environment with kvsync installed) does not
#: import the server and the store through this package.
_LAZY = {
    "RankFunction": "kvsync.testing.spawn",
    "StoreAddress": "kvsync.testing.child",
    "spawn_ranks": "kvsync.testing.spawn",
}
__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
