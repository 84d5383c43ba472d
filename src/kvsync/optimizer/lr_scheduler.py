"""Learning-rate schedulers with MXNet 1.x semantics, as pure functions of ``num_update``.

An optimizer asks its scheduler for the learning rate of update number ``num_update``
(1 for the first update). Every scheduler supports a warmup phase: for
``num_update < warmup_steps`` the rate is ``warmup_begin_lr`` ("constant" mode) or rises
linearly from ``warmup_begin_lr`` to ``base_lr`` ("linear" mode).

Strategy: MXNet's factor schedulers mutate ``base_lr`` as updates go by; here the configured
``base_lr`` never changes and the decayed rate is a cached function of ``num_update`` (the
same repeated multiplications, so the same bits). A scheduler rebuilt from its config
therefore gives identical rates once the update counts are restored, which is what makes
checkpoint -> restore -> continue bit-identical. Schedulers travel as
``{"name": ..., "params": {...}}`` (:meth:`LRScheduler.to_config`).

Example:
    >>> sched = FactorScheduler(step=2, factor=0.5, base_lr=1.0)
    >>> [sched(n) for n in range(1, 8)]
    [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    >>> LRScheduler.from_config(sched.to_config())(7)
    0.125
"""

from __future__ import annotations

import itertools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from kvsync.errors import UnknownNameError

__all__ = [
    "CosineScheduler",
    "FactorScheduler",
    "LRScheduler",
    "MultiFactorScheduler",
    "PolyScheduler",
    "register_scheduler",
]

logger = logging.getLogger(__name__)

_SCHEDULERS: dict[str, type[LRScheduler]] = {}
_S = TypeVar("_S", bound="type[LRScheduler]")


def register_scheduler(name: str) -> Callable[[_S], _S]:
    """Class decorator registering a scheduler under ``name`` for :meth:`LRScheduler.from_config`.

    Raises:
        TypeError: if the decorated object is not an :class:`LRScheduler` subclass.

    Example:
        >>> @register_scheduler("poly_example")
        ... class MyPoly(PolyScheduler):
        ...     pass
        >>> LRScheduler.from_config(MyPoly(max_update=4, base_lr=1.0).to_config())(2)
        0.25
    """

    def wrap(cls: _S) -> _S:
        if not (isinstance(cls, type) and issubclass(cls, LRScheduler)):
            raise TypeError(f"register_scheduler({name!r}) needs an LRScheduler subclass")
        cls.name = name
        _SCHEDULERS[name] = cls
        return cls

    return wrap


class LRScheduler(ABC):
    """Base class: warmup handling, ``base_lr`` and config round trips.

    Args:
        base_lr: The learning rate after warmup (before any decay).
        warmup_steps: Number of warmup updates (0 disables warmup).
        warmup_begin_lr: Learning rate at update 0 of the warmup.
        warmup_mode: ``"linear"`` (ramp up to ``base_lr``) or ``"constant"``.

    Raises:
        ValueError: for a negative ``warmup_steps``, an unknown ``warmup_mode`` or
            ``warmup_begin_lr > base_lr``.

    Example:
        >>> s = PolyScheduler(max_update=10, base_lr=1.0, warmup_steps=4, warmup_begin_lr=0.2)
        >>> [round(s(n), 3) for n in (0, 2, 4)]
        [0.2, 0.6, 1.0]
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        base_lr: float = 0.01,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        warmup_mode: str = "linear",
    ) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int):
            raise ValueError(f"warmup_steps must be an int, got {warmup_steps!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if warmup_mode not in ("linear", "constant"):
            raise ValueError(f"warmup_mode must be 'linear' or 'constant', got {warmup_mode!r}")
        self.warmup_steps = warmup_steps
        self.warmup_begin_lr = float(warmup_begin_lr)
        self.warmup_mode = warmup_mode
        self._base_lr = 0.0
        self.base_lr = base_lr

    @property
    def base_lr(self) -> float:
        """The configured (undecayed) learning rate; also the warmup target.

        Raises:
            ValueError: when set below ``warmup_begin_lr``.
        """
        return self._base_lr

    @base_lr.setter
    def base_lr(self, value: float) -> None:
        value = float(value)
        if self.warmup_begin_lr > value:
            raise ValueError(f"base_lr {value} must be >= warmup_begin_lr {self.warmup_begin_lr}")
        self._base_lr = value
        self._reset()

    def _reset(self) -> None:  # noqa: B027 - a hook; stateless schedulers keep no cache
        """Forget cached decay progress (called when ``base_lr`` changes)."""

    def get_warmup_lr(self, num_update: int) -> float:
        """The warmup learning rate for ``num_update < warmup_steps``.

        Raises:
            ValueError: if ``num_update`` is not inside the warmup phase.
        """
        if not 0 <= num_update < self.warmup_steps:
            raise ValueError(f"update {num_update} is not in warmup [0, {self.warmup_steps})")
        if self.warmup_mode == "constant":
            return self.warmup_begin_lr
        span = self._base_lr - self.warmup_begin_lr
        return self.warmup_begin_lr + span * float(num_update) / float(self.warmup_steps)

    @abstractmethod
    def __call__(self, num_update: int) -> float:
        """The learning rate for update number ``num_update``."""

    def _warmup_params(self) -> dict[str, Any]:
        return {
            "base_lr": self._base_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_begin_lr": self.warmup_begin_lr,
            "warmup_mode": self.warmup_mode,
        }

    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this scheduler."""

    def to_config(self) -> dict[str, Any]:
        """A JSON-able description: ``{"name": registered name, "params": {...}}``.

        Raises:
            ValueError: if the class was never registered.

        Example:
            >>> CosineScheduler(max_update=100, base_lr=0.1).to_config()["name"]
            'cosine'
        """
        if not self.name:
            raise ValueError(f"{type(self).__name__} is not a registered scheduler")
        return {"name": self.name, "params": self._params()}

    @staticmethod
    def from_config(cfg: Mapping[str, Any]) -> LRScheduler:
        """Rebuild a scheduler from :meth:`to_config` output.

        Raises:
            UnknownNameError: for an unregistered name (the message lists the known names).
            ValueError: for a malformed config or bad parameters.

        Example:
            >>> s = LRScheduler.from_config({"name": "multifactor",
            ...                              "params": {"step": [2, 4], "factor": 0.1}})
            >>> round(s(5), 6)
            0.0001
        """
        if not isinstance(cfg, Mapping) or not isinstance(cfg.get("params", {}), Mapping):
            raise ValueError(f"scheduler config must be {{'name': str, 'params': dict}}: {cfg!r}")
        name = cfg.get("name")
        cls = _SCHEDULERS.get(name) if isinstance(name, str) else None
        if cls is None:
            known = ", ".join(sorted(_SCHEDULERS))
            raise UnknownNameError(f"unknown lr scheduler {name!r}; known schedulers: {known}")
        try:
            return cls(**dict(cfg.get("params", {})))
        except TypeError as exc:
            raise ValueError(f"bad parameters for lr scheduler {name!r}: {exc}") from exc


