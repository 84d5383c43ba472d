"""A ``TCPStore`` with PyTorch's semantics: ``get``/``multi_get`` wait for missing keys.

Everything else (constructor, methods, timeouts, errors) is :class:`kvsync.TCPStore`. Cheap
torch attributes are provided (``libuvBackend``). When torch is importable the class also
subclasses ``torch.distributed.Store``, so it can be passed to
``torch.distributed.init_process_group(backend="gloo", store=..., rank=..., world_size=...)``
(torch calls its ``set``/``get``/``add``/``wait``/... methods); without torch it is a plain
kvsync store.

Example:
    >>> with TCPStore("127.0.0.1", 0, is_master=True, timeout=5) as store:
    ...     store.set("k", "v")
    ...     store.get("k"), store.libuvBackend
    (b'v', False)
"""

from __future__ import annotations

import importlib
from typing import Any

from kvsync.store.tcp import TCPStore as _TCPStore

__all__ = ["TCPStore"]


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
