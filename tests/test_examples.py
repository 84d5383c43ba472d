"""Every script in examples/ runs to completion with the command its docstring gives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RUN = [sys.executable, "-m", "kvsync.run"]

#: example file -> (command after the interpreter, modules it needs, text its output holds)
COMMANDS: dict[str, tuple[list[str], tuple[str, ...], str]] = {
    "rendezvous_barrier.py": (
        [*RUN, "--nproc-per-node", "4", "{path}"], (), "[worker 3] rank 3/4: arrived #",
    ),
    "train_ps.py": (
        [*RUN, "--nproc-per-node", "2", "--num-servers", "2", "{path}"], (), "[worker 0] ",
    ),
    "torch_gloo.py": (
        [*RUN, "--nproc-per-node", "2", "{path}"], ("torch",),
        "[worker 1] rank 1/2: all_reduce gave 3",
    ),
    "test_with_kvsync_testing.py": (
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "kvsync.testing.plugin", "{path}"], (), "5 passed",
    ),
}


def test_every_example_has_a_command() -> None:
    missing = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in COMMANDS)
    assert missing == [], f"add these examples to COMMANDS in {__file__}: {missing}"


def _cases() -> list[object]:
    cases: list[object] = []
    for path in sorted(EXAMPLES.glob("*.py")):
        needs = COMMANDS[path.name][1] if path.name in COMMANDS else ()
        marks = [pytest.mark.torch] if "torch" in needs else []
        cases.append(pytest.param(path.name, marks=marks, id=path.name))
    return cases


@pytest.mark.parametrize("name", _cases())
def test_example_runs_to_completion(name: str) -> None:
    argv, needs, expected = COMMANDS[name]
    for module in needs:
        pytest.importorskip(module)
    path = str(EXAMPLES / name)
    done = subprocess.run([a.replace("{path}", path) for a in argv], capture_output=True,
                          text=True, timeout=50, cwd=EXAMPLES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout, done.stdout
