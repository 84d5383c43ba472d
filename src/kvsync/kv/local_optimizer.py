"""The updater side of a KVStore that applies updates itself (``local``, ``device``).

:class:`UpdaterMixin` holds ``updater(key, merged, stored)``, builds it from an optimizer
(:func:`kvsync.optimizer.get_updater`) and saves or loads the optimizer's state as the
bytes ``Updater.get_states`` gives (npz + JSON, never pickle).

Example:
    >>> import numpy as np
    >>> from kvsync import kv, optimizer
    >>> store = kv.create("local")
    >>> store.init(0, np.ones(2, np.float32))
    >>> store.set_optimizer(optimizer.SGD(learning_rate=0.5))
    >>> store.push(0, np.ones(2, np.float32))
    >>> store.pull(0)
    array([0.5, 0.5], dtype=float32)
"""

from __future__ import annotations

import threading
from typing import Any

from kvsync.errors import InvalidArgumentError, KVStoreError
from kvsync.kv.base import UpdateFunction

__all__ = ["UpdaterMixin"]


class UpdaterMixin:
    """``_set_updater``, ``set_optimizer``, ``save/load_optimizer_states`` for a store.

    The store sets ``self._updater = None`` and ``self._lock`` (a lock) in ``__init__``.
    """

    _updater: UpdateFunction | None
    _lock: threading.RLock

    def _set_updater(self, updater: UpdateFunction | None) -> None:
        """Set ``updater(key, merged, stored)`` (``None`` removes it).

        Raises:
            InvalidArgumentError: ``updater`` is not callable.
        """
        if updater is not None and not callable(updater):
            raise InvalidArgumentError(f"an updater must be callable, got {type(updater).__name__}")
        with self._lock:
            self._updater = updater

    def set_optimizer(self, optimizer: Any) -> None:
        """Run ``optimizer`` (a :class:`kvsync.optimizer.Optimizer`) on every push.

        Example (the reference's example: the default SGD, learning rate 0.01):
            >>> import numpy as np
            >>> from kvsync import kv, optimizer
            >>> store = kv.create()
            >>> weight = np.zeros((2, 2), np.float32)
            >>> store.init(3, weight)
            >>> store.set_optimizer(optimizer.SGD())
            >>> store.push(3, np.ones((2, 2), np.float32))
            >>> store.pull(3, out=weight)
            array([[-0.01, -0.01],
                   [-0.01, -0.01]], dtype=float32)
        """
        # imported on use: a store that never gets an optimizer skips its import time
        from kvsync.optimizer import get_updater

        self._set_updater(get_updater(optimizer))

    def save_optimizer_states(self, fname: str, dump_optimizer: bool = False) -> None:
        """Write the updater's state (``Updater.get_states``) to the file ``fname``.

        Raises:
            KVStoreError: no optimizer is set (a plain function updater has no state).
        """
        data = self._stateful_updater().get_states(dump_optimizer)
        with open(fname, "wb") as f:
            f.write(data)

    def load_optimizer_states(self, fname: str) -> None:
        """Restore the updater's state from ``fname`` (written by save_optimizer_states).

        Raises:
            KVStoreError: no optimizer is set.
        """
        updater = self._stateful_updater()
        with open(fname, "rb") as f:
            updater.set_states(f.read())

    def _stateful_updater(self) -> Any:
        u = self._updater
        if u is None or not hasattr(u, "get_states") or not hasattr(u, "set_states"):
            raise KVStoreError("no optimizer is set: call set_optimizer() before saving states")
        return u
