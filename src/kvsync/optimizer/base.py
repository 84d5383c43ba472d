"""The :class:`Optimizer` base class (MXNet 1.x semantics).

An optimizer owns the hyper-parameters shared by every update rule (``learning_rate``,
``wd``, ``rescale_grad``, ``clip_gradient``, an optional ``lr_scheduler``, per-key
``lr_mult``/``wd_mult``, ``multi_precision``) and the update counters: each call of
``update`` for an index bumps that index's count, and ``num_update`` is the largest count,
which drives the scheduler. Subclasses implement ``create_state`` and ``update`` with
vectorised, in-place numpy, block by block over big arrays, with the helpers of
:class:`~kvsync.optimizer.blocks.BlockKernels`.

Optimizers travel as a registered name plus JSON-able parameters (:meth:`to_config`,
:func:`kvsync.optimizer.from_config`), never as pickle.

Example:
    >>> import numpy as np
    >>> from kvsync import optimizer
    >>> opt = optimizer.create("sgd", learning_rate=0.1, wd=0.0)
    >>> w, g = np.ones(3), np.full(3, 2.0)
    >>> opt.update(0, w, g, opt.create_state(0, w))
    >>> w
    array([0.8, 0.8, 0.8])
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeAlias

import numpy as np
import numpy.typing as npt

from kvsync.errors import KeyTypeError
from kvsync.optimizer.blocks import BlockKernels, Workspace
from kvsync.optimizer.lr_scheduler import LRScheduler

__all__ = ["Index", "Optimizer", "State", "check_index", "positive_or_none"]

logger = logging.getLogger(__name__)

#: A parameter's index: an int or str key of the KVStore.
Index: TypeAlias = int | str
#: Per-index optimizer state: nothing, an array, or a tuple of states.
State: TypeAlias = "npt.NDArray[Any] | tuple[State, ...] | None"


def check_index(index: object) -> Index:
    """Return ``index`` as a plain int or str (numpy integers become int).

    Raises:
        KeyTypeError: for anything else (bools included).

    Example:
        >>> import numpy as np
        >>> check_index(np.int64(3)), check_index("w")
        (3, 'w')
    """
    if isinstance(index, str):
        return str(index)
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        return int(index)
    raise KeyTypeError(f"optimizer index must be an int or str, got {index!r}")


def positive_or_none(value: float | None) -> float | None:
    """``float(value)`` if it is > 0, else None: MXNet's "a bound <= 0 is no bound".

    Example:
        >>> positive_or_none(2), positive_or_none(0.0), positive_or_none(-1), positive_or_none(None)
        (2.0, None, None, None)
    """
    return None if value is None or float(value) <= 0 else float(value)


class Optimizer(BlockKernels, ABC):
    """Base class of all optimizers.

    Args:
        learning_rate: Base learning rate; ``None`` takes the scheduler's ``base_lr`` (or the
            class default: 0.01 unless the optimizer says otherwise). Given together with a
            scheduler, it overrides the scheduler's ``base_lr``.
        wd: Weight decay (L2) coefficient.
        rescale_grad: Gradients are multiplied by this first (often ``1/batch_size``).
        clip_gradient: Clip the rescaled gradient to ``[-clip_gradient, clip_gradient]``;
            None or a value <= 0 turns clipping off (as in MXNet's update operators).
        lr_scheduler: An :class:`~kvsync.optimizer.lr_scheduler.LRScheduler`, called with
            ``num_update``.
        multi_precision: Keep a float32 master copy of float16 weights and update it.
        begin_num_update: Starting value of every update counter.

    Raises:
        ValueError: for a negative ``begin_num_update``.
        TypeError: if ``lr_scheduler`` is not an LRScheduler.

    Example:
        >>> from kvsync.optimizer import SGD, FactorScheduler
        >>> opt = SGD(learning_rate=0.5, lr_scheduler=FactorScheduler(step=1, factor=0.5))
        >>> opt.learning_rate, opt.lr_scheduler.base_lr
        (0.5, 0.5)
    """

    name: ClassVar[str] = ""
    default_learning_rate: ClassVar[float] = 0.01

    def __init__(
        self,
        *,
        learning_rate: float | None = None,
        wd: float = 0.0,
        rescale_grad: float = 1.0,
        clip_gradient: float | None = None,
        lr_scheduler: LRScheduler | None = None,
        multi_precision: bool = False,
        begin_num_update: int = 0,
    ) -> None:
        if (
            isinstance(begin_num_update, bool)
            or not isinstance(begin_num_update, int)
            or begin_num_update < 0
        ):
            raise ValueError(f"begin_num_update must be an int >= 0, got {begin_num_update!r}")
        if lr_scheduler is not None and not isinstance(lr_scheduler, LRScheduler):
            raise TypeError(f"lr_scheduler must be an LRScheduler, got {lr_scheduler!r}")
        self.lr_scheduler = lr_scheduler
        if learning_rate is None:
            learning_rate = (
                lr_scheduler.base_lr if lr_scheduler is not None else self.default_learning_rate
            )
        elif lr_scheduler is not None and lr_scheduler.base_lr != float(learning_rate):
            logger.info(
                "learning_rate %s overrides the scheduler's base_lr %s",
                learning_rate,
                lr_scheduler.base_lr,
            )
            lr_scheduler.base_lr = float(learning_rate)
        self.lr = float(learning_rate)
        self.wd = float(wd)
        self.rescale_grad = float(rescale_grad)
        self.clip_gradient = positive_or_none(clip_gradient)
        self.multi_precision = bool(multi_precision)
        self.begin_num_update = begin_num_update
        self.num_update = begin_num_update
        self.lr_mult: dict[Index, float] = {}
        self.wd_mult: dict[Index, float] = {}
        self._index_update_count: dict[Index, int] = {}
        self._lock = threading.Lock()
        self._workspace = Workspace()
        self._warned_fp16 = False

    # ----------------------------------------------------------------- learning rates
    @property
    def learning_rate(self) -> float:
        """The current learning rate (the scheduler's value at ``num_update``, if any)."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler(self.num_update)
        return self.lr

    def set_learning_rate(self, lr: float) -> None:
        """Set the learning rate of an optimizer that has no scheduler.

        Raises:
            ValueError: if a scheduler drives the learning rate.

        Example:
            >>> from kvsync.optimizer import SGD
            >>> opt = SGD(); opt.set_learning_rate(0.3); opt.learning_rate
            0.3
        """
        if self.lr_scheduler is not None:
            raise ValueError("the learning rate is driven by lr_scheduler; cannot set it")
        self.lr = float(lr)

    def set_lr_mult(self, args_lr_mult: Mapping[Index, float]) -> None:
        """Replace the per-index learning-rate multipliers (keys: int indices or str keys).

        Raises:
            KeyTypeError: for a key that is neither int nor str.

        Example:
            >>> from kvsync.optimizer import SGD
            >>> opt = SGD(learning_rate=0.1); opt.set_lr_mult({"fc_bias": 2.0})
            >>> opt._get_lr("fc_bias"), opt._get_lr(0)
            (0.2, 0.1)
        """
        self.lr_mult = {check_index(k): float(v) for k, v in args_lr_mult.items()}

    def set_wd_mult(self, args_wd_mult: Mapping[Index, float]) -> None:
        """Replace the per-index weight-decay multipliers (keys: int indices or str keys).

        Raises:
            KeyTypeError: for a key that is neither int nor str.

        Example:
            >>> from kvsync.optimizer import SGD
            >>> opt = SGD(wd=0.1); opt.set_wd_mult({3: 0.0}); opt._get_wd(3), opt._get_wd(4)
            (0.0, 0.1)
        """
        self.wd_mult = {check_index(k): float(v) for k, v in args_wd_mult.items()}

    def _get_lr(self, index: Index) -> float:
        lr = self.lr_scheduler(self.num_update) if self.lr_scheduler is not None else self.lr
        return lr * self.lr_mult.get(index, 1.0)

    def _get_wd(self, index: Index) -> float:
        return self.wd * self.wd_mult.get(index, 1.0)

    # ------------------------------------------------------------------ update counts
    def _update_count(self, index: Index) -> int:
        count = self._index_update_count.get(index, self.begin_num_update) + 1
        self._index_update_count[index] = count
        self.num_update = max(count, self.num_update)
        return count

    def _begin_step(self, index: Index) -> tuple[float, float, int]:
        """Count one update of ``index``; return its (lr, wd, count), atomically."""
        with self._lock:
            count = self._update_count(index)
            return self._get_lr(index), self._get_wd(index), count

    @property
    def update_counts(self) -> dict[Index, int]:
        """A copy of the per-index update counts."""
        return dict(self._index_update_count)

    def set_update_counts(self, counts: Mapping[Index, int], num_update: int) -> None:
        """Restore per-index counts and ``num_update`` (used when loading states).

        Raises:
            ValueError: for a negative count.
            KeyTypeError: for an index that is neither int nor str.

        Example:
            >>> from kvsync.optimizer import Adam
            >>> opt = Adam(); opt.set_update_counts({"w": 7}, 7); opt.update_counts, opt.num_update
            ({'w': 7}, 7)
        """
        restored = {check_index(k): int(v) for k, v in counts.items()}
        if any(v < 0 for v in restored.values()) or int(num_update) < 0:
            raise ValueError(f"update counts must be >= 0: {restored}, num_update {num_update}")
        with self._lock:
            self._index_update_count = restored
            self.num_update = int(num_update)

    # ------------------------------------------------------------------------ states
    @abstractmethod
    def create_state(self, index: Index, weight: npt.NDArray[Any]) -> State:
        """Create the auxiliary state (momentum, moments, ...) of ``weight``."""

    def create_state_multi_precision(self, index: Index, weight: npt.NDArray[Any]) -> State:
        """Like :meth:`create_state`; with ``multi_precision`` a float16 weight gets
        ``(float32 master copy, state of the master)``.

        Example:
            >>> import numpy as np
            >>> from kvsync.optimizer import SGD
            >>> st = SGD(momentum=0.9, multi_precision=True).create_state_multi_precision(
            ...     0, np.ones(2, np.float16))
            >>> [a.dtype.name for a in st]
            ['float32', 'float32']
        """
        if weight.dtype == np.float16:
            if self.multi_precision:
                master = weight.astype(np.float32)
                return (master, self.create_state(index, master))
            if not self._warned_fp16:
                self._warned_fp16 = True
                logger.warning(
                    "updating float16 weights in float16 can hurt accuracy; "
                    "consider multi_precision=True"
                )
        return self.create_state(index, weight)

    @abstractmethod
    def update(
        self, index: Index, weight: npt.NDArray[Any], grad: npt.NDArray[Any], state: State
    ) -> None:
        """Update ``weight`` in place from ``grad`` and ``state`` (``grad`` is not modified)."""

    def update_multi_precision(
        self, index: Index, weight: npt.NDArray[Any], grad: npt.NDArray[Any], state: State
    ) -> None:
        """:meth:`update`, through the float32 master copy for float16 weights.

        Example:
            >>> import numpy as np
            >>> from kvsync.optimizer import SGD
            >>> opt = SGD(learning_rate=0.5, multi_precision=True)
            >>> w = np.ones(2, np.float16)
            >>> st = opt.create_state_multi_precision(0, w)
            >>> opt.update_multi_precision(0, w, np.ones(2, np.float16), st)
            >>> w.dtype.name, w.tolist(), st[0].tolist()
            ('float16', [0.5, 0.5], [0.5, 0.5])
        """
        if self.multi_precision and weight.dtype == np.float16:
            if (
                not isinstance(state, tuple)
                or len(state) != 2
                or not isinstance(state[0], np.ndarray)
            ):
                raise ValueError(
                    f"index {index!r}: multi-precision state must be (float32 master, state)"
                )
            # the float16 gradient is widened block by block inside the update
            self.update(index, state[0], grad, state[1])
            np.copyto(weight, state[0], casting="same_kind")
        else:
            self.update(index, weight, grad, state)

    # ------------------------------------------------------------------------ config
    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """The subclass's own constructor arguments (JSON-able)."""

    def to_config(self) -> dict[str, Any]:
        """A JSON-able description that :func:`~kvsync.optimizer.registry.from_config` turns
        back into this optimizer.

        ``{"name": str, "params": {...constructor kwargs...}, "lr_scheduler": cfg | None,
        "lr_mult": [[index, mult], ...], "wd_mult": [[index, mult], ...]}``. Update counts
        and states are not part of it (see :class:`~kvsync.optimizer.updater.Updater`).

        Raises:
            ValueError: if the class was never registered.

        Example:
            >>> from kvsync.optimizer import Adam
            >>> cfg = Adam(learning_rate=0.01).to_config()
            >>> cfg["name"], cfg["params"]["learning_rate"], cfg["params"]["beta1"]
            ('adam', 0.01, 0.9)
        """
        if not self.name:
            raise ValueError(f"{type(self).__name__} is not a registered optimizer")
        params = {
            "learning_rate": self.lr,
            "wd": self.wd,
            "rescale_grad": self.rescale_grad,
            "clip_gradient": self.clip_gradient,
            "multi_precision": self.multi_precision,
            "begin_num_update": self.begin_num_update,
            **self._params(),
        }
        return {
            "name": self.name,
            "params": params,
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.to_config(),
            "lr_mult": [[k, v] for k, v in self.lr_mult.items()],
            "wd_mult": [[k, v] for k, v in self.wd_mult.items()],
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()}, learning_rate={self.lr}, wd={self.wd})"
