"""Smoke test of ``kvsync bench kvstore`` with tiny sizes (no timing assertions)."""

from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import pytest

from kvsync import kv
from kvsync.bench import kvstore as bench
from kvsync.bench.report import results_of


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("store_type", ["local", "device"])
def test_bench_prints_bandwidth_compression_and_copy_rows(
    capsys: pytest.CaptureFixture[str], store_type: str
) -> None:
    args = _args("--type", store_type, "--sizes", "1K,4K", "--copies", "1,2", "--repeat", "1")
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "numpy copy bandwidth" in out
    assert f"KVStore '{store_type}'" in out
    for op in ("push", "pull", "pushpull", "2bit quantise", "2bit dequantise", "2bit both"):
        assert f"\n{op} " in out
    assert "4,096" in out


def test_bench_store_works_on_any_store_object() -> None:
    rows = bench.bench_store(kv.create("device"), sizes=[100], copies=[1, 3], repeat=1)
    assert [(r.op, r.copies) for r in rows] == [
        (op, c) for c in (1, 3) for op in ("push", "pull", "pushpull")
    ]
    assert all(r.seconds > 0 and r.gbps > 0 for r in rows)


def test_bench_sizes_parse_and_reject_nonsense() -> None:
    assert bench.parse_size("16M") == 16 << 20
    with pytest.raises(ValueError, match="bad size"):
        bench.parse_size("lots")
    assert (
        bench.run(_args("--sizes", "1K", "--copies", "1", "--repeat", "1", "--no-compression")) == 0
    )


def test_model_shapes_are_resnet50s_161_tensors_and_mlp40() -> None:
    from kvsync.bench.kvstore_model import model_shapes

    shapes = model_shapes("resnet50")
    assert len(shapes) == 161
    assert shapes[0] == (64, 3, 7, 7) and shapes[-2:] == [(1000, 2048), (1000,)]
    assert sum(int(np.prod(s)) for s in shapes) == 25_557_032  # torchvision's count
    assert model_shapes("mlp40") == [(512, 512), (512,)] * 20
    with pytest.raises(ValueError, match="unknown model"):
        model_shapes("vgg")


@pytest.mark.timeout(120)
def test_model_step_bench_prints_keys_one_key_and_ddp_rows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--type", "dist_sync", "--model", "mlp40", "--repeat", "1"]
    if importlib.util.find_spec("torch") is not None:
        argv += ["--vs", "gloo"]
    args = _args(*argv)
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "model mlp40: 40 float32 arrays" in out
    # the same rows go to --json / --plot (the table was once printed only)
    (table,) = results_of(args).as_json()["tables"]
    steps = {row["step"]: row for row in table["rows"]}
    assert {"keys, no optimizer", "one key, SGD on the server"} <= set(steps)
    assert all(row["seconds"] > 0 for row in steps.values())
    for row in (
        "keys, no optimizer",
        "one key, no optimizer",
        "keys, SGD on the server",
        "one key, SGD on the server",
    ):
        assert f"\n{row} " in out
    if "--vs" in argv:
        assert "\nDDP-style step (1 buckets of <= 25 MB) " in out
