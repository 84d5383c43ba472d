"""The blocked / threaded sum and copy paths give exactly numpy's results."""

from __future__ import annotations

import numpy as np
import pytest

from kvsync import kv
from kvsync.kv import reduce


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make 'large' mean a few KiB so the blocked and threaded paths run on small arrays."""
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
