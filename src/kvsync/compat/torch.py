"""A ``TCPStore`` with PyTorch's semantics: ``get``/``multi_get`` wait for missing keys.

Everything else (constructor, methods, timeouts, errors) is :class:`kvsync.TCPStore`. Cheap
torch attributes are provided (``libuvBackend``). It does not subclass
``torch.distributed.Store``, so it cannot be passed to ``init_process_group(store=...)``.

Example:
    >>> with TCPStore("127.0.0.1", 0, is_master=True, timeout=5) as store:
    ...     store.set("k", "v")
    ...     store.get("k"), store.libuvBackend
    (b'v', False)
"""

from __future__ import annotations

from kvsync.store.tcp import TCPStore as _TCPStore

__all__ = ["TCPStore"]


class TCPStore(_TCPStore):
    """:class:`kvsync.TCPStore` whose ``get`` of a missing key waits for it until the
    store's timeout, then raises :class:`~kvsync.errors.StoreTimeoutError` (as PyTorch's).

    Example:
        >>> with TCPStore("127.0.0.1", 0, is_master=True, timeout=0.2) as store:
        ...     store.get("never")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kvsync.errors.StoreTimeoutError: ...
    """

    _blocking_get = True

    @property
    def libuvBackend(self) -> bool:  # noqa: N802 - PyTorch's attribute name
        """Always ``False``: kvsync's server is a selectors event loop, not libuv."""
        return False
