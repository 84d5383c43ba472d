"""The optimizer registry: names -> classes, :func:`create`, and building from a config
(:func:`from_config`, the inverse of ``Optimizer.to_config``).

Optimizers register where they are defined (``@register`` on the class); the name is the
lower-cased class name, as in MXNet (``SGD`` -> ``"sgd"``).

Example:
    >>> from kvsync.optimizer import create
    >>> type(create("rmsprop", centered=True)).__name__
    'RMSProp'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

from kvsync.errors import UnknownNameError
from kvsync.optimizer.base import Index, Optimizer, check_index
from kvsync.optimizer.lr_scheduler import LRScheduler

__all__ = ["create", "from_config", "lookup", "names", "register"]

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Optimizer]] = {}
_O = TypeVar("_O", bound="type[Optimizer]")


def from_config(cfg: Mapping[str, Any]) -> Optimizer:
    """Build an optimizer from ``Optimizer.to_config()`` output (e.g. after a JSON round trip).

    Raises:
        UnknownNameError: for an unregistered optimizer or scheduler name.
        ValueError: for a malformed config or bad parameters.

    Example:
        >>> from_config({"name": "nag", "params": {"momentum": 0.5}}).momentum
        0.5
        >>> import json
        >>> from kvsync.optimizer import SGD
        >>> from_config(json.loads(json.dumps(SGD(momentum=0.9).to_config()))).momentum
        0.9
    """
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("params"), Mapping):
        raise ValueError(f"optimizer config must be a dict with 'name' and 'params': {cfg!r}")
    cls = lookup(cfg.get("name"))
    params = dict(cfg["params"])
    sched = cfg.get("lr_scheduler")
    if sched is not None:
        params["lr_scheduler"] = LRScheduler.from_config(sched)
    try:
        opt = cls(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for optimizer {cls.name!r}: {exc}") from exc
    opt.set_lr_mult(_pairs(cfg.get("lr_mult", []), "lr_mult"))
    opt.set_wd_mult(_pairs(cfg.get("wd_mult", []), "wd_mult"))
    return opt


def _pairs(value: object, what: str) -> dict[Index, float]:
    if not isinstance(value, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in value
    ):
        raise ValueError(f"{what} must be a list of [index, multiplier] pairs, got {value!r}")
    return {check_index(k): float(v) for k, v in value}


def lookup(name: object) -> type[Optimizer]:
    """The class registered as ``name`` (case-insensitive).

    Raises:
        UnknownNameError: for an unknown name; the message lists the known names.

    Example:
        >>> lookup("SGD").__name__
        'SGD'
    """
    cls = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise UnknownNameError(
            f"unknown optimizer {name!r}; known optimizers: {', '.join(names())}"
        )
    return cls


def register(klass: _O) -> _O:
    """Class decorator: register an optimizer under its lower-cased class name.

    Registering a name again replaces the earlier class (and logs a warning).

    Raises:
        TypeError: if ``klass`` is not an :class:`Optimizer` subclass.

    Example:
        >>> import numpy as np
        >>> from kvsync.optimizer import SGD, create, register
        >>> @register
        ... class HalfSGD(SGD):
        ...     def _params(self):
        ...         return {}
        >>> type(create("halfsgd")).__name__
        'HalfSGD'
    """
    if not (isinstance(klass, type) and issubclass(klass, Optimizer)):
        raise TypeError(f"register needs an Optimizer subclass, got {klass!r}")
    name = klass.__name__.lower()
    if name in _REGISTRY and _REGISTRY[name] is not klass:
        logger.warning("optimizer %r: %s replaces %s", name, klass, _REGISTRY[name])
    klass.name = name
    _REGISTRY[name] = klass
    return klass


def create(name: str, **kwargs: Any) -> Optimizer:
    """Instantiate the optimizer registered as ``name`` (case-insensitive).

    Raises:
        UnknownNameError: for an unknown name; the message lists the known names.

    Example:
        >>> from kvsync.optimizer import create
        >>> create("Adam", learning_rate=0.1).learning_rate
        0.1
    """
    return lookup(name)(**kwargs)


def names() -> list[str]:
    """Sorted names of all registered optimizers.

    Example:
        >>> from kvsync.optimizer import names
        >>> {"sgd", "adam", "lamb"} <= set(names())
        True
    """
    return sorted(_REGISTRY)
