"""CI runs the suite on every Python the package claims, and skips the ones a machine lacks."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OTHER_PYTHONS = ROOT / ".ci" / "other-pythons"
CLAIMED = ("3.10", "3.11", "3.12", "3.13")


def _other_pythons(pyenv_root: Path, *versions: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYENV_ROOT": str(pyenv_root), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["bash", str(OTHER_PYTHONS), *versions],
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_classifiers_list_every_python_the_package_claims() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib on 3.10
    assert f'requires-python = ">={CLAIMED[0]}"' in pyproject
    listed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert sorted(listed) == list(CLAIMED)


def test_ci_runs_the_other_pythons_after_the_readme_command() -> None:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    readme_command = lines.index("python -m pip install -e '.[test]' && python -m pytest")
    assert lines.index(".ci/other-pythons") == readme_command + 1
    assert "versions=(3.10 3.12 3.13)" in OTHER_PYTHONS.read_text()


@pytest.mark.timeout(40)
def test_a_missing_interpreter_is_reported_and_skipped(tmp_path: Path) -> None:
    result = _other_pythons(tmp_path, "3.10", "3.99")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== Python 3.10: not found under" in result.stdout
    assert "== Python 3.99: not found under" in result.stdout


@pytest.mark.timeout(40)
def test_an_interpreter_that_fails_fails_the_run(tmp_path: Path) -> None:
    broken = tmp_path / "versions" / "3.99.1" / "bin" / "python"
    broken.parent.mkdir(parents=True)
    broken.write_text("#!/bin/sh\necho 'no venv here' >&2\nexit 3\n")
    broken.chmod(0o755)
    result = _other_pythons(tmp_path, "3.98", "3.99")
    assert result.returncode == 1
    assert f"== Python 3.99: {broken}" in result.stdout
    assert "== Python 3.99: FAILED" in result.stdout
    assert "== failed on Python 3.99" in result.stdout
