"""PyTorch compatibility: a ``TCPStore`` with torch's semantics, and an adapter for torch.

* :class:`TCPStore` is :class:`kvsync.TCPStore` whose ``get``/``multi_get`` wait for missing
  keys (as PyTorch's do) and with cheap torch attributes (``libuvBackend``). When torch is
  importable it also subclasses ``torch.distributed.Store``, so it can be passed directly to
  ``torch.distributed.init_process_group(backend="gloo", store=..., rank=..., world_size=...)``;
  without torch it is a plain kvsync store.
* :func:`as_torch_store` wraps any other kvsync Store (HashStore, PrefixStore, ...) in a
  ``torch.distributed.Store`` subclass, so it can be passed to
  ``torch.distributed.init_process_group(store=...)`` (torch must be installed; it is imported
  only by that function). Give it a blocking-get store: torch's process groups rely on ``get``
  waiting.

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


def _torch_store_base() -> tuple[tuple[type, ...], type]:
    """(extra bases, metaclass): ``torch.distributed.Store`` when torch is importable."""
    try:
        dist: Any = importlib.import_module("torch.distributed")
    except ImportError:
        return (), type(_TCPStore)
    if not hasattr(dist, "Store"):  # torch built without distributed support
        return (), type(_TCPStore)
    meta = type("_TorchStoreMeta", (type(dist.Store), type(_TCPStore)), {})
    return (dist.Store,), meta


_EXTRA_BASES, _META = _torch_store_base()


class TCPStore(_TCPStore, *_EXTRA_BASES, metaclass=_META):  # type: ignore[misc,metaclass]
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for base in _EXTRA_BASES:  # pybind11 requires its base's __init__ to run
            base.__init__(self)  # type: ignore[misc]
        super().__init__(*args, **kwargs)

    @property
    def libuvBackend(self) -> bool:  # noqa: N802 - PyTorch's attribute name
        """Always ``False``: kvsync's server is a selectors event loop, not libuv."""
        return False


def _value(value: Any) -> str | bytes:
    """A value as torch hands it over (``str``, bytes-like or a list of byte values)."""
    return value if isinstance(value, str) else bytes(value)


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
            self.inner.set(key, _value(value))

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

        def multi_get(self, keys: list[str]) -> list[bytes]:
            return self.inner.multi_get(keys)

        def multi_set(self, keys: list[str], values: list[Any]) -> None:
            self.inner.multi_set(keys, [_value(v) for v in values])

        def append(self, key: str, value: Any) -> None:
            self.inner.append(key, _value(value))

        def list_keys(self) -> list[str]:
            return self.inner.list_keys()

        def queue_push(self, key: str, value: Any) -> None:
            self.inner.queue_push(key, _value(value))

        def queue_pop(self, key: str, block: bool = True) -> bytes:
            return self.inner.queue_pop(key, block)

        def queue_len(self, key: str) -> int:
            return self.inner.queue_len(key)

        def barrier(self, key: str, world_size: int, timeout: timedelta | None = None) -> None:
            self.inner.barrier(key, world_size, timeout)

    return KVSyncTorchStore(store)
