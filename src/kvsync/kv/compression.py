"""Gradient compression: MXNet's 1-bit and 2-bit quantisation with residual feedback.

Strategy: the sender keeps a residual array per key. To send a gradient it adds the
gradient to the residual, quantises the sum, and keeps in the residual exactly what the
quantised value did not carry (``residual = residual + grad - dequantised``), so nothing
is lost, only delayed. Everything is vectorised numpy; codes are packed into ``uint32``
words bit-for-bit as MXNet lays them out in memory (little-endian words):

* ``2bit`` (threshold ``t > 0``): ``r >= t`` sends ``+t`` (code ``11``), ``r <= -t``
  sends ``-t`` (code ``10``), otherwise ``0`` (``00``); 16 codes per word, the first
  value in the two high bits of the first byte.
* ``1bit`` (threshold ``t``): ``r > t`` sends ``+1`` (bit 1), otherwise ``-1`` (bit 0);
  32 codes per word, the first value in the high bit of the first byte.

Example:
    >>> import numpy as np
    >>> gc = create_compression({"type": "2bit", "threshold": 0.5})
    >>> g = np.array([0.75, -0.625, 0.25, 0.0], np.float32)
    >>> packed = gc.compress("w", g)
    >>> packed.dtype, packed.shape
    (dtype('uint32'), (1,))
    >>> print(gc.decompress(packed, g.shape, g.dtype))
    [ 0.5 -0.5  0.   0. ]
    >>> print(gc.residual("w"))
    [ 0.25  -0.125  0.25   0.   ]
    >>> gc.to_params()
    {'type': '2bit', 'threshold': 0.5}
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from kvsync.errors import InvalidArgumentError, ShapeMismatchError, UnknownNameError
from kvsync.kv.reduce import run_split

__all__ = [
    "GradientCompression",
    "OneBitCompression",
    "TwoBitCompression",
    "create_compression",
]

Array = np.ndarray[Any, Any]
Packed = np.ndarray[Any, np.dtype[np.uint32]]
_WORD = np.dtype("<u4")
#: Values quantised per block (a multiple of 32): temporaries stay in cache, and blocks
#: are shared between threads for large arrays.
CHUNK_VALUES = 1 << 16


class GradientCompression(abc.ABC):
    """A quantiser with one residual array per key (per device, when keys are tuples).

    Args:
        threshold: the quantisation threshold (see the module notes).
    """

    #: The ``type`` name in compression parameters.
    TYPE: ClassVar[str]
    #: How many values one 32-bit word carries.
    VALUES_PER_WORD: ClassVar[int]

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)
        self._residuals: dict[Hashable, Array] = {}
        self._tables: dict[np.dtype[Any], Array] = {}

    def to_params(self) -> dict[str, Any]:
        """The parameters that :func:`create_compression` turns back into this object."""
        return {"type": self.TYPE, "threshold": self.threshold}

    def packed_words(self, size: int) -> int:
        """Number of ``uint32`` words a gradient of ``size`` values packs into."""
        return -(-size // self.VALUES_PER_WORD)

    def residual(self, key: Hashable) -> Array | None:
        """The residual kept for ``key`` (``None`` before its first :meth:`compress`)."""
        return self._residuals.get(key)

    def reset(self) -> None:
        """Forget every residual."""
        self._residuals.clear()

    def compress(self, key: Hashable, grad: npt.ArrayLike) -> Packed:
        """Quantise ``residual[key] + grad``; keep the unsent part in ``residual[key]``.

        Args:
            key: whose residual to use (any hashable, e.g. ``(key, device)``).
            grad: a float array; not modified.

        Returns:
            A 1-D little-endian ``uint32`` array of :meth:`packed_words` words.

        Raises:
            InvalidArgumentError: ``grad`` is not a float array.
            ShapeMismatchError: ``grad`` does not match the residual kept for ``key``.
        """
        g = np.asarray(grad)
        if g.dtype.kind != "f":
            raise InvalidArgumentError(
                f"gradient compression needs a float array for key {key!r}, got {g.dtype}"
            )
        r = self._residuals.get(key)
        if r is None:
            r = self._residuals[key] = np.zeros(g.shape, g.dtype)
        elif r.shape != g.shape or r.dtype != g.dtype:
            raise ShapeMismatchError(
                f"gradient for key {key!r} has shape {g.shape} and dtype {g.dtype}, its "
                f"residual has {r.shape} and {r.dtype}"
            )
        flat_r = r.reshape(-1)
        flat_g = np.ascontiguousarray(g).reshape(-1)
        words = np.empty(self.packed_words(flat_r.size), _WORD)
        vpw = self.VALUES_PER_WORD

        def work(lo: int, hi: int) -> None:
            for s in range(lo * CHUNK_VALUES, min(hi * CHUNK_VALUES, flat_r.size), CHUNK_VALUES):
                e = min(s + CHUNK_VALUES, flat_r.size)
                rr = flat_r[s:e]
                np.add(rr, flat_g[s:e], out=rr)
                self._quantize_into(rr, words[s // vpw : -(-e // vpw)])

        run_split(work, -(-flat_r.size // CHUNK_VALUES), r.nbytes)
        return words

    def decompress(
        self,
        packed: npt.ArrayLike,
        shape: tuple[int, ...] | int,
        dtype: npt.DTypeLike = np.float32,
        out: Array | None = None,
    ) -> Array:
        """The dequantised gradient of ``shape`` and ``dtype`` (written to ``out`` if given).

        Raises:
            ShapeMismatchError: ``packed`` has the wrong number of words for ``shape``.
        """
        shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
        size = int(np.prod(shape_t, dtype=np.int64))
        words = np.ascontiguousarray(packed, dtype=_WORD).reshape(-1)
        if words.size != self.packed_words(size):
            raise ShapeMismatchError(
                f"{words.size} packed words cannot hold {size} values "
                f"({self.packed_words(size)} needed for {self.TYPE})"
            )
        dt = np.dtype(dtype)
        if out is None:
            out = np.empty(shape_t, dt)
        elif out.shape != shape_t or out.dtype != dt or not out.flags.c_contiguous:
            raise ShapeMismatchError(
                f"out must be a C-contiguous {dt} array of shape {shape_t}, got {out.dtype} "
                f"{out.shape}"
            )
        table = self._byte_table(dt)  # (256, values per byte): what each byte decodes to
        per_byte = table.shape[1]
        flat = out.reshape(-1)
        raw = words.view(np.uint8)
        whole = size // per_byte  # bytes whose values all belong to the array

        def work(lo: int, hi: int) -> None:
            for c in range(lo, hi):
                b0, b1 = c * CHUNK_VALUES // per_byte, min((c + 1) * CHUNK_VALUES, size) // per_byte
                dst = flat[b0 * per_byte : b1 * per_byte].reshape(-1, per_byte)
                np.take(table, raw[b0:b1], axis=0, out=dst)

        run_split(work, -(-size // CHUNK_VALUES), out.nbytes)
        if whole * per_byte < size:  # the values of a last, partly used byte
            flat[whole * per_byte :] = table[raw[whole]][: size - whole * per_byte]

        run_split(work, -(-size // CHUNK_VALUES), out.nbytes)
        return out

    @abc.abstractmethod
    def _quantize_into(self, r: Array, words: Packed) -> None:
        """Pack codes for ``r`` into ``words``; leave the new residual in ``r`` (flat)."""

    @abc.abstractmethod
    def _code_values(self) -> list[float]:
        """The value each code stands for (index = code)."""

    def _byte_table(self, dtype: np.dtype[Any]) -> Array:
        table = self._tables.get(dtype)
        if table is None:
            bits = 32 // self.VALUES_PER_WORD
            per_byte = 8 // bits
            shifts = np.arange(8 - bits, -1, -bits, dtype=np.uint16)
            codes = (np.arange(256, dtype=np.uint16)[:, None] >> shifts) & ((1 << bits) - 1)
            table = self._tables[dtype] = np.array(self._code_values(), dtype)[codes]
            assert table.shape == (256, per_byte)
        return table

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"


class TwoBitCompression(GradientCompression):
    """MXNet's ``2bit``: ``+t`` / ``-t`` / ``0``, 16 values per word.

    Raises:
        InvalidArgumentError: ``threshold`` is not positive.

    Example:
        >>> import numpy as np
        >>> c = TwoBitCompression(1.0)
        >>> hex(int(c.compress(0, np.array([1.0, -1.0, 0.0, 2.0], np.float32))[0]))
        '0xe3'
    """

    TYPE = "2bit"
    VALUES_PER_WORD = 16

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(threshold)
        if not self.threshold > 0:
            raise InvalidArgumentError(
                f"2bit compression needs a threshold greater than 0, got {threshold}"
            )

    def _quantize_into(self, r: Array, words: Packed) -> None:
        t = self.threshold
        pos = r >= t
        neg = r <= -t
        sign = np.subtract(pos.view(np.int8), neg.view(np.int8))
        r -= sign * r.dtype.type(t)  # exactly MXNet's r -= t / r -= -t
        codes = np.zeros(words.size * 16, np.uint8)  # value i's code in byte i: 3, 2 or 0
        c = codes[: r.size]
        np.multiply(pos.view(np.uint8), np.uint8(3), out=c)
        c += neg.view(np.uint8)
        c += neg.view(np.uint8)
        # four codes per little-endian u32 (bits 0, 8, 16, 24) -> one byte, first code high
        quad = codes.view(_WORD)
        packed = quad << 6
        packed |= quad >> 4
        packed |= quad >> 14
        packed |= quad >> 24
        np.copyto(words.view(np.uint8), packed, casting="unsafe")

    def _code_values(self) -> list[float]:
        return [0.0, 0.0, -self.threshold, self.threshold]


class OneBitCompression(GradientCompression):
    """MXNet's ``1bit``: ``+1`` when ``r > threshold`` else ``-1``, 32 values per word.

    Example:
        >>> import numpy as np
        >>> c = OneBitCompression(0.0)
        >>> p = c.compress(0, np.array([0.5, -0.5, 2.0], np.float32))
        >>> print(c.decompress(p, 3)); print(c.residual(0))
        [ 1. -1.  1.]
        [-0.5  0.5  1. ]
    """

    TYPE = "1bit"
    VALUES_PER_WORD = 32

    def _quantize_into(self, r: Array, words: Packed) -> None:
        bits = r > self.threshold
        sign = bits.view(np.int8) * np.int8(2)
        sign -= np.int8(1)
        r -= sign.astype(r.dtype)  # exactly MXNet's r -= 1 / r += 1
        raw = np.packbits(bits, bitorder="big")
        out = words.view(np.uint8)
        out[: raw.size] = raw
        out[raw.size :] = 0

    def _code_values(self) -> list[float]:
        return [-1.0, 1.0]


_TYPES: dict[str, type[GradientCompression]] = {
    TwoBitCompression.TYPE: TwoBitCompression,
    OneBitCompression.TYPE: OneBitCompression,
}


def create_compression(params: Mapping[str, Any]) -> GradientCompression | None:
    """Build a compressor from MXNet-style parameters (``None`` for type ``"none"``).

    Args:
        params: ``{"type": "2bit" | "1bit" | "none", "threshold": float}``; the
            threshold defaults to 0.5 (MXNet's default).

    Raises:
        UnknownNameError: an unknown ``type``; lists the known ones.
        InvalidArgumentError: ``type`` missing, unknown parameter names, a threshold that
            is not a number, or a 2bit threshold that is not positive.

    Example:
        >>> create_compression({"type": "1bit", "threshold": 0})
        OneBitCompression(threshold=0.0)
        >>> create_compression({"type": "3bit"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kvsync.errors.UnknownNameError: unknown gradient compression type '3bit'; known: ...
    """
    if not isinstance(params, Mapping) or "type" not in params:
        raise InvalidArgumentError(
            f"compression parameters must be a dict with a 'type', got {params!r}"
        )
    extra = sorted(set(params) - {"type", "threshold"})
    if extra:
        raise InvalidArgumentError(f"unknown gradient compression parameters: {extra}")
    kind = str(params["type"]).lower()
    if kind == "none":
        return None
    cls = _TYPES.get(kind)
    if cls is None:
        known = ", ".join(sorted([*_TYPES, "none"]))
        raise UnknownNameError(f"unknown gradient compression type {kind!r}; known: {known}")
    raw = params.get("threshold", 0.5)
    try:
        threshold = float(raw)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"compression threshold must be a number, got {raw!r}") from None
    return cls(threshold)
