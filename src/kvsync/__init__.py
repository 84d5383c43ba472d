"""kvsync: a pure-Python distributed key-value store for machine-learning training.

Two layers in one package:

* :class:`kvsync.TCPStore` — a rendezvous key-value store (PyTorch's / MindSpore's
  ``TCPStore`` API) served by one event-loop thread or process.
* :mod:`kvsync.kv` — MXNet's ``KVStore`` parameter-server API over numpy arrays.

Example:
    >>> import kvsync
    >>> kvsync.__version__
    '0.1.0'
"""

from __future__ import annotations

from kvsync import errors

__version__ = "0.1.0"

__all__ = ["__version__", "errors"]
