"""The blocked / threaded sum and copy paths give exactly numpy's results."""

from __future__ import annotations

import numpy as np
import pytest

from kvsync import kv
from kvsync.kv import reduce


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make 'large' mean a few KiB so the blocked and threaded paths run on small arrays."""
    from kvsync.kv import local

    monkeypatch.setattr(local, "FUSE_MIN_BYTES", 0)
    monkeypatch.setattr(reduce, "SUM_BLOCK_BYTES", 256)
    monkeypatch.setattr(reduce, "COPY_BLOCK_BYTES", 128)
    monkeypatch.setattr(reduce, "PARALLEL_MIN_BYTES", 1024)


@pytest.mark.parametrize("copies", [2, 3, 4, 7])
@pytest.mark.parametrize("size", [1, 63, 1000, 4099])
def test_sum_into_equals_numpy_sum(tiny_blocks: None, copies: int, size: int) -> None:
    rng = np.random.default_rng(size)
    values = [rng.integers(-100, 100, (size,)).astype(np.float32) for _ in range(copies)]
    out = np.empty(size, np.float32)
    assert reduce.sum_into(out, values) is out
    np.testing.assert_array_equal(out, np.sum(values, axis=0))


@pytest.mark.parametrize("position", [0, 1, 2])
def test_sum_into_an_output_that_is_also_an_input(tiny_blocks: None, position: int) -> None:
    values = [np.full((40, 30), i + 1, np.float64) for i in range(3)]
    out = values[position]
    reduce.sum_into(out, values)
    np.testing.assert_array_equal(out, 6)


def test_sum_into_non_contiguous_inputs_falls_back() -> None:
    base = np.ones((8, 8))
    out = np.empty((8, 4))
    reduce.sum_into(out, [base[:, ::2], base[:, 1::2]])
    np.testing.assert_array_equal(out, 2)


@pytest.mark.parametrize("n_out", [1, 2, 5])
def test_copy_to_all_fills_every_output(tiny_blocks: None, n_out: int) -> None:
    src = np.arange(5000, dtype=np.float32).reshape(50, 100)
    outs = [np.zeros_like(src) for _ in range(n_out)]
    reduce.copy_to_all(src, [*outs, src])
    for o in outs:
        np.testing.assert_array_equal(o, src)


def test_store_push_pull_through_the_threaded_paths(tiny_blocks: None) -> None:
    store = kv.create("device")
    store.init("w", np.zeros(10_000, np.float32))
    store.push("w", [np.full(10_000, i, np.float32) for i in range(4)])
    outs = [np.empty(10_000, np.float32) for _ in range(4)]
    store.pull("w", out=outs)
    for o in outs:
        np.testing.assert_array_equal(o, 6)


def test_pushpull_fused_path_fills_outputs_and_store(tiny_blocks: None) -> None:
    store = kv.create()
    keys = ["a", "b"]
    store.init(keys, [np.zeros(3000, np.float32)] * 2)
    vals = [[np.full(3000, i + 10 * j, np.float32) for i in range(3)] for j in range(2)]
    outs = [[np.empty(3000, np.float32) for _ in range(2)] for _ in keys]
    store.pushpull(keys, vals, out=outs)
    for j, k in enumerate(keys):
        want = 3 + 30 * j
        np.testing.assert_array_equal(store.pull(k), want)
        for o in outs[j]:
            np.testing.assert_array_equal(o, want)
    store.pushpull(keys, vals)  # out=None: every device value receives its key's sum
    np.testing.assert_array_equal(vals[1][2], 33)


def test_pushpull_pushes_every_key_before_pulling_when_outputs_are_other_keys_values(
    tiny_blocks: None,
) -> None:
    store = kv.create()
    store.init(["a", "b"], [np.zeros(3000)] * 2)
    x, y = np.full(3000, 1.0), np.full(3000, 2.0)
    store.pushpull(["a", "b"], [x, y], out=[y, x])  # a's result lands in b's value
    np.testing.assert_array_equal(y, 1.0)
    np.testing.assert_array_equal(x, 2.0)


def test_pushpull_with_an_output_partly_overlapping_a_value_matches_push_then_pull(
    tiny_blocks: None,
) -> None:
    store = kv.create()
    store.init("a", np.zeros(3000))
    buf = np.arange(3001, dtype=np.float64)
    value, out = buf[:-1], buf[1:]
    expected = value.copy()
    store.pushpull("a", value, out=out)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(store.pull("a"), expected)


def test_fusable_rules() -> None:
    a, b = np.zeros(8), np.zeros(8)
    assert reduce.fusable({"x": [a, b]}, {"x": [a, b]})
    assert reduce.fusable({"x": [a], "y": [a]}, {"z": [b]})
    assert reduce.fusable({"x": [a]}, {"x": [b], "y": [b]})
    assert not reduce.fusable({"x": [a], "y": [a]}, {"x": [a]})
    assert not reduce.fusable({"x": [a]}, {"x": [np.zeros((4, 4))[:, :2]]})
