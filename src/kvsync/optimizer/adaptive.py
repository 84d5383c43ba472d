"""Per-coordinate adaptive optimizers: AdaGrad, RMSProp (plain and centered), AdaDelta.

MXNet 1.x rules; states have the weight's dtype (MXNet allocates float32).

Example:
    >>> import numpy as np
    >>> from kvsync.optimizer import AdaGrad
    >>> opt = AdaGrad(learning_rate=0.1, eps=0.0)
    >>> w = np.zeros(2); st = opt.create_state(0, w)
    >>> opt.update(0, w, np.array([4.0, -2.0]), st); w  # first step: -lr * sign(g)
    array([-0.1,  0.1])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kvsync.optimizer.base import Index, Optimizer, State, positive_or_none
from kvsync.optimizer.registry import register

__all__ = ["AdaDelta", "AdaGrad", "RMSProp"]

_Array = npt.NDArray[Any]


def _arrays(index: Index, state: State, count: int) -> tuple[_Array, ...]:
    if not (
        isinstance(state, tuple)
        and len(state) == count
        and all(isinstance(s, np.ndarray) for s in state)
    ):
        raise ValueError(f"index {index!r}: expected a state of {count} arrays")
    return tuple(s for s in state if isinstance(s, np.ndarray))


@register
class AdaGrad(Optimizer):
    """AdaGrad::

        g = clip(rescale_grad * grad, clip_gradient)
        history += g**2
        weight -= lr * (g / sqrt(history + eps) + wd * weight)

    Args:
        eps: Added inside the square root (default 1e-7).
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments (default
            ``learning_rate`` 0.01).

    Example:
        >>> AdaGrad().to_config()["params"]["eps"]
        1e-07
    """

    def __init__(self, eps: float = 1e-7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.float_stable_eps = float(eps)

    def create_state(self, index: Index, weight: _Array) -> State:
        """The squared-gradient history (zeros like ``weight``)."""
        return self._zeros(index, weight)

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One AdaGrad step on ``weight`` (in place)."""
        lr, wd, _ = self._begin_step(index)
        (history,) = _arrays(index, (state,), 1)
        for w, gr, hist in self._blocks(index, weight, grad, history):
            g = self._grad(w, gr)
            tmp = self._tmp("t", w)
            np.square(g, out=tmp)
            hist += tmp
            np.add(hist, self.float_stable_eps, out=tmp)
            np.sqrt(tmp, out=tmp)
            np.divide(g, tmp, out=g)
            if wd:
                np.multiply(w, wd, out=tmp)
                g += tmp
            g *= lr
            w -= g

    def _params(self) -> dict[str, Any]:
        return {"eps": self.float_stable_eps}


