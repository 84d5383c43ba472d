"""Specification of ``kvsync serve`` run as a real subprocess."""

from __future__ import annotations

import signal

import pytest
from transport_helpers import serve_subprocess

from kvsync.store.tcp import TCPStore


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_its_address_serves_and_exits_0_on_a_signal(
    sig: signal.Signals,
) -> None:
    with serve_subprocess("--host", "127.0.0.1") as (proc, host, port):
        assert host == "127.0.0.1" and port > 0
        with TCPStore(host, port, timeout=5) as store:
            store.set("k", "v")
            assert store.get("k") == b"v"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "stopped" in proc.stderr.read()


def test_serve_on_a_used_port_fails_naming_it() -> None:
    import subprocess
    import sys

    from transport_helpers import child_env

    with serve_subprocess() as (_, host, port):
        done = subprocess.run(
            [sys.executable, "-m", "kvsync.launcher.serve", "--port", str(port)],
            capture_output=True, text=True, env=child_env(), timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 1 and f"{host}:{port}" in done.stderr
        assert "Traceback" not in done.stderr
