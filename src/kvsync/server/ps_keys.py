"""Per-key state of the parameter server, and the wire form of KVStore keys.

KVStore keys are ``int`` or ``str``; on the wire they are one ``str``: ``"i<n>"`` or
``"s<name>"``, so the two kinds never collide and the server hands the updater the
original key.

Example:
    >>> wire_key(3), wire_key("w"), key_of_wire("i3"), key_of_wire("sw")
    ('i3', 'sw', 3, 'w')
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np

from kvsync.errors import ErrorCode

__all__ = ["Key", "KeyState", "PSRequestError", "key_of_wire", "wire_key"]

#: A KVStore key as users write it.
Key: TypeAlias = "int | str"


class PSRequestError(Exception):
    """A request the server refuses; becomes an ErrorReply with ``code`` (internal)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def wire_key(key: Key) -> str:
    """The wire form of a KVStore key.

    Raises:
        TypeError: ``key`` is neither int nor str (bool is refused too).

    Example:
        >>> wire_key(-1)
        'i-1'
    """
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"KVStore keys are int or str, not {type(key).__name__}")
    return f"i{key}" if isinstance(key, int) else f"s{key}"


def key_of_wire(wire: str) -> Key:
    """The KVStore key of a wire key (the inverse of :func:`wire_key`).

    Raises:
        PSRequestError: ``wire`` is not a wire key (KEY_TYPE).

    Example:
        >>> key_of_wire("s")
        ''
    """
    if wire[:1] == "s":
        return wire[1:]
    if wire[:1] == "i":
        try:
            return int(wire[1:])
        except ValueError:
            pass
    raise PSRequestError(ErrorCode.KEY_TYPE, f"{wire!r} is not a wire key ('i<int>' or 's<str>')")


class KeyState:
    """One key's slice on a server and its open sync round.

    Attributes:
        key: the original KVStore key (given to the updater).
        value: the stored slice (rows of the full array).
        round: how many updates were applied.
        pushed: ranks that pushed into the open round.
    """

    __slots__ = ("_acc", "key", "pushed", "round", "value")

    def __init__(self, key: Key, value: np.ndarray) -> None:
        self.key = key
        self.value = value
        self.round = 0
        self.pushed: set[int] = set()
        self._acc: np.ndarray | None = None

    def check_like(self, v: np.ndarray) -> None:
        """Refuse a pushed slice of another shape or dtype.

        Raises:
            PSRequestError: SHAPE_MISMATCH naming the key and both shapes.
        """
        if v.shape != self.value.shape or v.dtype != self.value.dtype:
            raise PSRequestError(
                ErrorCode.SHAPE_MISMATCH,
                f"push of key {self.key!r}: got {v.dtype}{list(v.shape)}, the stored slice is "
                f"{self.value.dtype}{list(self.value.shape)}")

    def check_rows(self, rows: np.ndarray) -> np.ndarray:
        """Validate local row numbers (1-D integers within the slice).

        Raises:
            PSRequestError: INVALID_ARGUMENT naming the key and the bad rows.
        """
        r = np.asarray(rows)
        n = self.value.shape[0] if self.value.ndim else 0
        if r.ndim != 1 or r.dtype.kind not in "iu":
            raise PSRequestError(ErrorCode.KVSTORE_USAGE,
                                 f"row ids of key {self.key!r} must be a 1-D integer array")
        if r.size and (int(r.min()) < 0 or int(r.max()) >= n):
            raise PSRequestError(ErrorCode.KVSTORE_USAGE,
                                 f"row ids of key {self.key!r} out of range [0, {n})")
        return r.astype(np.intp, copy=False)

    def add(self, rank: int, grad: np.ndarray) -> None:
        """Add ``rank``'s push to the open round (the first push is kept without a copy)."""
        if self._acc is None:
            self._acc = grad if grad.flags.writeable and grad.flags.c_contiguous else grad.copy()
        else:
            np.add(self._acc, grad, out=self._acc)
        self.pushed.add(rank)

    def close_round(self) -> np.ndarray:
        """The open round's sum; the round is emptied."""
        acc, self._acc = self._acc, None
        self.pushed.clear()
        assert acc is not None
        return acc

    def missing(self, num_workers: int) -> list[int]:
        """Ranks that have not pushed into the open round."""
        return [r for r in range(num_workers) if r not in self.pushed]
