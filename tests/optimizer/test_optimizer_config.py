"""Optimizers travel as JSON: registered names, to_config/from_config, create()."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from optimizer_reference import VARIANTS, variant_id

from kvsync import optimizer
from kvsync.errors import KeyTypeError, UnknownNameError

BUILTIN = ["adadelta", "adagrad", "adam", "adamw", "lamb", "nag", "rmsprop", "sgd", "signum"]


def _configured(name: str, extra: dict[str, Any]) -> optimizer.Optimizer:
    opt = optimizer.create(
        name,
        learning_rate=0.03,
        wd=0.001,
        rescale_grad=0.25,
        clip_gradient=2.0,
        multi_precision=True,
        begin_num_update=2,
        lr_scheduler=optimizer.CosineScheduler(max_update=50, base_lr=0.03, warmup_steps=3),
        **extra,
    )
    opt.set_lr_mult({0: 0.5, "fc_bias": 2.0})
    opt.set_wd_mult({"fc_bias": 0.0})
    return opt


def test_every_builtin_optimizer_is_registered_under_its_mxnet_name() -> None:
    assert set(BUILTIN) <= set(optimizer.names())
    for name in BUILTIN:
        opt = optimizer.create(name.upper())
        assert opt.name == name and type(opt).__name__.lower() == name


@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
def test_config_round_trips_through_json_and_trains_identically(
    variant: tuple[str, dict[str, Any]],
) -> None:
    name, extra = variant
    opt = _configured(name, extra)
    cfg = opt.to_config()
    text = json.dumps(cfg)
    clone = optimizer.from_config(json.loads(text))
    assert type(clone) is type(opt)
    assert json.dumps(clone.to_config()) == text
    assert clone.lr_mult == {0: 0.5, "fc_bias": 2.0} and clone.wd_mult == {"fc_bias": 0.0}
    assert isinstance(clone.lr_scheduler, optimizer.CosineScheduler)
    assert clone.lr_scheduler is not opt.lr_scheduler
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal(6).astype(np.float32) for _ in range(2)]
    grads = [rng.standard_normal(6).astype(np.float32) for _ in range(4)]
    results = []
    for o in (opt, clone):
        upd = optimizer.get_updater(o)
        ws = [w.copy() for w in weights]
        for g in grads:
            upd(0, g, ws[0])
            upd("fc_bias", g, ws[1])
        results.append(ws)
    for a, b in zip(*results, strict=True):
        assert a.tobytes() == b.tobytes()


def test_config_layout() -> None:
    cfg = _configured("sgd", {"momentum": 0.9}).to_config()
    assert set(cfg) == {"name", "params", "lr_scheduler", "lr_mult", "wd_mult"}
    assert cfg["name"] == "sgd"
    assert cfg["params"] == {
        "learning_rate": 0.03,
        "wd": 0.001,
        "rescale_grad": 0.25,
        "clip_gradient": 2.0,
        "multi_precision": True,
        "begin_num_update": 2,
        "momentum": 0.9,
        "lazy_update": True,
        "nesterov": False,
    }
    assert cfg["lr_scheduler"]["name"] == "cosine"
    assert cfg["lr_mult"] == [[0, 0.5], ["fc_bias", 2.0]]


def test_unknown_optimizer_name_lists_the_known_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        optimizer.create("adamax")
    message = str(info.value)
    assert "'adamax'" in message
    for name in BUILTIN:
        assert name in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match="known optimizers"):
        optimizer.from_config({"name": "ftrl", "params": {}})


@pytest.mark.parametrize(
    "cfg",
    [
        None,
        {"name": "sgd"},
        {"name": "sgd", "params": {"momentm": 0.9}},
        {"name": "sgd", "params": {}, "lr_mult": {"0": 1.0}},
        {"name": "sgd", "params": {}, "lr_mult": [[0, 1.0, 2.0]]},
        {"name": "sgd", "params": {}, "lr_scheduler": {"name": "factor"}},
        {"name": "sgd", "params": {}, "lr_scheduler": "factor"},
    ],
)
def test_malformed_config_is_a_value_error(cfg: Any) -> None:
    with pytest.raises(ValueError):
        optimizer.from_config(cfg)


def test_lr_mult_keys_must_be_int_or_str() -> None:
    opt = optimizer.SGD()
    with pytest.raises(KeyTypeError):
        opt.set_lr_mult({1.5: 2.0})  # type: ignore[dict-item]
    with pytest.raises(KeyTypeError):
        opt.set_wd_mult({True: 2.0})


def test_set_lr_mult_replaces_previous_multipliers() -> None:
    opt = optimizer.SGD(learning_rate=1.0)
    opt.set_lr_mult({0: 3.0})
    opt.set_lr_mult({1: 2.0})
    assert (opt._get_lr(0), opt._get_lr(1)) == (1.0, 2.0)


def test_register_requires_an_optimizer_subclass() -> None:
    with pytest.raises(TypeError):
        optimizer.register(dict)  # type: ignore[type-var]


def test_a_registered_custom_optimizer_travels_by_name() -> None:
    @optimizer.register
    class ScaledSGDForTest(optimizer.SGD):
        def __init__(self, scale: float = 1.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.scale = scale

        def _params(self) -> dict[str, Any]:
            return {**super()._params(), "scale": self.scale}

    cfg = json.loads(json.dumps(ScaledSGDForTest(scale=3.0, momentum=0.5).to_config()))
    clone = optimizer.from_config(cfg)
    assert isinstance(clone, ScaledSGDForTest)
    assert (clone.scale, clone.momentum) == (3.0, 0.5)
