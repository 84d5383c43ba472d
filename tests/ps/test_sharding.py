"""Specification of the key -> server plan (kvsync.kv.sharding)."""

from __future__ import annotations

import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync.kv.sharding import home_server, plan_key


@settings(max_examples=200)
@given(
    key=st.one_of(st.integers(-10**6, 10**6), st.text(max_size=8)),
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple),
    servers=st.integers(1, 6),
    bound=st.integers(1, 200),
)
def test_slices_cover_every_row_once_in_order_one_per_server(
    key: int | str, shape: tuple[int, ...], servers: int, bound: int
) -> None:
    p = plan_key(key, shape, "float32", num_servers=servers, bound=bound)
    rows = shape[0] if shape else 1
    assert p.slices[0].lo == 0 and p.slices[-1].hi == rows
    assert all(a.hi == b.lo for a, b in zip(p.slices, p.slices[1:], strict=False))
    assert len({s.server for s in p.slices}) == len(p.slices)
    assert all(0 <= s.server < servers for s in p.slices)
    size = int(np.prod(shape, dtype=np.int64))
    if size <= bound:
        assert not p.split and p.slices[0].server == home_server(p.wire, servers)
    elif shape and rows >= 2 and servers > 1:
        assert len(p.slices) == min(servers, rows)
        sizes = [s.hi - s.lo for s in p.slices]
        assert max(sizes) - min(sizes) <= 1  # balanced to one row


def test_parts_are_views_that_reassemble_the_array() -> None:
    a = np.arange(30.0).reshape(10, 3)
    p = plan_key("big", a.shape, a.dtype, num_servers=4, bound=5)
    parts = list(p.parts(a))
    assert all(np.shares_memory(b, a) for _, b in parts)
    np.testing.assert_array_equal(np.concatenate([b for _, b in parts]), a)


def test_the_plan_is_the_same_in_every_process() -> None:
    # a stable hash (crc32 of the wire key), never the per-process randomised hash()
    assert [home_server(w, 7) for w in ("i0", "sweight")] == [
        zlib.crc32(b"i0") % 7, zlib.crc32(b"sweight") % 7]


def test_small_keys_spread_over_the_servers() -> None:
    homes = [home_server(f"i{k}", 2) for k in range(1000)]
    assert 400 < sum(homes) < 600
