"""Independent float64 references of the update rules, written from the documented formulas.

Plain, allocation-happy numpy on purpose: each function takes the weight, gradient, the
per-index state dict ``s`` (filled lazily), the update count ``t`` and the effective
``lr``/``wd`` (multipliers and schedule applied), and returns the new weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
Rule = Callable[[dict[str, Any], Array, Array, dict[str, Array], int, float, float], Array]


def _clip(x: Array, c: float | None) -> Array:
    return x if c is None else np.clip(x, -c, c)


def _zero(s: dict[str, Array], name: str, like: Array) -> Array:
    if name not in s:
        s[name] = np.zeros_like(like)
    return s[name]


def sgd(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    if hp.get("nesterov"):
        return nag(hp, w, g, s, t, lr, wd)
    g = _clip(hp["rescale_grad"] * g, hp["clip_gradient"])
    mom = hp.get("momentum", 0.0)
    if mom == 0.0:
        return w - lr * (g + wd * w)
    s["mom"] = mom * _zero(s, "mom", w) - lr * (g + wd * w)
    return w + s["mom"]


def nag(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    g = _clip(hp["rescale_grad"] * g, hp["clip_gradient"]) + wd * w
    mom = hp.get("momentum", 0.0)
    if mom == 0.0:
        return w - lr * g
    s["mom"] = mom * _zero(s, "mom", w) + g
    return w - lr * (g + mom * s["mom"])


def signum(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    mom = hp.get("momentum", 0.9)
    if mom == 0.0:
        return (1 - lr * wd) * w - lr * np.sign(g)
    g = _clip(hp["rescale_grad"] * g, hp["clip_gradient"]) + wd * w
    s["mom"] = mom * _zero(s, "mom", w) + (1 - mom) * g
    return (1 - lr * hp.get("wd_lh", 0.0)) * w - lr * np.sign(s["mom"])


def _moments(hp: dict[str, Any], g: Array, s: dict[str, Array], w: Array) -> None:
    b1, b2 = hp.get("beta1", 0.9), hp.get("beta2", 0.999)
    s["m"] = b1 * _zero(s, "m", w) + (1 - b1) * g
    s["v"] = b2 * _zero(s, "v", w) + (1 - b2) * g**2


def adam(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    g = _clip(hp["rescale_grad"] * g + wd * w, hp["clip_gradient"])
    _moments(hp, g, s, w)
    b1, b2 = hp.get("beta1", 0.9), hp.get("beta2", 0.999)
    lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    return w - lr_t * s["m"] / (np.sqrt(s["v"]) + hp.get("epsilon", 1e-8))


def adamw(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    g = _clip(hp["rescale_grad"] * g, hp["clip_gradient"])
    _moments(hp, g, s, w)
    b1, b2 = hp.get("beta1", 0.9), hp.get("beta2", 0.999)
    if hp.get("correct_bias", True):
        lr = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    return w - lr * (s["m"] / (np.sqrt(s["v"]) + hp.get("epsilon", 1e-6)) + wd * w)


def lamb(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    g = _clip(hp["rescale_grad"] * g, hp["clip_gradient"])
    _moments(hp, g, s, w)
    b1, b2 = hp.get("beta1", 0.9), hp.get("beta2", 0.999)
    m, v = s["m"], s["v"]
    if hp.get("bias_correction", True):
        m, v = m / (1 - b1**t), v / (1 - b2**t)
    u = m / (np.sqrt(v) + hp.get("epsilon", 1e-6)) + wd * w
    r1 = float(np.sqrt(np.sum(w * w)))
    if hp.get("lower_bound"):
        r1 = max(r1, hp["lower_bound"])
    if hp.get("upper_bound"):
        r1 = min(r1, hp["upper_bound"])
    r2 = float(np.sqrt(np.sum(u * u)))
    ratio = r1 / r2 if r1 > 0 and r2 > 0 else 1.0
    return w - lr * ratio * u


def adagrad(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    g = _clip(hp["rescale_grad"] * g, hp["clip_gradient"])
    s["h"] = _zero(s, "h", w) + g**2
    return w - lr * (g / np.sqrt(s["h"] + hp.get("eps", 1e-7)) + wd * w)


def rmsprop(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    g = _clip(hp["rescale_grad"] * g + wd * w, hp["clip_gradient"])
    g1, g2, eps = hp.get("gamma1", 0.9), hp.get("gamma2", 0.9), hp.get("epsilon", 1e-8)
    s["n"] = (1 - g1) * g**2 + g1 * _zero(s, "n", w)
    if hp.get("centered"):
        s["g"] = (1 - g1) * g + g1 * _zero(s, "g", w)
        s["d"] = g2 * _zero(s, "d", w) - lr * g / np.sqrt(s["n"] - s["g"] ** 2 + eps)
        w = w + s["d"]
    else:
        w = w - lr * g / np.sqrt(s["n"] + eps)
    cw = hp.get("clip_weights")
    return np.clip(w, -cw, cw) if cw else w


def adadelta(
    hp: dict[str, Any], w: Array, g: Array, s: dict[str, Array], t: int, lr: float, wd: float
) -> Array:
    g = _clip(hp["rescale_grad"] * g, hp["clip_gradient"])
    rho, eps = hp.get("rho", 0.9), hp.get("epsilon", 1e-5)
    s["ag"] = rho * _zero(s, "ag", w) + (1 - rho) * g * g
    delta = np.sqrt(_zero(s, "ad", w) + eps) / np.sqrt(s["ag"] + eps) * g
    s["ad"] = rho * s["ad"] + (1 - rho) * delta * delta
    return w - (delta + wd * w)


RULES: dict[str, Rule] = {
    "sgd": sgd,
    "nag": nag,
    "signum": signum,
    "adam": adam,
    "adamw": adamw,
    "lamb": lamb,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adadelta": adadelta,
}

#: MXNet 1.x default learning rates, per optimizer.
DEFAULT_LR = {
    "sgd": 0.01,
    "nag": 0.01,
    "signum": 0.01,
    "adam": 0.001,
    "adamw": 0.001,
    "lamb": 0.001,
    "adagrad": 0.01,
    "rmsprop": 0.001,
    "adadelta": 0.01,
}

#: (name, extra hyper-parameters) covering every rule and variant.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.8, "nesterov": True}),
    ("nag", {}),
    ("nag", {"momentum": 0.9}),
    ("signum", {}),
    ("signum", {"momentum": 0.0}),
    ("signum", {"momentum": 0.7, "wd_lh": 0.05}),
    ("adam", {}),
    ("adam", {"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}),
    ("adamw", {}),
    ("adamw", {"correct_bias": False}),
    ("lamb", {}),
    ("lamb", {"bias_correction": False, "lower_bound": 0.5, "upper_bound": 2.0}),
    ("adagrad", {}),
    ("adagrad", {"eps": 1e-3}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True, "gamma1": 0.95, "clip_weights": 1.2}),
    ("adadelta", {}),
    ("adadelta", {"rho": 0.8, "epsilon": 1e-4}),
]


def variant_id(v: tuple[str, dict[str, Any]]) -> str:
    name, extra = v
    return name + "".join(f"-{k}={val}" for k, val in sorted(extra.items()))
