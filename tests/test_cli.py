"""The command lines as a user meets them: --version, one-line errors, ports, log levels."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

import kvsync
from kvsync import env, log
from kvsync.errors import InvalidPortError
from kvsync.server import StoreServer

KVSYNC = [sys.executable, "-m", "kvsync"]


def _kvsync(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "KVSYNC_"))}
    return subprocess.run(
        [*KVSYNC, *args],
        env={**environ, **extra_env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str], prog: str) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


def test_version_prints_the_package_version() -> None:
    done = _kvsync("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"kvsync {kvsync.__version__}"


def test_help_shows_plain_text_not_the_docstrings_markup() -> None:
    done = _kvsync("--help")
    assert done.returncode == 0 and "``" not in done.stdout
    assert "The kvsync command line: kvsync serve, kvsync inspect, kvsync bench." in done.stdout


@pytest.mark.parametrize(
    "args",
    [["serve", "--port", "70000"], ["serve", "--port", "-1"], ["inspect", "--port", "65536"]],
)
def test_ports_outside_the_tcp_range_are_refused_by_every_command(args: list[str]) -> None:
    line = _one_error_line(_kvsync(*args), f"kvsync {args[0]}")
    assert "is not a TCP port (0-65535)" in line


def test_a_parameter_server_without_its_environment_fails_in_one_line() -> None:
    line = _one_error_line(_kvsync("serve", "--role", "server"), "kvsync serve")
    assert "MASTER_ADDR and MASTER_PORT" in line


def test_inspect_with_a_wrong_secret_fails_in_one_line() -> None:
    with StoreServer("127.0.0.1", 0, secret=b"right").start() as server:
        done = _kvsync(
            "inspect", "--port", str(server.port), "--timeout", "5", KVSYNC_SECRET="wrong"
        )
    line = _one_error_line(done, "kvsync inspect")
    assert "shared secret" in line


def test_a_bad_log_level_is_refused_in_one_line() -> None:
    line = _one_error_line(_kvsync("serve", "--log-level", "loud"), "kvsync serve")
    assert "'loud' is not one of DEBUG" in line


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_the_api_refuses_ports_the_socket_layer_would_wrap(port: int) -> None:
    with pytest.raises(InvalidPortError, match=f"port={port} is not a TCP port"):
        StoreServer("127.0.0.1", port)
    with pytest.raises(InvalidPortError):
        kvsync.TCPStore("127.0.0.1", port, is_master=False, timeout=1)
    with pytest.raises(InvalidPortError, match="MASTER_PORT"):
        _ = env.read({"MASTER_PORT": str(port)}).master_port


def test_configure_sets_the_kvsync_hierarchy_level_and_refuses_nonsense() -> None:
    logger = logging.getLogger("kvsync")
    before = logger.level
    try:
        log.configure("debug")
        assert logging.getLogger("kvsync.kv.dist").getEffectiveLevel() == logging.DEBUG
        with pytest.raises(ValueError, match="KVSYNC_LOG_LEVEL"):
            log.configure_from_environment({"KVSYNC_LOG_LEVEL": "chatty"})
    finally:
        logger.setLevel(before)


@pytest.mark.parametrize("variable", [("KVSYNC_LOG_LEVEL", "loud"), ("PS_VERBOSE", "x")])
def test_kvsync_run_with_a_bad_variable_fails_in_one_line(variable: tuple[str, str]) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "KVSYNC_"))}
    done = subprocess.run([sys.executable, "-m", "kvsync.run", "x.py"],
                          env={**environ, variable[0]: variable[1]}, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert variable[0] in _one_error_line(done, "kvsync-run")


def test_a_hash_store_applies_the_log_level_so_its_long_wait_says_so() -> None:
    code = (
        "import kvsync\n"
        "try:\n    kvsync.HashStore().wait(['a'], 0.7)\nexcept TimeoutError:\n    pass"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KVSYNC_")}
    environ.update(KVSYNC_LOG_LEVEL="INFO", KVSYNC_PROGRESS_SECONDS="0.2")
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wait: still waiting after 0 s of 0.7 s: wait for keys ['a']" in done.stderr
