"""The testing helpers cost nothing until used, and rank processes print no warning."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("numpy", "kvsync.server", "kvsync.store", "kvsync.client", "kvsync.testing.spawn")


def _python(
    *args: str, cwd: Path | None = None, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **extra_env}
    return subprocess.run(
        [sys.executable, *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


@pytest.mark.timeout(30)
def test_loading_the_pytest_plugin_imports_nothing_heavy() -> None:
    probe = (
        "import sys, kvsync.testing.plugin\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))\n"
    )
    result = _python("-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.timeout(60)
@pytest.mark.slow
def test_process_ranks_run_under_w_error_and_print_no_warning(tmp_path: Path) -> None:
    script = tmp_path / "run_ranks.py"
    script.write_text(
        textwrap.dedent("""
        from kvsync.testing import StoreAddress, spawn_ranks

        def rank_fn(rank, world_size, address):
            return [rank, type(address) is StoreAddress]

        if __name__ == "__main__":
            print(spawn_ranks(rank_fn, 2, mode="process", timeout=40))
    """)
    )
    result = _python("-W", "error", str(script), cwd=tmp_path, PYTHONWARNINGS="error")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[0, True], [1, True]]"
    assert "Warning" not in result.stderr
