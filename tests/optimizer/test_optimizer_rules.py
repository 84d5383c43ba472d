"""Every update rule matches an independent float64 reference over several steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from optimizer_reference import DEFAULT_LR, RULES, VARIANTS, variant_id

from kvsync import optimizer
from kvsync.errors import ShapeMismatchError

KEYS: list[int | str] = [0, "fc_bias"]
LR_MULT: dict[int | str, float] = {0: 2.0}
WD_MULT: dict[int | str, float] = {"fc_bias": 0.0, 0: 1.5}
STEPS = 6


def _shapes() -> dict[int | str, tuple[int, ...]]:
    return {0: (4, 5), "fc_bias": (7,)}


def _train(
    name: str, extra: dict[str, Any], common: dict[str, Any], lr_at: Any = None
) -> tuple[dict[int | str, np.ndarray], dict[int | str, np.ndarray]]:
    """Run our updater and the reference side by side; key "fc_bias" skips odd steps."""
    rng = np.random.default_rng(7)
    init = {k: rng.standard_normal(s) for k, s in _shapes().items()}
    opt = optimizer.create(name, **common, **extra)
    opt.set_lr_mult(LR_MULT)
    opt.set_wd_mult(WD_MULT)
    upd = optimizer.get_updater(opt)
    ours = {k: v.copy() for k, v in init.items()}
    ref = {k: v.copy() for k, v in init.items()}
    ref_state: dict[int | str, dict[str, np.ndarray]] = {k: {} for k in KEYS}
    counts = dict.fromkeys(KEYS, 0)
    hp = {
        "rescale_grad": common.get("rescale_grad", 1.0),
        "clip_gradient": common.get("clip_gradient"),
        **extra,
    }
    base_lr = common.get("learning_rate", DEFAULT_LR[name])
    for step in range(STEPS):
        for key in KEYS:
            if key == "fc_bias" and step % 2 == 1:
                continue
            grad = rng.standard_normal(_shapes()[key])
            upd(key, grad, ours[key])
            counts[key] += 1
            num_update = max(counts.values())
            lr = (lr_at(num_update) if lr_at else base_lr) * LR_MULT.get(key, 1.0)
            wd = common.get("wd", 0.0) * WD_MULT.get(key, 1.0)
            ref[key] = RULES[name](hp, ref[key], grad, ref_state[key], counts[key], lr, wd)
    assert opt.num_update == STEPS
    assert opt.update_counts == {0: STEPS, "fc_bias": STEPS // 2}
    return ours, ref


COMMONS = {
    "plain": {},
    "wd-rescale": {"learning_rate": 0.05, "wd": 0.01, "rescale_grad": 0.5},
    "clip": {"learning_rate": 0.05, "wd": 0.02, "rescale_grad": 0.8, "clip_gradient": 0.3},
}


@pytest.fixture(params=["whole-arrays", "small-blocks"])
def blocking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run once on whole arrays and once split into 5-element blocks (several per array)."""
    if request.param == "small-blocks":
        monkeypatch.setattr(optimizer.blocks, "BLOCK_BYTES", 40)


@pytest.mark.parametrize("common", list(COMMONS.values()), ids=list(COMMONS))
@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
def test_update_rule_matches_float64_reference(
    variant: tuple[str, dict[str, Any]], common: dict[str, Any], blocking: None
) -> None:
    name, extra = variant
    ours, ref = _train(name, extra, common)
    for key in KEYS:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-12, atol=1e-12)
        assert not np.allclose(ours[key], _initial(key)), "the weight must move"


def _initial(key: int | str) -> np.ndarray:
    rng = np.random.default_rng(7)
    init = {k: rng.standard_normal(s) for k, s in _shapes().items()}
    return init[key]


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "lamb"])
def test_scheduler_drives_the_rate_through_num_update(name: str) -> None:
    def lr_at(n: int) -> float:
        return 0.1 * 0.5 ** ((n - 1) // 2)

    extra: dict[str, Any] = {"momentum": 0.9} if name == "sgd" else {}
    common = {
        "lr_scheduler": optimizer.FactorScheduler(step=2, factor=0.5, base_lr=0.1),
        "wd": 0.01,
    }
    ours, ref = _train(name, extra, common, lr_at=lr_at)
    for key in KEYS:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-12, atol=1e-12)


