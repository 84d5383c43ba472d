"""Per-thread scratch arrays, so optimizer steps on big arrays allocate nothing.

A fresh 256 MB temporary costs as much as the arithmetic itself (page faults on first
touch), so each optimizer keeps, per thread and per named slot and dtype, one flat buffer
as large as the biggest array it has updated, and hands out reshaped views of it.

Example:
    >>> import numpy as np
    >>> ws = Workspace()
    >>> a = ws.get("g", (2, 3), np.dtype(np.float32))
    >>> b = ws.get("g", (3,), np.dtype(np.float32))
    >>> a.shape, b.shape, np.shares_memory(a, b)
    ((2, 3), (3,), True)
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Workspace"]


class Workspace:
    """Thread-local scratch buffers keyed by (slot name, dtype).

    Views handed out for the same slot alias each other: use a different slot for every
    temporary that must stay alive at the same time.

    Example:
        >>> import numpy as np
        >>> Workspace().get("t", (4,), np.dtype(np.float64)).dtype
        dtype('float64')
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, slot: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """An uninitialised array of ``shape``/``dtype`` backed by the slot's buffer.

        Raises:
            ValueError: if ``shape`` has a negative dimension.
        """
        size = math.prod(shape)
        if size < 0:
            raise ValueError(f"negative dimension in shape {shape}")
        buffers: dict[tuple[str, str], npt.NDArray[Any]] | None = getattr(
            self._local, "buffers", None
        )
        if buffers is None:
            buffers = {}
            self._local.buffers = buffers
        key = (slot, dtype.str)
        buf = buffers.get(key)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=dtype)
            buffers[key] = buf
        return buf[:size].reshape(shape)

    def clear(self) -> None:
        """Drop this thread's buffers (they are rebuilt on demand).

        Example:
            >>> Workspace().clear()
        """
        self._local.buffers = {}