@register
class RMSProp(Optimizer):
    """RMSProp: Tieleman & Hinton (``centered=False``) or Graves (``centered=True``).

    With ``g = clip(rescale_grad * grad + wd * weight, clip_gradient)``. Plain::

        n = (1 - gamma1) * g**2 + gamma1 * n
        weight -= lr * g / sqrt(n + epsilon)

    Centered::

        n = (1 - gamma1) * g**2 + gamma1 * n
        m = (1 - gamma1) * g + gamma1 * m
        delta = gamma2 * delta - lr * g / sqrt(n - m**2 + epsilon)
        weight += delta

    Then, if ``clip_weights`` is set, the weight is clipped to ``[-clip_weights, clip_weights]``.

    Args:
        learning_rate: Default 0.001.
        gamma1: Decay of the moving averages (0.9).
        gamma2: Momentum of ``delta`` (centered only; 0.9).
        epsilon: Added inside the square root (1e-8).
        centered: Use Graves' centered variant.
        clip_weights: Clip the weight after each step (None or <= 0: no clipping).
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments.

    Example:
        >>> import numpy as np
        >>> opt = RMSProp(learning_rate=0.01, gamma1=0.0, epsilon=0.0)
        >>> w = np.zeros(1); opt.update(0, w, np.array([5.0]), opt.create_state(0, w)); w
        array([-0.01])
    """

    default_learning_rate = 0.001

    def __init__(
        self,
        learning_rate: float | None = None,
        gamma1: float = 0.9,
        gamma2: float = 0.9,
        epsilon: float = 1e-8,
        centered: bool = False,
        clip_weights: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.gamma1 = float(gamma1)
        self.gamma2 = float(gamma2)
        self.epsilon = float(epsilon)
        self.centered = bool(centered)
        self.clip_weights = positive_or_none(clip_weights)

    def create_state(self, index: Index, weight: _Array) -> State:
        """``(n,)`` or, centered, ``(n, m, delta)``; zeros like ``weight``."""
        if self.centered:
            return (
                self._zeros(index, weight),
                self._zeros(index, weight),
                self._zeros(index, weight),
            )
        return (self._zeros(index, weight),)

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One RMSProp step on ``weight`` (in place)."""
        lr, wd, _ = self._begin_step(index)
        arrays = _arrays(index, state, 3 if self.centered else 1)
        for w, gr, *st in self._blocks(index, weight, grad, *arrays):
            g = self._grad_wd_clipped(w, gr, wd)
            tmp = self._tmp("t", w)
            n = st[0]
            np.square(g, out=tmp)
            tmp *= 1.0 - self.gamma1
            n *= self.gamma1
            n += tmp
            if self.centered:
                n, m, delta = st
                self._centered_step(w, g, tmp, n, m, delta, lr)
            else:
                np.add(n, self.epsilon, out=tmp)
                np.sqrt(tmp, out=tmp)
                np.divide(g, tmp, out=g)
                g *= lr
                w -= g
            if self.clip_weights is not None:
                np.clip(w, -self.clip_weights, self.clip_weights, out=w)

    def _centered_step(
        self, w: _Array, g: _Array, tmp: _Array, n: _Array, m: _Array, delta: _Array, lr: float
    ) -> None:
        """Graves' step on one block, ``n`` already updated; ``g`` and ``tmp`` are scratch."""
        np.multiply(g, 1.0 - self.gamma1, out=tmp)
        m *= self.gamma1
        m += tmp
        np.square(m, out=tmp)
        np.subtract(n, tmp, out=tmp)
        tmp += self.epsilon
        np.sqrt(tmp, out=tmp)
        np.divide(g, tmp, out=g)
        g *= lr
        delta *= self.gamma2
        delta -= g
        w += delta

    def _params(self) -> dict[str, Any]:
        return {
            "gamma1": self.gamma1,
            "gamma2": self.gamma2,
            "epsilon": self.epsilon,
            "centered": self.centered,
            "clip_weights": self.clip_weights,
        }


@register
class AdaDelta(Optimizer):
    """AdaDelta (no learning rate, as in MXNet 1.x)::

        g = clip(rescale_grad * grad, clip_gradient)
        acc_g = rho * acc_g + (1 - rho) * g**2
        delta = sqrt(acc_delta + epsilon) / sqrt(acc_g + epsilon) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta**2
        weight -= delta + wd * weight

    Args:
        rho: Decay rate of both accumulators (0.9).
        epsilon: Added inside the square roots (1e-5).
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments (``learning_rate``
            and ``lr_mult`` are accepted and ignored by the rule).

    Example:
        >>> AdaDelta().to_config()["params"]["rho"]
        0.9
    """

    def __init__(self, rho: float = 0.90, epsilon: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rho = float(rho)
        self.epsilon = float(epsilon)

    def create_state(self, index: Index, weight: _Array) -> State:
        """``(acc_g, acc_delta)``; zeros like ``weight``."""
        return (self._zeros(index, weight), self._zeros(index, weight))

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One AdaDelta step on ``weight`` (in place)."""
        _, wd, _ = self._begin_step(index)
        for w, gr, acc_g, acc_delta in self._blocks(index, weight, grad, *_arrays(index, state, 2)):
            g = self._grad(w, gr)
            tmp = self._tmp("t", w)
            np.square(g, out=tmp)
            tmp *= 1.0 - self.rho
            acc_g *= self.rho
            acc_g += tmp
            np.add(acc_g, self.epsilon, out=tmp)
            np.sqrt(tmp, out=tmp)
            np.divide(g, tmp, out=g)
            np.add(acc_delta, self.epsilon, out=tmp)
            np.sqrt(tmp, out=tmp)
            tmp *= g  # tmp is now delta
            np.square(tmp, out=g)
            g *= 1.0 - self.rho
            acc_delta *= self.rho
            acc_delta += g
            if wd:
                np.multiply(w, wd, out=g)
                tmp += g
            w -= tmp

    def _params(self) -> dict[str, Any]:
        return {"rho": self.rho, "epsilon": self.epsilon}