def test_default_hyper_parameters_follow_mxnet() -> None:
    for name, lr in DEFAULT_LR.items():
        assert optimizer.create(name).learning_rate == lr, name
    adam = optimizer.Adam()
    assert (adam.beta1, adam.beta2, adam.epsilon) == (0.9, 0.999, 1e-8)
    assert optimizer.AdamW().epsilon == 1e-6
    assert optimizer.LAMB().epsilon == 1e-6
    assert optimizer.AdaGrad().float_stable_eps == 1e-7
    rms = optimizer.RMSProp()
    assert (rms.gamma1, rms.gamma2, rms.epsilon, rms.centered) == (0.9, 0.9, 1e-8, False)
    ada = optimizer.AdaDelta()
    assert (ada.rho, ada.epsilon) == (0.9, 1e-5)
    sig = optimizer.Signum()
    assert (sig.momentum, sig.wd_lh) == (0.9, 0.0)
    assert optimizer.SGD().momentum == 0.0
    assert optimizer.NAG().momentum == 0.0


def test_grad_is_not_modified_and_weight_is_updated_in_place() -> None:
    for name in RULES:
        upd = optimizer.get_updater(optimizer.create(name, wd=0.1, clip_gradient=0.5))
        w = np.ones((3, 3))
        grad = np.full((3, 3), 2.0)
        before = grad.copy()
        alias = w
        upd("k", grad, w)
        assert alias is w and not np.array_equal(w, np.ones((3, 3))), name
        np.testing.assert_array_equal(grad, before)


def test_float32_weights_stay_float32_and_track_float64() -> None:
    rng = np.random.default_rng(0)
    w64 = rng.standard_normal(1000)
    w32 = w64.astype(np.float32)
    u64 = optimizer.get_updater(optimizer.create("adam", learning_rate=0.01))
    u32 = optimizer.get_updater(optimizer.create("adam", learning_rate=0.01))
    for _ in range(5):
        g = rng.standard_normal(1000)
        u64(1, g, w64)
        u32(1, g.astype(np.float32), w32)
    assert w32.dtype == np.float32
    np.testing.assert_allclose(w32, w64, rtol=1e-5, atol=1e-6)


def test_lamb_with_zero_weight_uses_ratio_one() -> None:
    opt = optimizer.LAMB(learning_rate=0.1, epsilon=0.0)
    w = np.zeros(3)
    opt.update(0, w, np.array([1.0, -1.0, 2.0]), opt.create_state(0, w))
    np.testing.assert_allclose(w, [-0.1, 0.1, -0.1])


def test_gradient_of_another_shape_is_rejected_naming_the_index() -> None:
    upd = optimizer.get_updater(optimizer.create("sgd"))
    with pytest.raises(ShapeMismatchError, match="'w'"):
        upd("w", np.ones(3), np.ones(4))


def test_integer_weights_are_rejected() -> None:
    upd = optimizer.get_updater(optimizer.create("adam"))
    with pytest.raises(TypeError, match="floating-point"):
        upd(0, np.ones(3), np.ones(3, dtype=np.int64))


@pytest.mark.parametrize("off", [None, 0, -1.0])
def test_clip_gradient_none_or_non_positive_means_no_clipping(off: float | None) -> None:
    opt = optimizer.SGD(learning_rate=1.0, clip_gradient=off)
    assert opt.clip_gradient is None and opt.to_config()["params"]["clip_gradient"] is None
    w = np.zeros(2)
    opt.update(0, w, np.array([5.0, -7.0]), None)
    assert w.tolist() == [-5.0, 7.0]


def test_non_positive_lamb_bounds_and_clip_weights_are_off() -> None:
    lamb = optimizer.LAMB(lower_bound=0.0, upper_bound=-1.0)
    assert (lamb.lower_bound, lamb.upper_bound) == (None, None)
    assert optimizer.RMSProp(clip_weights=0).clip_weights is None


def test_set_learning_rate_refuses_when_a_scheduler_drives_it() -> None:
    opt = optimizer.SGD(lr_scheduler=optimizer.FactorScheduler(step=1))
    with pytest.raises(ValueError, match="lr_scheduler"):
        opt.set_learning_rate(0.1)
    plain = optimizer.SGD()
    plain.set_learning_rate(0.2)
    assert plain.learning_rate == 0.2


@pytest.mark.parametrize("name", sorted(RULES))
def test_non_contiguous_weights_are_updated_in_place(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(optimizer.blocks, "BLOCK_BYTES", 16)
    rng = np.random.default_rng(1)
    base = rng.standard_normal((6, 4))
    view = base.T  # not C-contiguous
    dense = view.copy()
    grads = [rng.standard_normal((4, 6)) for _ in range(3)]
    for w in (view, dense):
        upd = optimizer.get_updater(optimizer.create(name, wd=0.01))
        for g in grads:
            upd(0, g, w)
    np.testing.assert_allclose(base.T, dense, rtol=1e-12, atol=1e-12)
    assert not np.allclose(dense, rng.standard_normal((4, 6)))
