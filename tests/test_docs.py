"""The documentation site builds with warnings as errors, and its reference page names every
environment variable kvsync reads and every flag of its commands."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvsync import cli, env
from kvsync.launcher.run import build_parser

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_parser") is None,
    reason="sphinx and myst-parser are not installed (pip install -e '.[test]' installs them)",
)
def test_the_sphinx_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=280, check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "html" / "migration.html").exists()


def test_every_environment_variable_is_in_the_reference_table() -> None:
    names = [n for n in env.__all__ if n.isupper() and isinstance(getattr(env, n), str)]
    assert len(names) > 20
    missing = [n for n in names if f"`{getattr(env, n)}`" not in REFERENCE]
    assert not missing, missing


def _long_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                getattr(sub, "load", lambda: None)()  # a lazy subcommand's options
                flags |= _long_flags(sub)
        elif action.option_strings and action.dest != "help":
            flags.add(next(f for f in action.option_strings if f.startswith("--")))
    return flags


def test_every_flag_of_every_command_is_in_the_reference_tables() -> None:
    documented = set(re.findall(r"`(--[a-z][a-z-]*)", REFERENCE))
    flags = _long_flags(cli.build_parser()) | _long_flags(build_parser())
    assert len(flags) > 40
    assert not flags - documented, sorted(flags - documented)
