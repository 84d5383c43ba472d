"""Specification of --num-servers: server children with DMLC_ROLE=server, stopped at the end.

Runs the launcher in this process with a stand-in for ``kvsync.launcher.ps_server`` so the
test does not depend on the parameter server itself.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from launcher_procs import wait_dead

from kvsync.launcher import run

pytestmark = pytest.mark.slow

FAKE_SERVER = """
    import os, time
    print("serving", os.environ["RANK"], os.environ["DMLC_ROLE"],
          os.environ["KVSYNC_SERVER_SETUP"], os.environ["DMLC_NUM_SERVER"], flush=True)
    with open(os.path.join({pid_dir!r}, "server" + os.environ["RANK"] + ".pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(30)
"""

WORKER = """
    import os, time
    deadline = time.monotonic() + 10
    while len([n for n in os.listdir({pid_dir!r}) if n.startswith("server")]) < 2:
        assert time.monotonic() < deadline, "servers did not start"
        time.sleep(0.02)
    print("worker", os.environ["RANK"], "saw both servers")
"""


def test_servers_run_beside_workers_and_are_stopped_when_workers_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "kvsync_fake_ps.py").write_text(
        textwrap.dedent(FAKE_SERVER.format(pid_dir=str(pids))))
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WORKER.format(pid_dir=str(pids))))
    monkeypatch.setattr(run, "SERVER_MODULE", "kvsync_fake_ps")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))
    code = run.main(["--nproc-per-node", "2", "--num-servers", "2", "--server-setup",
                     "my.updaters", "--grace", "2", str(worker)])
    out = capfd.readouterr().out
    assert code == 0
    for rank in range(2):
        assert f"[server {rank}] serving {rank} server my.updaters 2" in out
        assert f"[worker {rank}] worker {rank} saw both servers" in out
    server_pids = [int(p.read_text()) for p in pids.glob("server*.pid")]
    assert len(server_pids) == 2
    assert wait_dead(server_pids, timeout=1.0) == []
