"""Benchmarks report progress on stderr and save their tables (--json) and charts (--plot)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kvsync import cli

KVSTORE = ["bench", "kvstore", "--type", "local", "--sizes", "1000", "--copies", "1",
           "--repeat", "1"]  # fmt: skip


def test_json_holds_every_table_and_progress_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kv.json"
    assert cli.main([*KVSTORE, "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[bench +" in err and "kvstore local: push/pull/pushpull" in err
    tables = json.loads(out.read_text())["tables"]
    assert [t["title"] for t in tables] == [
        "KVStore 'local' (seconds per call)",
        "2-bit compression (seconds per call)",
    ]
    ops = {(r["op"], r["size"], r["copies"]) for r in tables[0]["rows"]}
    assert ops == {("push", 1000, 1), ("pull", 1000, 1), ("pushpull", 1000, 1)}
    assert all(r["seconds"] > 0 for r in tables[0]["rows"])


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed"
)
def test_plot_without_matplotlib_is_skipped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "kv.png"
    assert cli.main([*KVSTORE, "--no-compression", "--plot", str(png)]) == 0
    assert "--plot skipped: matplotlib is not installed" in capsys.readouterr().err
    assert not png.exists()


def test_plot_with_matplotlib_draws_the_tables(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "kv.png"
    assert cli.main([*KVSTORE, "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
