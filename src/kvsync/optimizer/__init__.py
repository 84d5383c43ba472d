"""Optimizers for the KVStore: MXNet 1.x update rules over numpy, in place.

Registered optimizers (``create(name, **kwargs)``): ``sgd``, ``nag``, ``signum``, ``adam``,
``adamw``, ``lamb``, ``adagrad``, ``rmsprop``, ``adadelta``. All share ``learning_rate``,
``wd``, ``rescale_grad``, ``clip_gradient``, ``lr_scheduler`` (factor, multifactor, poly,
cosine, with warmup), per-index ``lr_mult``/``wd_mult`` and ``multi_precision``.

An optimizer travels as JSON (``opt.to_config()`` / ``from_config(cfg)``), never
as pickle; :func:`get_updater` wraps one for a KVStore, whose states save and load as
npz + JSON (``Updater.get_states`` / ``Updater.set_states``) so that training resumes
bit-identically.

Example:
    >>> import json
    >>> import numpy as np
    >>> from kvsync import optimizer
    >>> opt = optimizer.create("adam", learning_rate=0.01,
    ...                        lr_scheduler=optimizer.FactorScheduler(step=100, factor=0.5))
    >>> twin = optimizer.from_config(json.loads(json.dumps(opt.to_config())))
    >>> upd = optimizer.get_updater(twin)
    >>> w = np.zeros(4, dtype=np.float32)
    >>> upd("fc_weight", np.ones(4, dtype=np.float32), w)
    >>> [round(float(x), 6) for x in w]
    [-0.01, -0.01, -0.01, -0.01]
    >>> optimizer.create("adamax")
    Traceback (most recent call last):
    ...
    kvsync.errors.UnknownNameError: unknown optimizer 'adamax'; known optimizers: adadelta, ...
"""

from __future__ import annotations

from kvsync.optimizer.adam import LAMB, Adam, AdamW
from kvsync.optimizer.adaptive import AdaDelta, AdaGrad, RMSProp
from kvsync.optimizer.base import Index, Optimizer, State
from kvsync.optimizer.lr_scheduler import (
    CosineScheduler,
    FactorScheduler,
    LRScheduler,
    MultiFactorScheduler,
    PolyScheduler,
    register_scheduler,
)
from kvsync.optimizer.registry import create, from_config, names, register
from kvsync.optimizer.sgd import NAG, SGD, Signum
from kvsync.optimizer.updater import Updater, get_updater

__all__ = [
    "LAMB",
    "NAG",
    "SGD",
    "AdaDelta",
    "AdaGrad",
    "Adam",
    "AdamW",
    "CosineScheduler",
    "FactorScheduler",
    "Index",
    "LRScheduler",
    "MultiFactorScheduler",
    "Optimizer",
    "PolyScheduler",
    "RMSProp",
    "Signum",
    "State",
    "Updater",
    "create",
    "from_config",
    "get_updater",
    "names",
    "register",
    "register_scheduler",
]
