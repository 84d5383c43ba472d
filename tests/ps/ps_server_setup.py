"""A ``--server-setup`` module for the tests: registers a custom optimizer and updater in
the server process, as a training script's module would."""

from __future__ import annotations

from typing import Any

import numpy as np

from kvsync.launcher.ps_server import register_updater
from kvsync.optimizer import SGD, register


@register
class TripleSGD(SGD):
    """SGD with three times the learning rate (exists only where this module is imported)."""

    def update(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        super().update(index, weight, grad * 3, state)


@register_updater("negate")
def make_negate(params: dict[str, Any]) -> Any:
    def update(key: Any, grad: np.ndarray, weight: np.ndarray) -> None:
        np.negative(grad, out=weight)

    return update
