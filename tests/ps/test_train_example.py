"""examples/train_ps.py under kvsync-run: 4 workers, 2 parameter servers, exact result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_ps.py"


@pytest.mark.slow
def test_train_ps_matches_single_process_sgd_under_the_launcher() -> None:
    cmd = [sys.executable, "-m", "kvsync.run", "--nproc-per-node", "4", "--num-servers", "2",
           str(EXAMPLE), "--epochs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[worker 0] epoch 1: loss" in proc.stdout
    assert "OK: equal to single-process large-batch SGD to 1e-6" in proc.stdout
