"""Momentum-style optimizers: SGD (optionally Nesterov), NAG and Signum (MXNet 1.x rules).

Notation: ``g = clip(rescale_grad * grad, clip_gradient)``; ``lr`` and ``wd`` include the
index's ``lr_mult``/``wd_mult`` and the scheduler.

Example:
    >>> import numpy as np
    >>> from kvsync.optimizer import SGD
    >>> opt = SGD(learning_rate=0.1, momentum=0.9)
    >>> w = np.zeros(2); st = opt.create_state(0, w)
    >>> for _ in range(2):
    ...     opt.update(0, w, np.ones(2), st)
    >>> w  # step 1: -0.1; step 2: -0.1 - 0.19
    array([-0.29, -0.29])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kvsync.optimizer.base import Index, Optimizer, State
from kvsync.optimizer.registry import register

__all__ = ["NAG", "SGD", "Signum"]

_Array = npt.NDArray[Any]


def _array_state(index: Index, state: State) -> _Array:
    if not isinstance(state, np.ndarray):
        raise ValueError(f"index {index!r}: expected an array state, got {type(state).__name__}")
    return state


def _plain_sgd(opt: Optimizer, weight: _Array, grad: _Array, lr: float, wd: float) -> None:
    """``weight = (1 - lr*wd) * weight - lr * g`` on one block."""
    step = opt._grad(weight, grad, scale=lr)
    if wd:
        weight *= 1.0 - lr * wd
    weight -= step


def _nag_block(
    opt: Optimizer,
    weight: _Array,
    grad: _Array,
    mom: _Array,
    momentum: float,
    lr: float,
    wd: float,
) -> None:
    """``g' = g + wd*w; mom = momentum*mom + g'; w -= lr * (g' + momentum*mom)``."""
    g = opt._grad(weight, grad)
    if wd:
        tmp = opt._tmp("t", weight)
        np.multiply(weight, wd, out=tmp)
        g += tmp
    mom *= momentum
    mom += g
    g *= lr
    weight -= g
    np.multiply(mom, lr * momentum, out=g)
    weight -= g


def _momentum_step(
    opt: Optimizer,
    index: Index,
    weight: _Array,
    grad: _Array,
    state: State,
    momentum: float,
    lr: float,
    wd: float,
    nesterov: bool,
) -> None:
    """SGD/NAG step over all blocks (plain SGD when there is no momentum state)."""
    if state is None:
        for w, g in opt._blocks(index, weight, grad):
            _plain_sgd(opt, w, g, lr, wd)
        return
    for w, g, mom in opt._blocks(index, weight, grad, _array_state(index, state)):
        if nesterov:
            _nag_block(opt, w, g, mom, momentum, lr, wd)
            continue
        step = opt._grad(w, g, scale=lr)
        mom *= momentum
        mom -= step
        if wd:
            np.multiply(w, lr * wd, out=step)
            mom -= step
        w += mom


@register
class SGD(Optimizer):
    """Stochastic gradient descent with momentum and weight decay.

    Without momentum: ``weight = weight - lr * (g + wd * weight)``. With momentum::

        mom = momentum * mom - lr * (g + wd * weight)
        weight = weight + mom

    ``nesterov=True`` applies :class:`NAG`'s rule instead. ``lazy_update`` is accepted for
    MXNet compatibility; it only matters for row-sparse gradients (dense here).

    Args:
        momentum: Momentum factor (0 keeps no state).
        lazy_update: Kept in the config; no effect on dense arrays.
        nesterov: Use Nesterov momentum.
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments (default
            ``learning_rate`` 0.01).

    Example:
        >>> import numpy as np
        >>> opt = SGD(learning_rate=0.1, wd=0.5)
        >>> w = np.ones(2); opt.update(0, w, np.ones(2), None); w
        array([0.85, 0.85])
    """

    def __init__(
        self, momentum: float = 0.0, lazy_update: bool = True, nesterov: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.lazy_update = bool(lazy_update)
        self.nesterov = bool(nesterov)

    def create_state(self, index: Index, weight: _Array) -> State:
        """Momentum buffer (zeros like ``weight``), or None without momentum."""
        return self._zeros(index, weight) if self.momentum != 0.0 else None

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One SGD step on ``weight`` (in place)."""
        lr, wd, _ = self._begin_step(index)
        _momentum_step(self, index, weight, grad, state, self.momentum, lr, wd, self.nesterov)

    def _params(self) -> dict[str, Any]:
        return {
            "momentum": self.momentum,
            "lazy_update": self.lazy_update,
            "nesterov": self.nesterov,
        }


@register
class NAG(Optimizer):
    """Nesterov accelerated gradient::

        mom = momentum * mom + g + wd * weight
        weight = weight - lr * (g + wd * weight + momentum * mom)

    Without momentum it is plain SGD.

    Args:
        momentum: Momentum factor (0 keeps no state).
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments (default
            ``learning_rate`` 0.01).

    Example:
        >>> import numpy as np
        >>> opt = NAG(learning_rate=0.1, momentum=0.5)
        >>> w = np.zeros(1); st = opt.create_state(0, w)
        >>> opt.update(0, w, np.ones(1), st); w  # mom = 1; w = -0.1 * (1 + 0.5)
        array([-0.15])
    """

    def __init__(self, momentum: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.momentum = float(momentum)

    def create_state(self, index: Index, weight: _Array) -> State:
        """Momentum buffer (zeros like ``weight``), or None without momentum."""
        return self._zeros(index, weight) if self.momentum != 0.0 else None

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One NAG step on ``weight`` (in place)."""
        lr, wd, _ = self._begin_step(index)
        _momentum_step(self, index, weight, grad, state, self.momentum, lr, wd, True)

    def _params(self) -> dict[str, Any]:
        return {"momentum": self.momentum}


@register
class Signum(Optimizer):
    """Signum (sign of momentum) and signSGD (``momentum=0``).

    With momentum::

        mom = momentum * mom + (1 - momentum) * (g + wd * weight)
        weight = (1 - lr * wd_lh) * weight - lr * sign(mom)

    Without momentum (signSGD; rescaling and clipping cannot change a sign)::

        weight = (1 - lr * wd) * weight - lr * sign(grad)

    Args:
        momentum: Momentum factor (default 0.9).
        wd_lh: Decoupled weight decay (momentum variant only).
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments (default
            ``learning_rate`` 0.01).

    Example:
        >>> import numpy as np
        >>> opt = Signum(learning_rate=0.1)
        >>> w = np.zeros(3); st = opt.create_state(0, w)
        >>> opt.update(0, w, np.array([2.0, -3.0, 0.0]), st); w
        array([-0.1,  0.1,  0. ])
    """

    def __init__(self, momentum: float = 0.9, wd_lh: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.wd_lh = float(wd_lh)

    def create_state(self, index: Index, weight: _Array) -> State:
        """Momentum buffer (zeros like ``weight``), or None for signSGD."""
        return self._zeros(index, weight) if self.momentum != 0.0 else None

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One Signum/signSGD step on ``weight`` (in place)."""
        lr, wd, _ = self._begin_step(index)
        if state is None:
            for w, g in self._blocks(index, weight, grad):
                step = self._grad(w, g)
                np.sign(step, out=step)
                self._sign_step(w, step, lr, wd)
            return
        for w, g, mom in self._blocks(index, weight, grad, _array_state(index, state)):
            step = self._grad(w, g)
            if wd:
                tmp = self._tmp("t", w)
                np.multiply(w, wd, out=tmp)
                step += tmp
            mom *= self.momentum
            step *= 1.0 - self.momentum
            mom += step
            np.sign(mom, out=step)
            self._sign_step(w, step, lr, self.wd_lh)

    @staticmethod
    def _sign_step(weight: _Array, sign: _Array, lr: float, decay: float) -> None:
        """``weight = (1 - lr*decay) * weight - lr * sign``; ``sign`` is clobbered."""
        if decay:
            weight *= 1.0 - lr * decay
        sign *= lr
        weight -= sign

    def _params(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "wd_lh": self.wd_lh}
