"""Updater: lazy per-index states, npz+JSON save/load, bit-identical resumption."""

from __future__ import annotations

import io
import json
import logging
import threading
from typing import Any

import numpy as np
import pytest
from optimizer_reference import VARIANTS, variant_id

from kvsync import optimizer
from kvsync.errors import KeyTypeError, ShapeMismatchError

KEYS: list[int | str] = [3, "emb"]


def _make(name: str, extra: dict[str, Any], **common: Any) -> optimizer.Optimizer:
    opt = optimizer.create(
        name,
        wd=0.01,
        rescale_grad=0.5,
        clip_gradient=1.5,
        lr_scheduler=optimizer.FactorScheduler(step=2, factor=0.7, base_lr=0.05),
        **common,
        **extra,
    )
    opt.set_lr_mult({3: 1.5})
    return opt


def _grads(dtype: Any, steps: int) -> list[dict[int | str, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [{k: rng.standard_normal((3, 4)).astype(dtype) for k in KEYS} for _ in range(steps)]


def _run(
    upd: optimizer.Updater,
    weights: dict[int | str, np.ndarray],
    grads: list[dict[int | str, np.ndarray]],
) -> None:
    for step, by_key in enumerate(grads):
        for key in KEYS:
            if key == "emb" and step % 3 == 2:
                continue  # uneven per-index counts
            upd(key, by_key[key], weights[key])


def _initial(dtype: Any) -> dict[int | str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {k: rng.standard_normal((3, 4)).astype(dtype) for k in KEYS}


CASES = [(v, np.float32, False) for v in VARIANTS] + [
    (("sgd", {"momentum": 0.9}), np.float16, True),
    (("adam", {}), np.float16, True),
    (("lamb", {}), np.float16, True),
    (("rmsprop", {"centered": True}), np.float16, True),
    (("adagrad", {}), np.float64, False),
]


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split the 12-element test arrays into several blocks."""
    monkeypatch.setattr(optimizer.blocks, "BLOCK_BYTES", 16)


@pytest.mark.parametrize("dump", [False, True], ids=["states-only", "dump-optimizer"])
@pytest.mark.parametrize(
    "case", CASES, ids=[f"{variant_id(v)}-{np.dtype(d).name}" for v, d, _ in CASES]
)
def test_save_load_continue_is_bit_identical(case: Any, dump: bool) -> None:
    (name, extra), dtype, mp = case
    grads = _grads(dtype, 7)
    straight = _initial(dtype)
    _run(optimizer.get_updater(_make(name, extra, multi_precision=mp)), straight, grads)

    resumed = _initial(dtype)
    first = optimizer.get_updater(_make(name, extra, multi_precision=mp))
    _run(first, resumed, grads[:3])
    blob = first.get_states(dump_optimizer=dump)
    saved = {k: v.copy() for k, v in resumed.items()}
    # a fresh process: same config when the optimizer was not dumped, anything otherwise
    fresh_opt = _make(name, extra, multi_precision=mp) if not dump else optimizer.create("sgd")
    second = optimizer.get_updater(fresh_opt)
    second.set_states(blob)
    assert second.optimizer.update_counts == first.optimizer.update_counts
    assert second.optimizer.num_update == first.optimizer.num_update
    _run(second, saved, grads[3:])
    for key in KEYS:
        assert saved[key].dtype == np.dtype(dtype)
        assert saved[key].tobytes() == straight[key].tobytes(), key


def test_states_blob_is_npz_with_a_json_manifest_and_no_pickle() -> None:
    upd = optimizer.get_updater(optimizer.create("rmsprop", centered=True, multi_precision=True))
    upd(0, np.ones(2, np.float16), np.ones(2, np.float16))
    upd("b", np.ones(3), np.ones(3))
    with np.load(io.BytesIO(upd.get_states(dump_optimizer=True)), allow_pickle=False) as npz:
        manifest = json.loads(npz["manifest"].tobytes())
        assert manifest["format"] == "kvsync.optimizer.states"
        assert manifest["counts"] == [[0, 1], ["b", 1]]
        assert manifest["optimizer"]["name"] == "rmsprop"
        (i0, tree0), (i1, tree1) = manifest["states"]
        assert (i0, i1) == (0, "b")
        assert len(tree0) == 2 and len(tree0[1]) == 3  # (master, (n, g, delta))
        assert npz[tree0[0]].dtype == np.float32
        assert len(tree1) == 3


def test_loaded_state_arrays_are_writable_copies() -> None:
    upd = optimizer.get_updater(optimizer.create("adam"))
    upd(0, np.ones(4), np.ones(4))
    other = optimizer.get_updater(optimizer.create("adam"))
    other.set_states(upd.get_states())
    mean, var = other.states[0]  # type: ignore[misc]
    assert mean.flags.writeable and var.flags.writeable
    assert not np.shares_memory(mean, upd.states[0][0])  # type: ignore[index]


@pytest.mark.parametrize(
    "blob",
    [b"", b"garbage bytes", b"PK\x03\x04" + b"\x00" * 40],
    ids=["empty", "garbage", "broken-zip"],
)
def test_set_states_on_garbage_raises_a_clear_value_error(blob: bytes) -> None:
    upd = optimizer.get_updater(optimizer.create("sgd", momentum=0.9))
    upd(0, np.ones(2), np.ones(2))
    before = dict(upd.states)
    with pytest.raises(ValueError, match="optimizer states"):
        upd.set_states(blob)
    assert upd.states == before and upd.optimizer.num_update == 1


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _manifest(**fields: Any) -> np.ndarray:
    base = {
        "format": "kvsync.optimizer.states",
        "version": 1,
        "num_update": 1,
        "counts": [[0, 1]],
        "states": [[0, "a0"]],
        "optimizer": None,
    }
    base.update(fields)
    return np.frombuffer(json.dumps(base).encode(), dtype=np.uint8)


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (_npz(a0=np.zeros(2)), "no kvsync manifest"),
        (_npz(manifest=np.frombuffer(b"{nope", np.uint8)), "not JSON"),
        (_npz(manifest=_manifest(format="mxnet")), "format"),
        (_npz(manifest=_manifest(version=99)), "version 99"),
        (_npz(manifest=_manifest()), "missing array 'a0'"),
        (_npz(manifest=_manifest(states=[[0.5, "a0"]]), a0=np.zeros(2)), "int or str"),
        (_npz(manifest=_manifest(counts=[[0, "x"]]), a0=np.zeros(2)), "integers"),
        (_npz(manifest=_manifest(states={"0": "a0"}), a0=np.zeros(2)), "pairs"),
        (
            _npz(manifest=_manifest(optimizer={"name": "nope", "params": {}}), a0=np.zeros(2)),
            "unknown optimizer",
        ),
        (_npz(manifest=_manifest(), a0=np.array([None], dtype=object)), "pickle"),
    ],
    ids=[
        "no-manifest",
        "bad-json",
        "format",
        "version",
        "missing-array",
        "bad-index",
        "bad-count",
        "bad-states",
        "unknown-optimizer",
        "object-array",
    ],
)
def test_set_states_rejects_malformed_checkpoints(blob: bytes, match: str) -> None:
    upd = optimizer.get_updater(optimizer.create("sgd", momentum=0.9))
    with pytest.raises(ValueError, match=match):
        upd.set_states(blob)
    assert upd.states == {}


def test_loaded_state_of_another_shape_is_rejected_naming_the_index() -> None:
    upd = optimizer.get_updater(optimizer.create("adam"))
    upd("w", np.ones(4), np.ones(4))
    other = optimizer.get_updater(optimizer.create("adam"))
    other.set_states(upd.get_states())
    with pytest.raises(ShapeMismatchError, match="'w'"):
        other("w", np.ones(5), np.ones(5))


def test_list_of_indices_and_bytes_index() -> None:
    upd = optimizer.get_updater(optimizer.create("sgd", learning_rate=1.0))
    w0, w1 = np.ones(2), np.ones(2)
    upd([0, "b"], [np.ones(2), np.full(2, 0.5)], [w0, w1])
    upd(b"b", np.full(2, 0.5), w1)
    assert w0.tolist() == [0.0, 0.0] and w1.tolist() == [0.0, 0.0]
    assert set(upd.states) == {0, "b"}
    assert upd.optimizer.update_counts == {0: 1, "b": 2}


def test_numpy_integer_index_is_the_same_as_int() -> None:
    upd = optimizer.get_updater(optimizer.create("sgd", momentum=0.9))
    upd(np.int64(4), np.ones(2), np.ones(2))  # type: ignore[arg-type]
    upd(4, np.ones(2), np.ones(2))
    assert list(upd.states) == [4] and upd.optimizer.update_counts == {4: 2}


def test_bad_index_type_is_rejected() -> None:
    upd = optimizer.get_updater(optimizer.create("sgd"))
    with pytest.raises(KeyTypeError):
        upd(True, np.ones(2), np.ones(2))  # type: ignore[arg-type]
    with pytest.raises(KeyTypeError):
        upd(1.0, np.ones(2), np.ones(2))  # type: ignore[arg-type]


MP_VARIANTS = [v for v in VARIANTS if v[0] != "signum"] + [("signum", {"momentum": 0.9})]


@pytest.mark.parametrize("variant", MP_VARIANTS, ids=[variant_id(v) for v in MP_VARIANTS])
def test_multi_precision_keeps_float16_weights_and_a_float32_master(
    variant: tuple[str, dict[str, Any]],
) -> None:
    name, extra = variant
    rng = np.random.default_rng(2)
    w16 = rng.standard_normal(10).astype(np.float16)
    w32 = w16.astype(np.float32)
    mp = optimizer.get_updater(optimizer.create(name, multi_precision=True, wd=0.01, **extra))
    fp32 = optimizer.get_updater(optimizer.create(name, wd=0.01, **extra))
    for _ in range(4):
        g16 = rng.standard_normal(10).astype(np.float16)
        mp(0, g16, w16)
        fp32(0, g16.astype(np.float32), w32)
    master = mp.states[0][0]  # type: ignore[index]
    assert w16.dtype == np.float16 and master.dtype == np.float32
    assert master.tobytes() == w32.tobytes()
    assert w16.tobytes() == master.astype(np.float16).tobytes()


def test_float16_without_multi_precision_updates_in_float16_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upd = optimizer.get_updater(optimizer.create("adam"))
    with caplog.at_level(logging.WARNING, logger="kvsync.optimizer.base"):
        for key in range(3):
            upd(key, np.ones(2, np.float16), np.ones(2, np.float16))
    assert [s.dtype for s in upd.states[0]] == [np.float16, np.float16]  # type: ignore[union-attr]
    assert sum("multi_precision" in r.getMessage() for r in caplog.records) == 1


def test_concurrent_updates_of_distinct_keys_match_sequential_updates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(optimizer.blocks, "BLOCK_BYTES", 64)
    rng = np.random.default_rng(9)
    keys = list(range(4))
    init = {k: rng.standard_normal(50) for k in keys}
    grads = {k: [rng.standard_normal(50) for _ in range(20)] for k in keys}

    def train(parallel: bool) -> tuple[dict[int, np.ndarray], optimizer.Updater]:
        upd = optimizer.get_updater(optimizer.create("adam", wd=0.01))
        ws = {k: v.copy() for k, v in init.items()}

        def run(k: int) -> None:
            for g in grads[k]:
                upd(k, g, ws[k])

        if parallel:
            threads = [threading.Thread(target=run, args=(k,)) for k in keys]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            assert not any(t.is_alive() for t in threads)
        else:
            for k in keys:
                run(k)
        return ws, upd

    (seq, _), (par, upd) = train(False), train(True)
    assert upd.optimizer.num_update == 20
    assert upd.optimizer.update_counts == dict.fromkeys(keys, 20)
    for k in keys:
        assert seq[k].tobytes() == par[k].tobytes()
