"""Adam-family optimizers: Adam, AdamW and LAMB (MXNet rules).

All three keep ``(mean, var)`` per index and update them with
``mean = beta1*mean + (1-beta1)*g`` and ``var = beta2*var + (1-beta2)*g**2``; ``t`` is the
index's update count (bias correction). They differ in where weight decay and clipping go.

Example:
    >>> import numpy as np
    >>> from kvsync.optimizer import Adam
    >>> opt = Adam(learning_rate=0.1)
    >>> w = np.zeros(2); st = opt.create_state(0, w)
    >>> opt.update(0, w, np.array([3.0, -0.5]), st)
    >>> np.round(w, 6)  # the first step moves each coordinate by about lr
    array([-0.1,  0.1])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from kvsync.optimizer.base import Index, Optimizer, State, positive_or_none
from kvsync.optimizer.registry import register

__all__ = ["LAMB", "Adam", "AdamW"]

_Array = npt.NDArray[Any]


def _pair(index: Index, state: State) -> tuple[_Array, _Array]:
    if not (
        isinstance(state, tuple)
        and len(state) == 2
        and all(isinstance(s, np.ndarray) for s in state)
    ):
        raise ValueError(f"index {index!r}: expected a (mean, var) state")
    mean, var = state
    assert isinstance(mean, np.ndarray) and isinstance(var, np.ndarray)
    return mean, var


class _AdamBase(Optimizer):
    """Shared constructor, state and moment update of the Adam family."""

    default_learning_rate = 0.001

    def __init__(
        self,
        learning_rate: float | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.epsilon = float(epsilon)

    def create_state(self, index: Index, weight: _Array) -> State:
        """``(mean, var)``, zeros like ``weight``."""
        return (self._zeros(index, weight), self._zeros(index, weight))

    def _moments(self, weight: _Array, g: _Array, mean: _Array, var: _Array) -> None:
        """Update mean and var from ``g``; ``g`` is clobbered."""
        tmp = self._tmp("t", weight)
        np.multiply(g, 1.0 - self.beta1, out=tmp)
        mean *= self.beta1
        mean += tmp
        np.square(g, out=g)
        g *= 1.0 - self.beta2
        var *= self.beta2
        var += g

    def _params(self) -> dict[str, Any]:
        return {"beta1": self.beta1, "beta2": self.beta2, "epsilon": self.epsilon}


@register
class Adam(_AdamBase):
    """Adam; bias correction folded into the learning rate (MXNet)::

        g = clip(rescale_grad * grad + wd * weight, clip_gradient)
        mean, var updated from g
        lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)
        weight -= lr_t * mean / (sqrt(var) + epsilon)

    Args:
        learning_rate: Default 0.001.
        beta1: Decay of the first moment (0.9).
        beta2: Decay of the second moment (0.999).
        epsilon: Added to the denominator (1e-8).
        lazy_update: Kept in the config; no effect on dense arrays.
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments.

    Example:
        >>> Adam().to_config()["params"]["epsilon"]
        1e-08
    """

    def __init__(
        self,
        learning_rate: float | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        lazy_update: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, beta1, beta2, epsilon, **kwargs)
        self.lazy_update = bool(lazy_update)

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One Adam step on ``weight`` (in place)."""
        lr, wd, t = self._begin_step(index)
        lr_t = lr * math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        for w, gr, mean, var in self._blocks(index, weight, grad, *_pair(index, state)):
            g = self._grad_wd_clipped(w, gr, wd)
            self._moments(w, g, mean, var)
            np.sqrt(var, out=g)
            g += self.epsilon
            np.divide(mean, g, out=g)
            g *= lr_t
            w -= g

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "lazy_update": self.lazy_update}


