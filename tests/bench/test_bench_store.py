"""Smoke test of ``kvsync bench store --quick`` as a subprocess (real server, real clients)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvsync.bench.store import SCENARIO_NAMES


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_bench_store_quick_prints_one_row_per_measurement() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvsync.bench.store", "--quick", "--connections", "50"],
        capture_output=True, text=True, timeout=80, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("note: ")]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: ")]
    assert lines[0].split() == ["scenario", "metric", "kvsync"]
    assert any("separate process (python -m kvsync serve)" in n for n in notes)
    scenarios = [line.split()[0] for line in lines[2:]]
    assert sorted(set(scenarios)) == sorted(SCENARIO_NAMES)
    metrics = [line.split(None, 1)[1] for line in lines[2:]]
    assert any(m.startswith("get 16 B median") for m in metrics)
    assert any(m.startswith("set+get ops/s, 2 client processes") for m in metrics)
    cpu = [m for m in metrics if m.startswith("client user CPU per op, 2 clients")]
    assert len(cpu) == 1 and cpu[0].split()[-1] in ("us", "ms", "ns")
    assert any(m.startswith("set+get 1 MiB") for m in metrics)
    assert any(m.startswith("16 ranks pass a barrier") for m in metrics)
    assert any(m.startswith("open 50 connections") for m in metrics)
    for where in ("server on a thread", "server in a child process"):
        assert any(m.startswith(f"get 16 B p99, {where}") for m in metrics)
    assert any("busy-master rows: the master is a separate process" in n for n in notes)
    cold = [m for m in metrics if m.startswith("8 ranks in 2 fresh processes meet")]
    assert len(cold) == 1 and cold[0].split()[-1] in ("us", "ms", "s")
    assert any("The cold row starts fresh processes" in n for n in notes)


def test_bench_vs_torch_without_torch_says_so_and_still_measures(tmp_path: object) -> None:
    env = dict(os.environ)
    blocker = os.path.join(str(tmp_path), "torch")
    os.makedirs(blocker)
    with open(os.path.join(blocker, "__init__.py"), "w") as f:
        f.write("raise ImportError('torch hidden by the test')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "kvsync.bench.store", "--quick", "--scenario", "latency",
         "--vs", "torch"],
        capture_output=True, text=True, timeout=50, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--vs torch skipped" in proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["scenario", "metric", "kvsync"]


def test_bench_with_the_server_in_a_thread_says_where_it_ran() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvsync.bench.store", "--quick", "--scenario", "latency",
         "--kvsync-server", "thread"],
        capture_output=True, text=True, timeout=50, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert any(m.split()[:3] == ["latency", "get", "16"] for m in proc.stdout.splitlines())
    assert "note: kvsync server: a thread of the bench process" in proc.stdout


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_vs_torch_has_torch_client_rows_against_kvsync_server() -> None:
    pytest.importorskip("torch.distributed")
    proc = subprocess.run(
        [sys.executable, "-m", "kvsync.bench.store", "--quick", "--scenario", "latency",
         "--iterations", "20", "--vs", "torch"],
        capture_output=True, text=True, timeout=110, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    torch_client = [r[2:5] for r in rows if r[:2] == ["torch", "client"]]
    assert [r[:3] for r in torch_client] == [["get", "16", "B"], ["add", "16", "B"]]
    assert "note: 'torch client' rows: torch's own TCPStore client" in proc.stdout
