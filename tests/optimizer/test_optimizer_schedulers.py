"""Learning-rate schedulers against hand-computed values (MXNet 1.x semantics)."""

from __future__ import annotations

import json
import math

import pytest

from kvsync.errors import UnknownNameError
from kvsync.optimizer import (
    SGD,
    CosineScheduler,
    FactorScheduler,
    LRScheduler,
    MultiFactorScheduler,
    PolyScheduler,
)


def test_factor_scheduler_decays_after_each_full_step() -> None:
    s = FactorScheduler(step=3, factor=0.5, base_lr=1.0)
    assert [s(n) for n in range(1, 11)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]


def test_factor_scheduler_stops_at_stop_factor_lr() -> None:
    s = FactorScheduler(step=1, factor=0.1, stop_factor_lr=0.02, base_lr=1.0)
    assert [s(n) for n in (1, 2, 3, 4, 10_000_000)] == [1.0, 0.1, 0.02, 0.02, 0.02]


def test_factor_scheduler_with_linear_warmup() -> None:
    s = FactorScheduler(step=5, factor=0.1, base_lr=1.0, warmup_steps=4, warmup_begin_lr=0.2)
    got = [s(n) for n in range(8)]
    want = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1]
    assert got == pytest.approx(want, rel=1e-15)


def test_constant_warmup_holds_warmup_begin_lr() -> None:
    s = MultiFactorScheduler(
        step=[5],
        factor=0.5,
        base_lr=1.0,
        warmup_steps=3,
        warmup_begin_lr=0.1,
        warmup_mode="constant",
    )
    assert [s(n) for n in range(7)] == [0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 0.5]


def test_multifactor_scheduler_decays_past_each_step() -> None:
    s = MultiFactorScheduler(step=[2, 5], factor=0.1, base_lr=1.0)
    got = [s(n) for n in range(1, 8)]
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rel=1e-15)


def test_poly_scheduler_with_warmup() -> None:
    s = PolyScheduler(max_update=10, base_lr=1.0, pwr=2, final_lr=0.1, warmup_steps=2)
    # after warmup: final + (base - final) * (1 - (n - 2) / 8) ** 2
    want = {0: 0.0, 1: 0.5, 2: 1.0, 6: 0.1 + 0.9 * 0.25, 8: 0.1 + 0.9 * 0.0625, 10: 0.1, 50: 0.1}
    for n, lr in want.items():
        assert s(n) == pytest.approx(lr, rel=1e-15), n


def test_cosine_scheduler() -> None:
    s = CosineScheduler(max_update=10, base_lr=2.0, final_lr=0.5)
    for n in (0, 2, 5, 9, 10, 11):
        progress = min(n, 10) / 10
        want = 0.5 + 1.5 * (1 + math.cos(math.pi * progress)) / 2
        assert s(n) == pytest.approx(want, rel=1e-15), n
    assert s(5) == pytest.approx(1.25)


def test_rates_are_a_function_of_num_update_even_when_queried_backwards() -> None:
    s = FactorScheduler(step=2, factor=0.5, base_lr=1.0)
    forward = [s(n) for n in range(1, 12)]
    fresh = FactorScheduler(step=2, factor=0.5, base_lr=1.0)
    assert [fresh(n) for n in reversed(range(1, 12))] == list(reversed(forward))
    m = MultiFactorScheduler(step=[2, 4], factor=0.5, base_lr=1.0)
    assert (m(9), m(1), m(3)) == (0.25, 1.0, 0.5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FactorScheduler(step=0),
        lambda: FactorScheduler(step=2, factor=1.5),
        lambda: MultiFactorScheduler(step=[3, 3]),
        lambda: MultiFactorScheduler(step=[]),
        lambda: MultiFactorScheduler(step=[0, 2]),
        lambda: PolyScheduler(max_update=0),
        lambda: CosineScheduler(max_update=5, warmup_steps=5),
        lambda: FactorScheduler(step=1, warmup_mode="cubic"),
        lambda: FactorScheduler(step=1, warmup_steps=-1),
        lambda: FactorScheduler(step=1, base_lr=0.1, warmup_begin_lr=0.5),
    ],
)
def test_bad_scheduler_parameters_raise_value_error(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "sched",
    [
        FactorScheduler(step=3, factor=0.5, stop_factor_lr=1e-4, base_lr=0.3, warmup_steps=2),
        MultiFactorScheduler(step=[2, 7], factor=0.2, base_lr=0.5),
        PolyScheduler(
            max_update=20,
            base_lr=0.4,
            pwr=3,
            final_lr=0.01,
            warmup_steps=3,
            warmup_begin_lr=0.1,
            warmup_mode="constant",
        ),
        CosineScheduler(max_update=30, base_lr=0.7, final_lr=0.05, warmup_steps=5),
    ],
    ids=["factor", "multifactor", "poly", "cosine"],
)
def test_scheduler_config_round_trips_through_json(sched: LRScheduler) -> None:
    rates = [sched(n) for n in range(40)]
    cfg = json.loads(json.dumps(sched.to_config()))
    clone = LRScheduler.from_config(cfg)
    assert type(clone) is type(sched)
    assert clone.to_config() == sched.to_config()
    assert [clone(n) for n in range(40)] == rates


def test_unknown_scheduler_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match=r"cosine, factor, multifactor,.*poly"):
        LRScheduler.from_config({"name": "exp", "params": {}})


def test_scheduler_config_with_unknown_parameter_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="factor"):
        LRScheduler.from_config({"name": "factor", "params": {"step": 1, "gamma": 2}})


def test_optimizer_learning_rate_overrides_scheduler_base_lr() -> None:
    sched = FactorScheduler(step=1, factor=0.5, base_lr=1.0, warmup_steps=2)
    opt = SGD(learning_rate=0.2, lr_scheduler=sched)
    assert sched.base_lr == 0.2
    assert sched(1) == pytest.approx(0.1)  # warmup now ramps to the overriding rate
    assert SGD(lr_scheduler=FactorScheduler(step=1, base_lr=0.3)).lr == 0.3
    opt.num_update = 3
    assert opt.learning_rate == pytest.approx(0.2 * 0.25)
