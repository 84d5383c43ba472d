"""pull(out=...) over sockets: a pulled slice is received straight into ``out``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kvsync.client import Client
from kvsync.kv.comm import Comm, Op
from kvsync.kv.dist import DistKVStore
from kvsync.launcher.ps_server import make_logic
from kvsync.server import StoreServer


def test_pull_out_receives_each_slice_straight_into_the_output_array(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []
    deliver = Comm._deliver

    def spy(self: Comm, batch: list[Op], reply: Any) -> None:
        if batch[0].kind == "pull":  # the reply's array is the caller's memory itself
            seen.extend(v is op.out for op, v in zip(batch, reply.values, strict=True))
        deliver(self, batch, reply)

    monkeypatch.setattr(Comm, "_deliver", spy)
    value = np.arange(3 << 20, dtype=np.float32).reshape(-1, 1024)  # 12 MiB: 3 slices
    with StoreServer(logic=make_logic(0)).start() as server:
        kv = DistKVStore("dist_sync", rank=0, num_workers=1, shm=False,
                         links=[Client("127.0.0.1", server.port, timeout=10)])
        try:
            kv.init("w", value)
            out = np.zeros_like(value)
            assert kv.pull("w", out=out) is out
            assert np.array_equal(out, value)
            small = np.zeros(4)
            kv.init("b", np.ones(4))
            kv.pull("b", out=small)
            assert np.array_equal(small, np.ones(4))
        finally:
            kv.close()
    assert seen == [True, True, True, False]  # the 32-byte key is copied, as before


def test_a_pull_of_many_big_keys_in_one_call_lands_each_straight_in_its_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Socket pulls of at least LAND_BYTES travel one per message, so each reply is
    received into the caller's array (several arrays in one reply were copied)."""
    from kvsync.kv.comm import LAND_BYTES

    seen: list[bool] = []
    deliver = Comm._deliver

    def spy(self: Comm, batch: list[Op], reply: Any) -> None:
        if batch[0].kind == "pull" and hasattr(reply, "values"):
            seen.extend(v is op.out for op, v in zip(batch, reply.values, strict=True))
        deliver(self, batch, reply)

    monkeypatch.setattr(Comm, "_deliver", spy)
    n = LAND_BYTES // 4
    keys = list(range(6))
    vals = [np.full(n, k, np.float32) for k in keys]
    with StoreServer(logic=make_logic(0)).start() as server:
        kv = DistKVStore("dist_sync", rank=0, num_workers=1, shm=False,
                         links=[Client("127.0.0.1", server.port, timeout=10)])
        try:
            kv.init(keys, vals)
            outs = [np.zeros(n, np.float32) for _ in keys]
            kv.pull(keys, out=outs)
            for o, v in zip(outs, vals, strict=True):
                assert np.array_equal(o, v)
        finally:
            kv.close()
    assert seen == [True] * len(keys)
