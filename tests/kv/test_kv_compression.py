"""Gradient compression: MXNet's bit layout, exact residual feedback, convergence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kvsync import kv
from kvsync.errors import InvalidArgumentError, ShapeMismatchError, UnknownNameError
from kvsync.kv.compression import (
    GradientCompression,
    OneBitCompression,
    TwoBitCompression,
    create_compression,
)

_elements = st.floats(-4, 4, width=32, allow_nan=False, allow_infinity=False)
_grads = hnp.arrays(np.float32, st.integers(0, 70), elements=_elements)


def _model_2bit(r: np.ndarray, g: np.ndarray, t: float) -> tuple[bytes, np.ndarray]:
    """MXNet's quantize_2bit, element by element (the specification)."""
    r = r.copy()
    out = bytearray(4 * -(-r.size // 16))
    for i in range(r.size):
        r[i] += g[i]
        if r[i] >= np.float32(t):
            out[i >> 2] |= (0xC0, 0x30, 0x0C, 0x03)[i & 3]
            r[i] -= np.float32(t)
        elif r[i] <= np.float32(-t):
            out[i >> 2] |= (0x80, 0x20, 0x08, 0x02)[i & 3]
            r[i] -= np.float32(-t)
    return bytes(out), r


def _model_1bit(r: np.ndarray, g: np.ndarray, t: float) -> tuple[bytes, np.ndarray]:
    """MXNet's quantize_1bit, element by element (the specification)."""
    r = r.copy()
    out = bytearray(4 * -(-r.size // 32))
    for i in range(r.size):
        r[i] += g[i]
        if r[i] > np.float32(t):
            out[i >> 3] |= 0x80 >> (i & 7)
            r[i] -= np.float32(1)
        else:
            r[i] += np.float32(1)
    return bytes(out), r


@given(_grads, _grads, st.sampled_from([0.25, 0.5, 1.0]))
def test_2bit_packs_exactly_as_mxnet(g1: np.ndarray, g2: np.ndarray, t: float) -> None:
    g2 = np.resize(g2, g1.shape).astype(np.float32)
    gc = TwoBitCompression(t)
    r = np.zeros_like(g1)
    for g in (g1, g2):
        want, r = _model_2bit(r, g, t)
        packed = gc.compress("k", g)
        assert packed.dtype == np.dtype("<u4") and packed.size == gc.packed_words(g.size)
        assert packed.tobytes() == want
        np.testing.assert_array_equal(gc.residual("k"), r)


@given(_grads, st.sampled_from([0.0, 0.5]))
def test_1bit_packs_exactly_as_mxnet(g: np.ndarray, t: float) -> None:
    gc = OneBitCompression(t)
    want, r = _model_1bit(np.zeros_like(g), g, t)
    packed = gc.compress(0, g)
    assert packed.tobytes() == want
    np.testing.assert_array_equal(gc.residual(0), r)
    np.testing.assert_array_equal(gc.decompress(packed, g.shape), np.where(g > t, 1, -1))


@pytest.mark.parametrize("params", [{"type": "2bit", "threshold": 0.5}, {"type": "1bit"}])
@given(steps=st.lists(hnp.arrays(np.float32, 33, elements=_elements), min_size=1, max_size=4))
def test_residual_carries_exactly_what_was_not_sent(
    params: dict[str, object], steps: list[np.ndarray]
) -> None:
    gc = create_compression(params)
    assert gc is not None
    residual = np.zeros(33, np.float32)
    for g in steps:
        packed = gc.compress("w", g)
        sent = gc.decompress(packed, g.shape, g.dtype)
        np.testing.assert_array_equal(gc.residual("w"), (residual + g) - sent)
        residual = gc.residual("w").copy()


def test_sent_plus_residual_adds_up_to_every_gradient_pushed() -> None:
    rng = np.random.default_rng(0)
    gc = TwoBitCompression(0.1)
    total_sent = np.zeros(1000)
    grads = rng.normal(0, 0.05, (50, 1000))
    for g in grads:
        total_sent += gc.decompress(gc.compress(1, g), g.shape, g.dtype)
    np.testing.assert_allclose(total_sent + gc.residual(1), grads.sum(axis=0), atol=1e-12)


def test_decompress_into_out_and_shape_checks() -> None:
    gc = TwoBitCompression(1.0)
    packed = gc.compress(0, np.array([[2.0, -2.0], [0.0, 1.0]], np.float32))
    out = np.empty((2, 2), np.float32)
    assert gc.decompress(packed, (2, 2), np.float32, out=out) is out
    np.testing.assert_array_equal(out, [[1, -1], [0, 1]])
    with pytest.raises(ShapeMismatchError, match="packed words"):
        gc.decompress(packed, 17)
    with pytest.raises(ShapeMismatchError, match="C-contiguous"):
        gc.decompress(packed, (2, 2), np.float32, out=np.empty((2, 2), np.float64))
    with pytest.raises(ShapeMismatchError, match="residual"):
        gc.compress(0, np.zeros(3, np.float32))
    with pytest.raises(InvalidArgumentError, match="float"):
        gc.compress(5, np.zeros(3, np.int32))


def test_residuals_are_per_key_and_reset_forgets_them() -> None:
    gc = TwoBitCompression(1.0)
    gc.compress("a", np.array([0.5], np.float32))
    assert gc.residual("b") is None
    assert gc.residual("a") is not None
    gc.reset()
    assert gc.residual("a") is None


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"type": "2bit", "threshold": 0}, InvalidArgumentError, "greater than 0"),
        ({"type": "2bit", "threshold": "x"}, InvalidArgumentError, "number"),
        ({"threshold": 1}, InvalidArgumentError, "'type'"),
        ({"type": "2bit", "thresh": 1}, InvalidArgumentError, "thresh"),
        ({"type": "4bit"}, UnknownNameError, "1bit, 2bit, none"),
    ],
)
def test_bad_parameters_are_clear_errors(
    params: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        create_compression(params)


def test_params_round_trip_and_defaults() -> None:
    gc = create_compression({"type": "2bit"})
    assert isinstance(gc, GradientCompression)
    assert gc.to_params() == {"type": "2bit", "threshold": 0.5}
    again = create_compression(gc.to_params())
    assert again is not None and again.to_params() == gc.to_params()
    assert create_compression({"type": "none"}) is None
    assert repr(create_compression({"type": "1bit"})) == "OneBitCompression(threshold=0.5)"


@pytest.mark.parametrize(
    ("params", "lr", "tol"),
    [({"type": "2bit", "threshold": 0.05}, 0.2, 0.05), ({"type": "1bit"}, 0.01, 0.05)],
)
def test_compressed_sgd_still_converges(params: dict[str, object], lr: float, tol: float) -> None:
    """Least squares on two 'devices' through a compressed device store."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(64, 16)) / 8
    w_true = rng.normal(size=16)
    y = a @ w_true
    store = kv.create("device")
    store.set_gradient_compression(params)
    store.init("w", np.zeros(16))
    store.set_updater(lambda key, grad, weight: weight.__isub__(lr * grad))
    w = np.zeros(16)
    for _ in range(3000):
        halves = [(a[i::2], y[i::2]) for i in range(2)]
        grads = [x.T @ (x @ w - t) for x, t in halves]
        store.pushpull("w", grads, out=w)
    assert np.linalg.norm(w - w_true) < tol * np.linalg.norm(w_true) + tol


@pytest.mark.parametrize("cls", [TwoBitCompression, OneBitCompression])
def test_chunked_and_threaded_paths_match_the_model(
    monkeypatch: pytest.MonkeyPatch, cls: type[GradientCompression]
) -> None:
    from kvsync.kv import compression, reduce

    monkeypatch.setattr(compression, "CHUNK_VALUES", 64)
    monkeypatch.setattr(reduce, "PARALLEL_MIN_BYTES", 256)
    g = np.random.default_rng(3).normal(0, 1, 1001).astype(np.float32)
    model = _model_2bit if cls is TwoBitCompression else _model_1bit
    want, r = model(np.zeros_like(g), g, 0.5)
    gc = cls(0.5)
    packed = gc.compress("k", g)
    assert packed.tobytes() == want
    np.testing.assert_array_equal(gc.residual("k"), r)
    sent = gc.decompress(packed, g.shape, g.dtype)
    np.testing.assert_array_equal(r, g - sent)