@register
class AdamW(_AdamBase):
    """Adam with decoupled weight decay (MXNet's fused ``adamw_update``)::

        g = clip(rescale_grad * grad, clip_gradient)
        mean, var updated from g
        lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)     (lr_t = lr if not correct_bias)
        weight -= lr_t * (mean / (sqrt(var) + epsilon) + wd * weight)

    Args:
        learning_rate: Default 0.001.
        beta1: 0.9. beta2: 0.999. epsilon: 1e-6.
        correct_bias: Apply the bias correction (default True).
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments.

    Example:
        >>> AdamW().to_config()["params"]["epsilon"]
        1e-06
    """

    def __init__(
        self,
        learning_rate: float | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-6,
        correct_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, beta1, beta2, epsilon, **kwargs)
        self.correct_bias = bool(correct_bias)

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One AdamW step on ``weight`` (in place)."""
        lr, wd, t = self._begin_step(index)
        if self.correct_bias:
            lr *= math.sqrt(1.0 - self.beta2**t) / (1.0 - self.beta1**t)
        for w, gr, mean, var in self._blocks(index, weight, grad, *_pair(index, state)):
            g = self._grad(w, gr)
            self._moments(w, g, mean, var)
            step = self._tmp("t", w)
            np.sqrt(var, out=step)
            step += self.epsilon
            np.divide(mean, step, out=step)
            if wd:
                np.multiply(w, wd, out=g)
                step += g
            step *= lr
            w -= step

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "correct_bias": self.correct_bias}


@register
class LAMB(_AdamBase):
    """LAMB: Adam direction scaled layer-wise by a trust ratio::

        g = clip(rescale_grad * grad, clip_gradient)
        mean, var updated from g
        m_hat = mean / (1 - beta1**t); v_hat = var / (1 - beta2**t)   (if bias_correction)
        u = m_hat / (sqrt(v_hat) + epsilon) + wd * weight
        r1 = ||weight|| clamped to [lower_bound, upper_bound]; r2 = ||u||
        weight -= lr * (r1 / r2 if r1 > 0 and r2 > 0 else 1) * u

    Args:
        learning_rate: Default 0.001.
        beta1: 0.9. beta2: 0.999. epsilon: 1e-6.
        lower_bound: Lower clamp of ``r1`` (None or <= 0: none).
        upper_bound: Upper clamp of ``r1`` (None or <= 0: none).
        bias_correction: Default True.
        **kwargs: :class:`~kvsync.optimizer.base.Optimizer` arguments.

    Example:
        >>> import numpy as np
        >>> opt = LAMB(learning_rate=0.1)
        >>> w = np.array([3.0, 4.0]); st = opt.create_state(0, w)
        >>> opt.update(0, w, np.array([1.0, 1.0]), st)
        >>> np.round(w, 4)  # u ~ (1, 1), ratio = 5 / sqrt(2)
        array([2.6464, 3.6464])
    """

    def __init__(
        self,
        learning_rate: float | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-6,
        lower_bound: float | None = None,
        upper_bound: float | None = None,
        bias_correction: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate, beta1, beta2, epsilon, **kwargs)
        self.lower_bound = positive_or_none(lower_bound)
        self.upper_bound = positive_or_none(upper_bound)
        self.bias_correction = bool(bias_correction)

    def update(self, index: Index, weight: _Array, grad: _Array, state: State) -> None:
        """One LAMB step on ``weight`` (in place).

        Two passes over the blocks: the first updates the moments and sums the squared
        norms of ``weight`` and ``u``; the second recomputes ``u`` (same operations, same
        bits) and applies the trust-ratio step, so no full-size temporary is needed.
        """
        lr, wd, t = self._begin_step(index)
        blocks = list(self._blocks(index, weight, grad, *_pair(index, state)))
        w_sq = u_sq = 0.0
        for w, gr, mean, var in blocks:
            g = self._grad(w, gr)
            self._moments(w, g, mean, var)
            u = self._direction(w, mean, var, wd, t)
            w_sq += float(np.vdot(w, w))
            u_sq += float(np.vdot(u, u))
        r1 = math.sqrt(w_sq)
        if self.lower_bound is not None:
            r1 = max(r1, self.lower_bound)
        if self.upper_bound is not None:
            r1 = min(r1, self.upper_bound)
        r2 = math.sqrt(u_sq)
        scale = lr * (r1 / r2 if r1 != 0.0 and r2 != 0.0 else 1.0)
        for w, _, mean, var in blocks:
            u = self._direction(w, mean, var, wd, t)
            u *= scale
            w -= u

    def _direction(self, w: _Array, mean: _Array, var: _Array, wd: float, t: int) -> _Array:
        """Scratch block ``m_hat / (sqrt(v_hat) + epsilon) + wd * w``."""
        u = self._tmp("t", w)
        if self.bias_correction:
            np.divide(var, 1.0 - self.beta2**t, out=u)
            np.sqrt(u, out=u)
        else:
            np.sqrt(var, out=u)
        u += self.epsilon
        np.divide(mean, u, out=u)
        if self.bias_correction:
            u /= 1.0 - self.beta1**t
        if wd:
            tmp = self._tmp("g", w)
            np.multiply(w, wd, out=tmp)
            u += tmp
        return u

    def _params(self) -> dict[str, Any]:
        return {
            **super()._params(),
            "lower_bound": self.lower_bound,
            "upper_bound": self.upper_bound,
            "bias_correction": self.bias_correction,
        }
