"""PyTorch compatibility: a ``TCPStore`` with torch's semantics, and an adapter for torch.

* :class:`TCPStore` is :class:`kvsync.TCPStore` whose ``get``/``multi_get`` wait for missing
  keys (as PyTorch's do) and with cheap torch attributes (``libuvBackend``).
* :func:`as_torch_store` wraps any kvsync Store in a ``torch.distributed.Store`` subclass,
  so it can be passed to ``torch.distributed.init_process_group(store=...)`` (torch must be
  installed; it is imported only by that function). Give it a blocking-get store (this
  module's ``TCPStore``): torch's process groups rely on ``get`` waiting.

Example:
    >>> with TCPStore("127.0.0.1", 0, is_master=True, timeout=5) as store:
    ...     store.set("k", "v")
    ...     store.get("k"), store.libuvBackend
    (b'v', False)
"""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import Any

from kvsync.store.base import Store
from kvsync.store.tcp import TCPStore as _TCPStore

__all__ = ["TCPStore", "as_torch_store"]


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


def as_torch_store(store: Store) -> Any:
    """A ``torch.distributed.Store`` forwarding every call to ``store``.

    Args:
        store: a kvsync Store (usually :class:`TCPStore` of this module).

    Returns:
        An instance of a ``torch.distributed.Store`` subclass; pass it to
        ``torch.distributed.init_process_group(backend, store=..., rank=..., world_size=...)``.

    Raises:
        ImportError: torch is not installed (the message says so).
    """
    try:
        dist: Any = importlib.import_module("torch.distributed")
    except ImportError as exc:
        raise ImportError(f"as_torch_store needs torch installed: {exc}") from exc

    class KVSyncTorchStore(dist.Store):  # type: ignore[misc]
        """torch's Store API over a kvsync Store."""

        def __init__(self, inner: Store) -> None:
            super().__init__()
            self.inner = inner

        def set(self, key: str, value: Any) -> None:
            self.inner.set(key, value if isinstance(value, str) else bytes(value))

        def get(self, key: str) -> bytes:
            return self.inner.get(key)

        def add(self, key: str, amount: int) -> int:
            return self.inner.add(key, amount)

        def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
            return self.inner.compare_set(key, expected, desired)

        def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
            self.inner.wait(keys, timeout)

        def check(self, keys: list[str]) -> bool:
            return self.inner.check(keys)

        def delete_key(self, key: str) -> bool:
            return self.inner.delete_key(key)

        def num_keys(self) -> int:
            return self.inner.num_keys()

        def set_timeout(self, timeout: timedelta) -> None:
            self.inner.set_timeout(timeout)

    return KVSyncTorchStore(store)
