"""The KVStore base class, its registry, and MXNet's argument conventions.

Every KVStore type (``local``, ``device``, the ``dist_*`` types, user types) subclasses
:class:`KVStoreBase` and is registered with :meth:`KVStoreBase.register`;
:func:`create` builds one by name.

Arguments follow MXNet: a key is an ``int`` or a ``str`` (never both in one call, and a
store's first call fixes which of the two it takes from then on); a value
is an array, a list of arrays (one per device: summed before the update) or, for a list
of keys, a list with one such entry per key. :func:`group_pairs` turns any of those forms
into :class:`KeyGroup` s (one per distinct key, first-appearance order, values of a
repeated key merged), checking types on the way, so every store type validates the same
way and can check a whole call before it changes anything.

Example:
    >>> import numpy as np
    >>> g = group_pairs(["a", "b"], [np.zeros(2), [np.ones(2), np.ones(2)]])
    >>> [(x.key, len(x.values)) for x in g]
    [('a', 1), ('b', 2)]
    >>> group_pairs([1, "b"], [np.zeros(2), np.zeros(2)])
    Traceback (most recent call last):
    ...
    kvsync.errors.KeyTypeError: int and str keys mixed in one call: [1, 'b']
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias, TypeVar

import numpy as np

from kvsync.errors import (
    InvalidArgumentError,
    KeyTypeError,
    NameTypeError,
    ShapeMismatchError,
    UnknownNameError,
)
from kvsync.log import configure_from_environment as configure_logging_from_environment
from kvsync.protocol.wire_keys import Key
from kvsync.sparse import RowSparseArray

__all__ = [
    "BUILTIN_TYPES",
    "NOT_PROVIDED",
    "Array",
    "KVStoreBase",
    "Key",
    "KeyGroup",
    "UpdateFunction",
    "Value",
    "check_matches",
    "check_writable",
    "create",
    "group_pairs",
    "normalize_key",
    "pair_row_ids",
]

Array: TypeAlias = "np.ndarray[Any, Any]"
Value: TypeAlias = "np.ndarray[Any, Any] | RowSparseArray"
#: ``updater(key, merged_gradient, stored_weight)`` updates ``stored_weight`` in place (any
#: callable; :class:`kvsync.optimizer.Updater` is one that also saves its states).
UpdateFunction: TypeAlias = "Callable[[Key, Any, Any], None]"

_K = TypeVar("_K", bound="type[KVStoreBase]")

#: Built-in type name -> the module that defines and registers it, imported by the first
#: :func:`create` of that name: the dist types bring the client and its sockets, which a
#: ``local`` store does not need.
BUILTIN_TYPES: dict[str, str] = {
    "local": "kvsync.kv.local",
    "device": "kvsync.kv.local",
    "nccl": "kvsync.kv.local",
    "dist_sync": "kvsync.kv.dist",
    "dist_device_sync": "kvsync.kv.dist",
    "dist_sync_device": "kvsync.kv.dist",
    "dist_async": "kvsync.kv.dist",
    "dist_async_device": "kvsync.kv.dist",
}


def normalize_key(key: object) -> Key:
    """``key`` as a plain ``int`` or ``str`` (numpy integers become ``int``).

    Raises:
        KeyTypeError: ``key`` is neither (``bool`` is refused too).

    Example:
        >>> import numpy as np
        >>> normalize_key(np.int64(3)), normalize_key("w")
        (3, 'w')
    """
    if isinstance(key, str):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return int(key)
    raise KeyTypeError(f"a KVStore key must be an int or a str, got {type(key).__name__} {key!r}")


def _is_value(obj: object) -> bool:
    return isinstance(obj, (np.ndarray, RowSparseArray))


@dataclass(slots=True)
class KeyGroup:
    """One distinct key of a call and every value (or output) given for it, in order."""

    key: Key
    values: list[Any] = field(default_factory=list)


def _leaves(key: Key, entry: object, what: str) -> list[Any]:
    if _is_value(entry):
        return [entry]
    if isinstance(entry, (list, tuple)) and entry and all(_is_value(v) for v in entry):
        return list(entry)
    raise InvalidArgumentError(
        f"{what} for key {key!r} must be a numpy array, a RowSparseArray or a non-empty "
        f"list of them, got {type(entry).__name__}"
    )


def group_pairs(key: object, value: object, *, what: str = "value") -> list[KeyGroup]:
    """MXNet's key/value argument forms, grouped per distinct key.

    Args:
        key: an int or str, or a list/tuple of them.
        value: for one key, an array or a list of arrays; for a list of keys, a list of
            the same length whose entries are arrays or lists of arrays.
        what: the argument's name for error messages (``"value"``, ``"out"``, ...).

    Returns:
        One :class:`KeyGroup` per distinct key, in order of first appearance; a key given
        several times gets all its values, in order.

    Raises:
        KeyTypeError: a key is not an int or str, or both kinds appear in one call.
        InvalidArgumentError: the counts of keys and values differ, or a value is not an
            array.

    Example:
        >>> import numpy as np
        >>> [len(g.values) for g in group_pairs(3, [np.ones(1)] * 4)]
        [4]
    """
    if isinstance(key, (list, tuple)):
        keys = [normalize_key(k) for k in key]
        if not isinstance(value, (list, tuple)) or len(value) != len(keys):
            got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
            raise InvalidArgumentError(
                f"{len(keys)} keys need a list of {len(keys)} {what}s, got {got}"
            )
        entries: list[tuple[Key, object]] = list(zip(keys, value, strict=True))
    else:
        keys = [normalize_key(key)]
        entries = [(keys[0], value)]
    if len({type(k) for k in keys}) > 1:
        raise KeyTypeError(f"int and str keys mixed in one call: {keys}")
    groups: dict[Key, KeyGroup] = {}
    for k, entry in entries:
        groups.setdefault(k, KeyGroup(k)).values.extend(_leaves(k, entry, what))
    return list(groups.values())


def check_matches(
    key: Key, value: Any, shape: tuple[int, ...], dtype: np.dtype[Any], what: str = "value"
) -> None:
    """Check that ``value`` (array or RowSparseArray) has the stored ``shape`` and ``dtype``.

    Raises:
        ShapeMismatchError: naming the key, both shapes or both dtypes.

    Example:
        >>> import numpy as np
        >>> check_matches("w", np.zeros((2, 2)), (2, 3), np.dtype("float64"))
        Traceback (most recent call last):
        ...
        kvsync.errors.ShapeMismatchError: value for key 'w' has shape (2, 2), stored shape is (2, 3)
    """
    vshape = tuple(value.shape)
    if vshape != shape:
        raise ShapeMismatchError(
            f"{what} for key {key!r} has shape {vshape}, stored shape is {shape}"
        )
    if value.dtype != dtype:
        raise ShapeMismatchError(
            f"{what} for key {key!r} has dtype {value.dtype}, stored dtype is {dtype}"
        )


def check_writable(key: Key, out: Any) -> None:
    """Refuse a read-only numpy array as a pull's ``out`` (the pull writes into it).

    Raises:
        InvalidArgumentError: naming the key.

    Example:
        >>> import numpy as np
        >>> a = np.zeros(2); a.flags.writeable = False
        >>> check_writable("w", a)
        Traceback (most recent call last):
        ...
        kvsync.errors.InvalidArgumentError: out for key 'w' is a read-only array
    """
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise InvalidArgumentError(f"out for key {key!r} is a read-only array")


@dataclass(slots=True)
class RowIdPairs:
    """``row_sparse_pull`` arguments, paired: outputs and row-id arrays per key.

    ``copies`` are further outputs that receive a copy of the first output afterwards
    (one ``row_ids`` array given with a list of outputs).
    """

    groups: list[KeyGroup]
    row_ids: dict[Key, list[Any]]
    copies: list[RowSparseArray]


def pair_row_ids(key: object, out: object, row_ids: object) -> RowIdPairs:
    """Check and pair ``row_sparse_pull``'s ``out`` and ``row_ids`` as MXNet does.

    ``row_ids`` is an array or a list of arrays, one per output; a single array with a
    list of outputs is pulled once into the first and copied to the others.

    Raises:
        InvalidArgumentError: ``out`` or ``row_ids`` missing, an output that is not a
            RowSparseArray, or counts that do not match.
        KeyTypeError: bad or mixed keys.

    Example:
        >>> import numpy as np
        >>> outs = [RowSparseArray.zeros((3, 1)) for _ in range(3)]
        >>> p = pair_row_ids("w", outs, np.array([0]))
        >>> len(p.groups[0].values), len(p.copies)
        (1, 2)
    """
    if out is None or row_ids is None:
        raise InvalidArgumentError("row_sparse_pull needs both out= and row_ids=")
    ids_list = [row_ids] if isinstance(row_ids, np.ndarray) else row_ids
    if not isinstance(ids_list, list):
        raise InvalidArgumentError("row_ids must be an array or a list of arrays")
    single = len(ids_list) == 1 and isinstance(out, list)
    first_out = [out[0]] if single and isinstance(out, list) else out
    copies = list(out[1:]) if single and isinstance(out, list) else []
    groups = group_pairs(key, first_out, what="out")
    id_groups = {g.key: g.values for g in group_pairs(key, ids_list, what="row_ids")}
    for g in groups:
        ids = id_groups.get(g.key, [])
        if len(ids) != len(g.values):
            raise InvalidArgumentError(
                f"key {g.key!r} has {len(g.values)} outputs but {len(ids)} row_ids arrays"
            )
    for o in [*(o for g in groups for o in g.values), *copies]:
        if not isinstance(o, RowSparseArray):
            raise InvalidArgumentError(
                f"row_sparse_pull needs RowSparseArray outputs, got {type(o).__name__}"
            )
    return RowIdPairs(groups, id_groups, copies)


class KVStoreBase(abc.ABC):
    """What every KVStore type provides, and the registry of type names.

    Subclasses implement the abstract methods; the others have MXNet-compatible defaults:
    ``init``/``push``/``pull``/``row_sparse_pull`` raise InvalidArgumentError for types
    without them, the optimizer methods raise ``NotImplementedError`` (as MXNet's base
    class does), and :meth:`is_capable` reports a capability when the subclass overrides
    the method behind it.
    """

    #: Capability names for :meth:`is_capable`.
    OPTIMIZER: ClassVar[str] = "optimizer"
    GRADIENT_COMPRESSION: ClassVar[str] = "gradient_compression"
    ROW_SPARSE: ClassVar[str] = "row_sparse"
    #: Names a class registers under; empty means its lower-cased class name.
    NAMES: ClassVar[tuple[str, ...]] = ()
    _registry: ClassVar[dict[str, type[KVStoreBase]]] = {}
    #: The key type (int or str) fixed by a store's first call; see :meth:`_check_key_type`.
    _key_type: type | None = None

    @staticmethod
    def register(klass: _K) -> _K:
        """Class decorator: make ``create(name)`` build ``klass`` for each of its names.

        Raises:
            TypeError: ``klass`` is not a KVStoreBase subclass.

        Example:
            >>> @KVStoreBase.register
            ... class NullStore(KVStoreBase):
            ...     def broadcast(self, key, value, out, priority=0): return out
            ...     def pushpull(self, key, value, out=None, priority=0): return out
            ...     type = "nullstore"; rank = 0; num_workers = 1
            >>> store = create("NullStore")
            >>> type(store).__name__, store.is_capable("optimizer")
            ('NullStore', False)
            >>> del KVStoreBase._registry["nullstore"]
        """
        if not (isinstance(klass, type) and issubclass(klass, KVStoreBase)):
            raise TypeError(f"{klass!r} is not a KVStoreBase subclass")
        for name in klass.NAMES or (klass.__name__.lower(),):
            KVStoreBase._registry[name.lower()] = klass
        return klass

    @classmethod
    def known_names(cls) -> list[str]:
        """Every registered or built-in type name, sorted."""
        return sorted(KVStoreBase._registry.keys() | BUILTIN_TYPES.keys())

    @classmethod
    def _create(cls, name: str, *, timeout: float | None = None) -> KVStoreBase:
        """Build an instance for registered ``name`` (override when one class has several);
        ``timeout`` bounds any waiting the type does while it is built."""
        return cls()

    # -- the interface (MXNet's KVStoreBase) ------------------------------------------
    @abc.abstractmethod
    def broadcast(self, key: Any, value: Any, out: Any, priority: int = 0) -> Any:
        """Broadcast ``value`` (rank 0's) for ``key`` to every rank, into ``out``."""

    @abc.abstractmethod
    def pushpull(self, key: Any, value: Any, out: Any = None, priority: int = 0) -> Any:
        """Push ``value`` then pull the updated value into ``out`` (``value`` if None)."""

    #: capability -> the method a subclass overrides to have it (see :meth:`is_capable`)
    _CAPABILITY_METHODS: ClassVar[dict[str, str]] = {
        "optimizer": "set_optimizer",
        "gradient_compression": "set_gradient_compression",
        "row_sparse": "row_sparse_pull",
    }

    def is_capable(self, capability: str) -> bool:
        """Whether this type supports ``capability`` (see the class constants).

        The default answers whether the subclass overrides the method behind it
        (``set_optimizer``, ``set_gradient_compression``, ``row_sparse_pull``).

        Raises:
            UnknownNameError: an unknown capability name.
        """
        method = self._CAPABILITY_METHODS.get(str(capability).lower())
        if method is None:
            known = sorted(self._CAPABILITY_METHODS)
            raise UnknownNameError(f"unknown capability {capability!r}; known: {known}")
        return getattr(type(self), method) is not getattr(KVStoreBase, method)

    def set_optimizer(self, optimizer: Any) -> None:
        """Run ``optimizer`` on every push (the base class raises NotImplementedError)."""
        raise NotImplementedError(f"KVStore type {self.type!r} does not run optimizers")

    def save_optimizer_states(self, fname: str, dump_optimizer: bool = False) -> None:
        """Write the optimizer state to ``fname`` (the base class raises NotImplementedError)."""
        raise NotImplementedError(f"KVStore type {self.type!r} has no optimizer states")

    def load_optimizer_states(self, fname: str) -> None:
        """Read the optimizer state from ``fname`` (the base class raises NotImplementedError)."""
        raise NotImplementedError(f"KVStore type {self.type!r} has no optimizer states")

    def _check_key_type(self, keys: Iterable[Key]) -> None:
        """Fix the store's key type at its first call and refuse the other kind afterwards
        (MXNet: a store takes int keys or str keys, never both).

        Raises:
            KeyTypeError: naming the key and the type the store took first.
        """
        for key in keys:
            if self._key_type is None:
                self._key_type = type(key)
            elif type(key) is not self._key_type:
                kind = "an int" if isinstance(key, int) else f"a {type(key).__name__}"
                raise KeyTypeError(
                    f"key {key!r} is {kind}, but this store took "
                    f"{self._key_type.__name__} keys first; a store uses one kind of key"
                )

    def _groups(self, key: object, value: object, what: str = "value") -> list[KeyGroup]:
        """:func:`group_pairs`, with the store's key type checked."""
        groups = group_pairs(key, value, what=what)
        self._check_key_type(g.key for g in groups)
        return groups

    def _row_id_pairs(self, key: object, out: object, row_ids: object) -> RowIdPairs:
        """:func:`pair_row_ids`, with the store's key type checked."""
        pairs = pair_row_ids(key, out, row_ids)
        self._check_key_type(g.key for g in pairs.groups)
        return pairs

    @property
    @abc.abstractmethod
    def type(self) -> str:
        """The type name this store was created with."""

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """This worker's rank in ``[0, num_workers)``."""

    @property
    @abc.abstractmethod
    def num_workers(self) -> int:
        """The number of workers."""

    def _unsupported(self, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{what} is not supported by KVStore type {self.type!r}")

    def init(self, key: Any, value: Any) -> None:
        """Initialise keys (types without it raise InvalidArgumentError)."""
        raise self._unsupported("init")

    def push(self, key: Any, value: Any, priority: int = 0) -> None:
        """Push values (types without it raise InvalidArgumentError)."""
        raise self._unsupported("push")

    def pull(self, key: Any, out: Any = None, priority: int = 0, ignore_sparse: bool = True) -> Any:
        """Pull values (types without it raise InvalidArgumentError)."""
        raise self._unsupported("pull")

    def row_sparse_pull(
        self, key: Any, out: Any = None, priority: int = 0, row_ids: Any = None
    ) -> Any:
        """Pull rows (types without it raise InvalidArgumentError)."""
        raise self._unsupported("row_sparse_pull")

    def set_gradient_compression(self, compression_params: dict[str, Any]) -> None:
        """Compress pushed gradients (types without it raise InvalidArgumentError)."""
        raise self._unsupported("gradient compression")

    def set_updater(self, updater: UpdateFunction) -> None:
        """Set ``updater(key, merged, stored)``; same as :meth:`_set_updater`."""
        self._set_updater(updater)

    def _set_updater(self, updater: UpdateFunction) -> None:
        raise self._unsupported("setting an updater")

    def barrier(self) -> None:
        """Wait until every worker reaches the barrier (one worker: returns at once)."""
        self._barrier()

    def _barrier(self) -> None:  # noqa: B027 (optional hook with a sensible default)
        """Single-process types have nothing to wait for."""


#: Type names of other libraries' stores kvsync does not provide -> what to use instead.
NOT_PROVIDED: dict[str, str] = {
    "horovod": "Horovod's allreduce store needs Horovod and MPI/NCCL; kvsync's equivalents "
    "are 'dist_sync' (every worker's gradients summed on parameter servers each step) or, "
    "in one process, 'local'/'device'",
    "byteps": "BytePS's store needs the BytePS servers; kvsync's equivalents are 'dist_sync' "
    "or 'dist_async' (kvsync's own parameter servers, started by kvsync-run --num-servers)",
}


def create(name: str = "local", *, timeout: float | None = None) -> KVStoreBase:
    """Build a KVStore of a registered type (``"local"``, ``"device"``, ...).

    Names are case-insensitive. A built-in type's module (:data:`BUILTIN_TYPES`) is
    imported on its first use. ``timeout`` (seconds) bounds the waiting a type does while it
    is built and in its blocking calls (a dist type waiting for its servers); types that wait
    for nothing ignore it. Default: ``kvsync.defaults.DEFAULT_TIMEOUT``.

    Raises:
        NameTypeError: ``name`` is not a ``str`` (a ``TypeError``).
        UnknownNameError: no type of that name is registered; lists the known names (for
            ``horovod`` and ``byteps``, what to use instead).

    Example:
        >>> create("no_such_store")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kvsync.errors.UnknownNameError: unknown KVStore type 'no_such_store'; known: ...
    """
    configure_logging_from_environment()  # KVSYNC_LOG_LEVEL from a launcher: once per process
    if not isinstance(name, str):
        raise NameTypeError(f"a KVStore type name must be a str, got {type(name).__name__}")
    name = name.lower()
    if name not in KVStoreBase._registry and name in BUILTIN_TYPES:
        importlib.import_module(BUILTIN_TYPES[name])  # registers the type
    klass = KVStoreBase._registry.get(name)
    if klass is None:
        known = ", ".join(KVStoreBase.known_names()) or "(none registered)"
        instead = NOT_PROVIDED.get(name.lower())
        if instead is not None:
            raise UnknownNameError(
                f"KVStore type {name!r} is not provided by kvsync: {instead}; known: {known}"
            )
        raise UnknownNameError(f"unknown KVStore type {name!r}; known: {known}")
    return klass._create(name, timeout=timeout)
