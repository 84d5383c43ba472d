"""What is specific to the ``local`` / ``device`` types and the registry."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvsync import kv
from kvsync.errors import InvalidArgumentError, KVStoreError, UnknownNameError
from kvsync.kv.base import KVStoreBase
from kvsync.kv.local import LocalKVStore
from kvsync.sparse import RowSparseArray


def test_create_builds_local_and_device_case_insensitively() -> None:
    assert kv.create().type == "local"
    assert kv.create("Device").type == "device"
    assert isinstance(kv.create("local"), LocalKVStore)


def test_create_with_an_unknown_name_lists_the_known_names() -> None:
    with pytest.raises(UnknownNameError, match=r"'nope'; known: .*device.*local"):
        kv.create("nope")


def test_create_with_a_name_that_is_not_a_str_raises_type_error() -> None:
    with pytest.raises(TypeError, match="must be a str, got int"):
        kv.create(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["horovod", "BytePS"])
def test_create_names_the_alternatives_for_stores_kvsync_does_not_provide(name: str) -> None:
    with pytest.raises(UnknownNameError, match=r"not provided by kvsync: .*'dist_sync'"):
        kv.create(name)


def test_nccl_has_device_semantics_and_refuses_compression_as_mxnet_does() -> None:
    store = kv.create("nccl")
    assert store.type == "nccl" and isinstance(store, LocalKVStore)
    store.init(0, np.zeros(2))
    store.push(0, [np.ones(2), np.ones(2)])
    np.testing.assert_array_equal(store.pull(0), [2.0, 2.0])
    assert store.is_capable("optimizer") and not store.is_capable("gradient_compression")
    with pytest.raises(InvalidArgumentError, match="'nccl'"):
        store.set_gradient_compression({"type": "2bit", "threshold": 0.5})


def test_create_accepts_a_timeout_for_every_type() -> None:
    assert kv.create("local", timeout=1.5).type == "local"


def test_a_registered_type_need_not_implement_the_optimizer_methods() -> None:
    @KVStoreBase.register
    class MinimalStore(KVStoreBase):
        NAMES = ("minimal_test",)
        type = "minimal_test"
        rank = 0
        num_workers = 1

        def broadcast(self, key: object, value: object, out: object, priority: int = 0) -> object:
            return out

        def pushpull(
            self, key: object, value: object, out: object = None, priority: int = 0
        ) -> object:
            return out

    try:
        store = kv.create("minimal_test")
        assert not store.is_capable(KVStoreBase.OPTIMIZER)
        assert not store.is_capable(KVStoreBase.GRADIENT_COMPRESSION)
        assert not store.is_capable(KVStoreBase.ROW_SPARSE)
        with pytest.raises(NotImplementedError, match="'minimal_test' does not run optimizers"):
            store.set_optimizer(object())
        with pytest.raises(NotImplementedError, match="no optimizer states"):
            store.save_optimizer_states("f")
        with pytest.raises(NotImplementedError, match="no optimizer states"):
            store.load_optimizer_states("f")
        with pytest.raises(UnknownNameError, match="unknown capability"):
            store.is_capable("teleport")
    finally:
        del KVStoreBase._registry["minimal_test"]


def test_register_makes_a_custom_type_creatable() -> None:
    @KVStoreBase.register
    class CountingStore(LocalKVStore):
        NAMES = ("counting_test",)

        @classmethod
        def _create(cls, name: str, *, timeout: float | None = None) -> CountingStore:
            return cls("local")

    try:
        store = kv.create("counting_test")
        assert isinstance(store, CountingStore)
        assert "counting_test" in KVStoreBase.known_names()
    finally:
        del KVStoreBase._registry["counting_test"]


def test_register_refuses_classes_that_are_not_kvstores() -> None:
    with pytest.raises(TypeError):
        KVStoreBase.register(int)  # type: ignore[type-var]


def test_local_type_refuses_gradient_compression_as_mxnet_does() -> None:
    store = kv.create("local")
    assert not store.is_capable(KVStoreBase.GRADIENT_COMPRESSION)
    with pytest.raises(InvalidArgumentError, match="not supported for KVStore type 'local'"):
        store.set_gradient_compression({"type": "2bit", "threshold": 0.5})


def test_unknown_capability_is_a_clear_error() -> None:
    with pytest.raises(UnknownNameError, match="capability 'teleport'"):
        kv.create().is_capable("teleport")


def test_device_type_quantises_each_device_value_with_its_own_residual() -> None:
    store = kv.create("device")
    assert store.is_capable("gradient_compression")
    store.set_gradient_compression({"type": "2bit", "threshold": 0.5})
    store.init("w", np.zeros(4, np.float32))
    g1 = np.array([0.75, 0.25, -0.5, 0.0], np.float32)
    g2 = np.array([0.5, 0.25, 0.0, -0.25], np.float32)
    store.push("w", [g1, g2])
    # device 0 sends [.5, 0, -.5, 0], device 1 sends [.5, 0, 0, 0]
    np.testing.assert_array_equal(store.pull("w"), [1.0, 0.0, -0.5, 0.0])
    store.push("w", [g1, g2])  # residuals now reach the threshold
    np.testing.assert_array_equal(store.pull("w"), [1.0, 1.0, -0.5, -0.5])


def test_device_compression_none_turns_compression_off() -> None:
    store = kv.create("device")
    store.set_gradient_compression({"type": "2bit"})
    store.set_gradient_compression({"type": "none"})
    store.init(0, np.zeros(2, np.float32))
    store.push(0, np.array([0.1, 0.2], np.float32))
    np.testing.assert_allclose(store.pull(0), [0.1, 0.2])


def test_set_updater_refuses_non_callables() -> None:
    with pytest.raises(InvalidArgumentError, match="callable"):
        kv.create().set_updater(3)  # type: ignore[arg-type]


def test_set_updater_none_removes_the_updater() -> None:
    store = kv.create()
    store.init(0, np.zeros(2))
    store.set_updater(lambda k, m, s: s.__iadd__(m))
    store.push(0, np.ones(2))
    store.push(0, np.ones(2))
    store.set_updater(None)  # type: ignore[arg-type]
    store.push(0, np.full(2, 5.0))
    np.testing.assert_array_equal(store.pull(0), 5)


def test_saving_optimizer_states_without_an_optimizer_is_a_clear_error(tmp_path: Path) -> None:
    store = kv.create()
    with pytest.raises(KVStoreError, match="no optimizer is set"):
        store.save_optimizer_states(str(tmp_path / "s"))
    store.set_updater(lambda k, m, s: None)
    with pytest.raises(KVStoreError, match="no optimizer is set"):
        store.load_optimizer_states(str(tmp_path / "s"))


class _StatefulUpdater:
    def __init__(self) -> None:
        self.state = b"\x00"

    def __call__(self, key: Any, merged: Any, stored: Any) -> None:
        stored += merged

    def get_states(self, dump_optimizer: bool = False) -> bytes:
        return self.state + (b"+opt" if dump_optimizer else b"")

    def set_states(self, data: bytes) -> None:
        self.state = data


def test_optimizer_states_round_trip_through_a_file(tmp_path: Path) -> None:
    store = kv.create()
    u = _StatefulUpdater()
    u.state = b"abc"
    store.set_updater(u)
    fname = str(tmp_path / "states")
    store.save_optimizer_states(fname, dump_optimizer=True)
    u.state = b""
    store.load_optimizer_states(fname)
    assert u.state == b"abc+opt"


def test_pull_ignores_row_sparse_outputs_by_default_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = kv.create()
    store.init("e", np.ones((3, 2), np.float32))
    rsp = RowSparseArray.zeros((3, 2))
    dense = np.zeros((3, 2), np.float32)
    with caplog.at_level(logging.INFO, logger="kvsync.kv.local"):
        store.pull("e", out=[dense, rsp])
        store.pull("e", out=[dense, rsp])
    assert rsp.indices.size == 0
    np.testing.assert_array_equal(dense, 1)
    assert sum("row_sparse_pull" in r.getMessage() for r in caplog.records) == 1
    store.pull("e", out=rsp, ignore_sparse=False)
    np.testing.assert_array_equal(rsp.todense(), 1)


def test_read_only_outputs_are_refused() -> None:
    store = kv.create()
    store.init(0, np.ones(2))
    ro = np.zeros(2)
    ro.flags.writeable = False
    with pytest.raises(InvalidArgumentError, match="read-only"):
        store.pull(0, out=ro)


def test_repr_names_the_type() -> None:
    assert "device" in repr(kv.create("device"))


def test_set_optimizer_runs_sgd_on_push_as_in_the_reference() -> None:
    from kvsync import optimizer

    store = kv.create()
    weight = np.zeros((2, 2), np.float32)
    store.init(3, weight)
    store.set_optimizer(optimizer.SGD())
    store.push(3, np.ones((2, 2), np.float32))
    store.pull(3, out=weight)
    np.testing.assert_allclose(weight, -0.01)


def test_optimizer_states_saved_and_loaded_resume_identically(tmp_path: Path) -> None:
    from kvsync import optimizer

    def make(weight: np.ndarray) -> KVStoreBase:
        store = kv.create()
        store.init("w", weight)
        store.set_optimizer(optimizer.create("adam", learning_rate=0.1))
        return store

    grads = [np.full(5, g, np.float32) for g in (1.0, -2.0, 0.5, 3.0)]
    a = make(np.ones(5, np.float32))
    for g in grads[:2]:
        a.push("w", g)
    fname = str(tmp_path / "adam.states")
    a.save_optimizer_states(fname, dump_optimizer=True)
    checkpoint = a.pull("w")
    b = make(checkpoint)
    b.load_optimizer_states(fname)
    for g in grads[2:]:
        a.push("w", g)
        b.push("w", g)
    np.testing.assert_array_equal(a.pull("w"), b.pull("w"))
    fresh = make(checkpoint)  # the same weight without the states ends elsewhere
    for g in grads[2:]:
        fresh.push("w", g)
    assert not np.array_equal(fresh.pull("w"), b.pull("w"))


def test_compressed_push_of_an_integer_key_is_refused_before_any_change() -> None:
    store = kv.create("device")
    store.init(["f", "i"], [np.zeros(2, np.float32), np.zeros(2, np.int32)])
    store.set_gradient_compression({"type": "2bit", "threshold": 0.5})
    with pytest.raises(InvalidArgumentError, match="float values; key 'i'"):
        store.push(["f", "i"], [np.ones(2, np.float32), np.ones(2, np.int32)])
    np.testing.assert_array_equal(store.pull("f"), 0)
