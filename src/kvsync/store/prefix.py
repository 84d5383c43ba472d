"""A view of another store where every key lives under ``<prefix>/``.

Strategy: :class:`PrefixStore` rewrites the ``key`` / ``keys`` fields of each request
(``dataclasses.replace``) and forwards it to the wrapped store's ``_call``, so it works over
any :class:`~kvsync.store.Store` (and over another PrefixStore) and inherits its get
flavour. ``list_keys`` keeps only the keys under the prefix and strips it.

``num_keys`` is forwarded unchanged and so counts every key of the wrapped store, as
PyTorch's ``PrefixStore`` does (counting only this prefix would cost a full listing; use
``len(store.list_keys())`` for that).

Example:
    >>> from kvsync.store import HashStore
    >>> base = HashStore()
    >>> job = PrefixStore("job1", base)
    >>> job.set("addr", "10.0.0.1")
    >>> base.get("job1/addr"), job.list_keys()
    (b'10.0.0.1', ['addr'])
"""

from __future__ import annotations

import dataclasses

from kvsync.protocol import messages as m
from kvsync.store.base import Store

__all__ = ["PrefixStore"]

#: request type -> name of its field holding one key / a tuple of keys.
_KEY_FIELD: dict[type, str] = {
    m.Set: "key",
    m.Get: "key",
    m.Add: "key",
    m.CompareSet: "key",
    m.DeleteKey: "key",
    m.Append: "key",
    m.QueuePush: "key",
    m.QueuePop: "key",
    m.QueueLen: "key",
    m.Barrier: "key",
}
_KEYS_FIELD: dict[type, str] = {
    m.Wait: "keys",
    m.Check: "keys",
    m.MultiGet: "keys",
    m.MultiSet: "keys",
}


class PrefixStore(Store):
    """``store`` seen through the key prefix ``prefix`` (PyTorch's ``PrefixStore``).

    Args:
        prefix: prepended to every key as ``f"{prefix}/{key}"``.
        store: the store holding the data (any Store); not closed by :meth:`close`.

    Raises:
        TypeError: ``prefix`` is not ``str`` or ``store`` not a Store.

    Example:
        >>> from kvsync.store import HashStore
        >>> s = PrefixStore("a", PrefixStore("b", HashStore()))
        >>> s.add("n", 1); s.underlying_store.underlying_store.list_keys()
        1
        ['b/a/n']
    """

    def __init__(self, prefix: str, store: Store) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be str, got {type(prefix).__name__}")
        if not isinstance(store, Store):
            raise TypeError(f"store must be a kvsync Store, got {type(store).__name__}")
        super().__init__(store._timeout)
        self._prefix = prefix
        self._store = store
        self._blocking_get = store._blocking_get
        self._server_barrier = store._server_barrier
        self._rank = store._rank

    @property
    def underlying_store(self) -> Store:
        """The wrapped store."""
        return self._store

    @property
    def prefix(self) -> str:
        """The prefix (without the trailing ``/``)."""
        return self._prefix

    def _prefixed(self, msg: object) -> object:
        """``msg`` with the prefix in front of its key(s)."""
        kind = type(msg)
        p = f"{self._prefix}/"
        if kind in _KEY_FIELD:
            name = _KEY_FIELD[kind]
            return dataclasses.replace(msg, **{name: p + getattr(msg, name)})  # type: ignore[type-var]
        if kind in _KEYS_FIELD:
            name = _KEYS_FIELD[kind]
            keys = tuple(p + k for k in getattr(msg, name))
            return dataclasses.replace(msg, **{name: keys})  # type: ignore[type-var]
        return msg

    def _call(self, msg: object, timeout: float) -> object:
        reply = self._store._call(self._prefixed(msg), timeout)
        if isinstance(reply, m.KeysReply) and type(msg) is m.ListKeys:
            p = f"{self._prefix}/"
            n = len(p)
            return m.KeysReply(tuple(k[n:] for k in reply.keys if k.startswith(p)))
        return reply

    def _post(self, msg: object) -> None:
        self._store._post(self._prefixed(msg))

    def _repr_fields(self) -> str:
        return f"prefix={self._prefix!r}, store={self._store!r}, "
