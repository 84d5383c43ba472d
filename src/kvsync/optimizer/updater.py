"""The KVStore-facing updater: per-index states, and their save/load as npz + JSON.

``Updater(index, grad, weight)`` creates the index's state on first use and updates
``weight`` in place. :meth:`Updater.get_states` writes one ``.npz`` (``np.savez`` into
memory, no compression, no pickle) holding every state array plus a ``manifest`` entry: a
uint8 array of UTF-8 JSON::

    {"format": "kvsync.optimizer.states", "version": 1,
     "num_update": int, "counts": [[index, count], ...],
     "states": [[index, tree], ...], "optimizer": optimizer config or null}

where a state ``tree`` is ``null`` (no state), ``"a<k>"`` (the array stored under that name)
or a list of trees (a tuple). Indices keep their type (JSON int or string). Loading uses
``allow_pickle=False`` and checks every field, so foreign bytes give a ``ValueError``.

Example:
    >>> import numpy as np
    >>> from kvsync.optimizer import create, get_updater
    >>> upd = get_updater(create("sgd", learning_rate=0.1, momentum=0.9))
    >>> w = np.ones(3)
    >>> upd(0, np.ones(3), w); upd("bias", np.ones(3), np.zeros(3))
    >>> blob = upd.get_states(dump_optimizer=True)
    >>> fresh = get_updater(create("adam"))
    >>> fresh.set_states(blob)
    >>> fresh.optimizer.name, sorted(map(str, fresh.states)), fresh.optimizer.num_update
    ('sgd', ['0', 'bias'], 1)
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from kvsync.errors import KVSyncError, ShapeMismatchError
from kvsync.optimizer.base import Index, Optimizer, State, check_index
from kvsync.optimizer.registry import from_config

__all__ = ["Updater", "get_updater"]

_FORMAT = "kvsync.optimizer.states"
_VERSION = 1
_MANIFEST = "manifest"


class Updater:
    """Applies an optimizer to KVStore values, keeping one state per index.

    Args:
        optimizer: The :class:`~kvsync.optimizer.base.Optimizer` to apply.

    Example:
        >>> import numpy as np
        >>> from kvsync.optimizer import SGD
        >>> upd = Updater(SGD(learning_rate=0.5))
        >>> w = np.ones(2); upd(3, np.ones(2), w); w
        array([0.5, 0.5])
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Updater needs an Optimizer, got {optimizer!r}")
        self.optimizer = optimizer
        self.states: dict[Index, State] = {}
        self._unchecked: set[Index] = set()

    def __call__(self, index: Index | Sequence[Index] | bytes, grad: Any, weight: Any) -> None:
        """Update ``weight`` in place from ``grad`` (lists of each update several indices).

        Raises:
            KeyTypeError: for an index that is neither int nor str.
            ShapeMismatchError: if grad, weight and a loaded state disagree in shape.
            TypeError: if the weight is not a floating-point numpy array.
        """
        if isinstance(index, (list, tuple)):
            for idx, g, w in zip(index, grad, weight, strict=True):
                self._one(idx, g, w)
        else:
            self._one(index, grad, weight)

    def _one(self, index: object, grad: npt.NDArray[Any], weight: npt.NDArray[Any]) -> None:
        if isinstance(index, bytes):
            index = index.decode("utf-8")
        idx = check_index(index)
        if not isinstance(weight, np.ndarray) or not isinstance(grad, np.ndarray):
            raise TypeError(f"index {idx!r}: weight and grad must be numpy arrays")
        if grad.shape != weight.shape:
            raise ShapeMismatchError(
                f"index {idx!r}: gradient shape {grad.shape} != weight shape {weight.shape}"
            )
        if idx not in self.states:
            self.states[idx] = self.optimizer.create_state_multi_precision(idx, weight)
        elif idx in self._unchecked:
            _check_state_shapes(idx, self.states[idx], weight.shape)
            self._unchecked.discard(idx)
        self.optimizer.update_multi_precision(idx, weight, grad, self.states[idx])

    def get_states(self, dump_optimizer: bool = False) -> bytes:
        """Serialise states and update counts (and the optimizer config if asked).

        Example:
            >>> import numpy as np
            >>> from kvsync.optimizer import create
            >>> blob = Updater(create("adam")).get_states()
            >>> blob[:2]
            b'PK'
        """
        arrays: dict[str, npt.NDArray[Any]] = {}
        states = [[idx, _encode(state, arrays)] for idx, state in self.states.items()]
        manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "num_update": self.optimizer.num_update,
            "counts": [[k, v] for k, v in self.optimizer.update_counts.items()],
            "states": states,
            "optimizer": self.optimizer.to_config() if dump_optimizer else None,
        }
        text = json.dumps(manifest, allow_nan=True).encode("utf-8")
        arrays[_MANIFEST] = np.frombuffer(text, dtype=np.uint8)
        buf = io.BytesIO()
        savez: Any = np.savez  # numpy's stub types **kwds as its allow_pickle flag
        savez(buf, **arrays)
        return buf.getvalue()

    def set_states(self, states: bytes) -> None:
        """Restore what :meth:`get_states` saved (replacing the optimizer if it was dumped).

        Raises:
            ValueError: if ``states`` is not a kvsync optimizer-states blob (the message says
                what is wrong); the updater is left unchanged.

        Example:
            >>> from kvsync.optimizer import create
            >>> Updater(create("sgd")).set_states(b"not a checkpoint")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: optimizer states are not a kvsync npz checkpoint: ...
        """
        arrays = _read_npz(states)
        manifest = _read_manifest(arrays)
        try:
            loaded = {
                check_index(idx): _decode(tree, arrays)
                for idx, tree in _pair_list(manifest, "states")
            }
            counts = {check_index(idx): n for idx, n in _pair_list(manifest, "counts")}
            num_update = manifest["num_update"]
            if not isinstance(num_update, int) or not all(
                isinstance(n, int) for n in counts.values()
            ):
                raise ValueError("update counts must be integers")
            cfg = manifest.get("optimizer")
            optimizer = self.optimizer if cfg is None else from_config(cfg)
            optimizer.set_update_counts(counts, num_update)
        except (KeyError, TypeError, KVSyncError) as exc:
            raise ValueError(f"optimizer states are malformed: {exc}") from exc
        self.optimizer = optimizer
        self.states = loaded
        self._unchecked = set(loaded)


