"""How a rank's return value crosses a process boundary without pickle.

A value is encoded as JSON; the types JSON lacks travel as tagged objects: ``bytes``
(base64), tuples, dicts (any JSON-able keys kept in order), and numpy arrays and scalars
(``np.save`` bytes with ``allow_pickle=False``, base64). Anything else is refused with a
``TypeError`` naming its type, never pickled.

Example:
    >>> import numpy as np
    >>> value = {"loss": 0.5, "w": np.arange(3.0), "raw": b"\\x00", "pair": (1, "a")}
    >>> back = decode(encode(value))
    >>> back["w"].tolist(), back["raw"], back["pair"], back["loss"]
    ([0.0, 1.0, 2.0], b'\\x00', (1, 'a'), 0.5)
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np

__all__ = ["decode", "encode"]

_TAG = "__kvsync__"


def encode(value: object) -> str:
    """The JSON text of ``value``.

    Raises:
        TypeError: ``value`` holds an object of a type listed in none of the module's rules.

    Example:
        >>> encode([1, None])
        '[1, null]'
    """
    return json.dumps(_to_json(value))


def decode(text: str) -> Any:
    """The value :func:`encode` encoded.

    Raises:
        ValueError: ``text`` is not what :func:`encode` produces.

    Example:
        >>> decode('{"__kvsync__": "tuple", "items": [1, 2]}')
        (1, 2)
    """
    return json.loads(text, object_hook=_from_json)


def _to_json(value: object) -> Any:
    if isinstance(value, (np.ndarray, np.generic)):  # before float: np.float64 is a float
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        kind = "ndarray" if isinstance(value, np.ndarray) else "scalar"
        return {_TAG: kind, "data": base64.b64encode(buf.getvalue()).decode()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_to_json(v) for v in value]}
    if isinstance(value, dict):
        return {_TAG: "dict", "items": [[_to_json(k), _to_json(v)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_TAG: "bytes", "data": base64.b64encode(bytes(value)).decode()}
    raise TypeError(
        f"a rank returned a {type(value).__name__}, which cannot cross a process boundary "
        "without pickle: return None, bool, int, float, str, bytes, numpy arrays, or "
        "lists, tuples and dicts of them"
    )


def _from_json(obj: dict[str, Any]) -> Any:
    tag = obj.get(_TAG)
    if tag is None:
        return obj
    if tag == "tuple":
        return tuple(obj["items"])
    if tag == "dict":
        return dict(obj["items"])
    if tag == "bytes":
        return base64.b64decode(obj["data"])
    if tag in ("ndarray", "scalar"):
        array = np.load(io.BytesIO(base64.b64decode(obj["data"])), allow_pickle=False)
        return array if tag == "ndarray" else array[()]
    raise ValueError(f"unknown tag {tag!r} in an encoded rank result")