def _check_factor(factor: float) -> float:
    factor = float(factor)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"factor must be in [0, 1] so the rate decreases, got {factor}")
    return factor


@register_scheduler("factor")
class FactorScheduler(LRScheduler):
    """Multiply the rate by ``factor`` every ``step`` updates, never below ``stop_factor_lr``.

    The rate is ``base_lr * factor**k`` where ``k`` counts the multiples of ``step`` that
    ``num_update`` has strictly passed (MXNet: ``while num_update > count + step``).

    Raises:
        ValueError: for ``step < 1`` or a factor outside [0, 1].

    Example:
        >>> s = FactorScheduler(step=10, factor=0.1, stop_factor_lr=5e-3, base_lr=1.0)
        >>> [s(n) for n in (10, 11, 21, 31, 1000)]
        [1.0, 0.1, 0.010000000000000002, 0.005, 0.005]
    """

    def __init__(
        self,
        step: int,
        factor: float = 1.0,
        stop_factor_lr: float = 1e-8,
        base_lr: float = 0.01,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        warmup_mode: str = "linear",
    ) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be an int >= 1, got {step!r}")
        self.step = step
        self.factor = _check_factor(factor)
        self.stop_factor_lr = float(stop_factor_lr)
        self._count = 0
        self._lr = 0.0
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)

    def _reset(self) -> None:
        self._count = 0
        self._lr = self._base_lr

    def __call__(self, num_update: int) -> float:
        if num_update < self.warmup_steps:
            return self.get_warmup_lr(num_update)
        if num_update <= self._count:
            self._reset()
        # Bounded: once the rate sits at its floor (or factor is 1) it cannot change.
        while num_update > self._count + self.step:
            if self._lr == self.stop_factor_lr or self.factor == 1.0:
                self._count += self.step * ((num_update - self._count - 1) // self.step)
                break
            self._count += self.step
            self._lr *= self.factor
            if self._lr < self.stop_factor_lr:
                self._lr = self.stop_factor_lr
                logger.info("update %d: learning rate reached its floor %.5e", num_update, self._lr)
            else:
                logger.info("update %d: learning rate changed to %.5e", num_update, self._lr)
        return self._lr

    def _params(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "factor": self.factor,
            "stop_factor_lr": self.stop_factor_lr,
            **self._warmup_params(),
        }


@register_scheduler("multifactor")
class MultiFactorScheduler(LRScheduler):
    """Multiply the rate by ``factor`` once ``num_update`` passes each entry of ``step``.

    Raises:
        ValueError: for an empty or non-increasing ``step`` list, a step < 1, or a factor
            outside [0, 1].

    Example:
        >>> s = MultiFactorScheduler(step=[3, 5], factor=0.5, base_lr=1.0)
        >>> [s(n) for n in range(1, 8)]
        [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """

    def __init__(
        self,
        step: list[int],
        factor: float = 1.0,
        base_lr: float = 0.01,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        warmup_mode: str = "linear",
    ) -> None:
        steps = list(step) if isinstance(step, (list, tuple)) else []
        if not steps or any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
            raise ValueError(f"step must be a non-empty list of ints, got {step!r}")
        if steps[0] < 1:
            raise ValueError(f"every step must be >= 1, got {steps}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"step must be strictly increasing, got {steps}")
        self.step = steps
        self.factor = _check_factor(factor)
        self._index = 0
        self._lr = 0.0
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)

    def _reset(self) -> None:
        self._index = 0
        self._lr = self._base_lr

    def __call__(self, num_update: int) -> float:
        if num_update < self.warmup_steps:
            return self.get_warmup_lr(num_update)
        if self._index > 0 and num_update <= self.step[self._index - 1]:
            self._reset()
        while self._index < len(self.step) and num_update > self.step[self._index]:
            self._index += 1
            self._lr *= self.factor
            logger.info("update %d: learning rate changed to %.5e", num_update, self._lr)
        return self._lr

    def _params(self) -> dict[str, Any]:
        return {"step": list(self.step), "factor": self.factor, **self._warmup_params()}


class _AnnealScheduler(LRScheduler):
    """Shared part of the poly and cosine schedules: anneal to ``final_lr`` at ``max_update``."""

    def __init__(
        self,
        max_update: int,
        base_lr: float,
        final_lr: float,
        warmup_steps: int,
        warmup_begin_lr: float,
        warmup_mode: str,
    ) -> None:
        if isinstance(max_update, bool) or not isinstance(max_update, int) or max_update < 1:
            raise ValueError(f"max_update must be an int >= 1, got {max_update!r}")
        self.max_update = max_update
        self.final_lr = float(final_lr)
        super().__init__(base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        if self.warmup_steps >= max_update:
            raise ValueError(f"warmup_steps {self.warmup_steps} must be < max_update {max_update}")
        self.max_steps = max_update - self.warmup_steps

    def __call__(self, num_update: int) -> float:
        if num_update < self.warmup_steps:
            return self.get_warmup_lr(num_update)
        if num_update > self.max_update:
            return self.final_lr
        progress = float(num_update - self.warmup_steps) / float(self.max_steps)
        return self.final_lr + (self._base_lr - self.final_lr) * self._shape(progress)

    @abstractmethod
    def _shape(self, progress: float) -> float:
        """Fraction of (base_lr - final_lr) left at ``progress`` in [0, 1]."""


@register_scheduler("poly")
class PolyScheduler(_AnnealScheduler):
    """``final_lr + (base_lr - final_lr) * (1 - progress) ** pwr`` until ``max_update``.

    ``progress = (num_update - warmup_steps) / (max_update - warmup_steps)``; after
    ``max_update`` the rate stays at ``final_lr``.

    Raises:
        ValueError: for ``max_update < 1`` or ``warmup_steps >= max_update``.

    Example:
        >>> s = PolyScheduler(max_update=4, base_lr=1.0, pwr=2)
        >>> [s(n) for n in (0, 2, 4, 9)]
        [1.0, 0.25, 0.0, 0.0]
    """

    def __init__(
        self,
        max_update: int,
        base_lr: float = 0.01,
        pwr: float = 2,
        final_lr: float = 0.0,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        warmup_mode: str = "linear",
    ) -> None:
        self.power = pwr
        super().__init__(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr, warmup_mode)

    def _shape(self, progress: float) -> float:
        return float(pow(1.0 - progress, self.power))

    def _params(self) -> dict[str, Any]:
        return {
            "max_update": self.max_update,
            "pwr": self.power,
            "final_lr": self.final_lr,
            **self._warmup_params(),
        }


@register_scheduler("cosine")
class CosineScheduler(_AnnealScheduler):
    """``final_lr + (base_lr - final_lr) * (1 + cos(pi * progress)) / 2`` until ``max_update``.

    Raises:
        ValueError: for ``max_update < 1`` or ``warmup_steps >= max_update``.

    Example:
        >>> s = CosineScheduler(max_update=10, base_lr=1.0, final_lr=0.0)
        >>> [round(s(n), 4) for n in (0, 5, 10, 11)]
        [1.0, 0.5, 0.0, 0.0]
    """

    def __init__(
        self,
        max_update: int,
        base_lr: float = 0.01,
        final_lr: float = 0.0,
        warmup_steps: int = 0,
        warmup_begin_lr: float = 0.0,
        warmup_mode: str = "linear",
    ) -> None:
        super().__init__(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr, warmup_mode)

    def _shape(self, progress: float) -> float:
        return (1.0 + math.cos(math.pi * progress)) / 2.0

    def _params(self) -> dict[str, Any]:
        return {"max_update": self.max_update, "final_lr": self.final_lr, **self._warmup_params()}