def get_updater(optimizer: Optimizer) -> Updater:
    """The updater a KVStore calls as ``updater(key, grad, stored_weight)``.

    Example:
        >>> from kvsync.optimizer import create
        >>> get_updater(create("nag")).optimizer.name
        'nag'
    """
    return Updater(optimizer)


def _encode(state: State, arrays: dict[str, npt.NDArray[Any]]) -> Any:
    if state is None:
        return None
    if isinstance(state, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = state
        return name
    return [_encode(s, arrays) for s in state]


def _decode(tree: Any, arrays: dict[str, npt.NDArray[Any]]) -> State:
    if tree is None:
        return None
    if isinstance(tree, str):
        if tree == _MANIFEST or tree not in arrays:
            raise ValueError(f"state refers to a missing array {tree!r}")
        return arrays[tree]
    if isinstance(tree, list):
        return tuple(_decode(t, arrays) for t in tree)
    raise ValueError(f"bad state entry {tree!r}")


def _read_npz(data: bytes) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"set_states needs bytes, got {type(data).__name__}")
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"optimizer states are not a kvsync npz checkpoint: {exc}") from exc


def _read_manifest(arrays: dict[str, npt.NDArray[Any]]) -> dict[str, Any]:
    raw = arrays.get(_MANIFEST)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("optimizer states have no kvsync manifest")
    try:
        manifest = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"optimizer states manifest is not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise ValueError("optimizer states manifest has the wrong format tag")
    if manifest.get("version") != _VERSION:
        raise ValueError(
            f"optimizer states version {manifest.get('version')!r} is not "
            f"supported (this kvsync reads version {_VERSION})"
        )
    return manifest


def _pair_list(manifest: dict[str, Any], key: str) -> list[tuple[Any, Any]]:
    value = manifest[key]
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise ValueError(f"manifest {key!r} must be a list of [index, value] pairs")
    return [(p[0], p[1]) for p in value]


def _check_state_shapes(index: Index, state: State, shape: tuple[int, ...]) -> None:
    if isinstance(state, np.ndarray):
        if state.shape != shape:
            raise ShapeMismatchError(
                f"index {index!r}: loaded optimizer state has shape {state.shape}, "
                f"weight has {shape}"
            )
    elif isinstance(state, tuple):
        for s in state:
            _check_state_shapes(index, s, shape)
