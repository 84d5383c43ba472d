"""Drop-in flavours of kvsync's classes for code written against other libraries.

:mod:`kvsync.compat.torch` holds a ``TCPStore`` with PyTorch's semantics where they differ
from the reference document's (``get`` waits for a missing key).

Example:
    >>> from kvsync.compat.torch import TCPStore
    >>> TCPStore._blocking_get
    True
"""

from __future__ import annotations

__all__: list[str] = []
