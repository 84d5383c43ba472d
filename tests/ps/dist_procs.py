"""Real-process parameter-server jobs for the tests: a job store in the test process,
server processes (``python -m kvsync.launcher.ps_server``) and worker processes running a scenario
of ``dist_worker.py``; everything bounded in time and ended by PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvsync.server import StoreServer

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "dist_worker.py")


@dataclass
class Job:
    store: Any  # a kvsync StoreServer, or torch's own TCPStore server
    env: dict[str, str]
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    workers: list[subprocess.Popen[str]] = field(default_factory=list)

    def start_workers(self, scenario: str, n: int, **extra: str) -> None:
        for r in range(n):
            env = {**self.env, "RANK": str(r), "WORLD_SIZE": str(n), **extra}
            self.workers.append(subprocess.Popen(
                [sys.executable, WORKER, scenario], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))

    def results(self, timeout: float = 40.0) -> list[dict[str, object]]:
        """Each worker's JSON result (its last stdout line); fails on a non-zero exit."""
        return self.results_of(range(len(self.workers)), timeout)

    def results_of(self, ranks: Iterable[int], timeout: float = 40.0) -> list[dict[str, object]]:
        """The JSON results of the workers ``ranks``."""
        deadline = time.monotonic() + timeout
        out = []
        for p in [self.workers[r] for r in ranks]:
            try:
                stdout, stderr = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"worker {p.pid} hung") from None
            assert p.returncode == 0, f"worker exited {p.returncode}:\n{stderr[-3000:]}"
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out


def _kill(p: subprocess.Popen[str]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    for stream in (p.stdout, p.stderr):
        if stream is not None:
            stream.close()


def _torch_job_store() -> Any:
    """torch's own store server, as torchrun's agent would host it (needs torch)."""
    import datetime

    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=60))


@contextmanager
def ps_job(num_servers: int, *, bound: int = 1_000_000, stall: float = 5.0,
           setup: str | None = None, torch_store: bool = False) -> Iterator[Job]:
    """A job store plus ``num_servers`` server processes; workers are added by the test.
    With ``torch_store`` the job store is torch's server and the processes see torchrun's
    variables, so they reach it in torch's protocol."""
    store = _torch_job_store() if torch_store else StoreServer().start()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
           "DMLC_NUM_SERVER": str(num_servers), "KVSYNC_BIGARRAY_BOUND": str(bound)}
    if torch_store:
        env["TORCHELASTIC_USE_AGENT_STORE"] = "True"
    job = Job(store, env)
    try:
        cmd = [sys.executable, "-m", "kvsync.launcher.ps_server", "--stall-seconds", str(stall)]
        if setup:  # the CLI form, with the test directory importable
            cmd = [sys.executable, "-m", "kvsync", "serve", "--role", "server",
                   "--server-setup", setup, "--stall-seconds", str(stall)]
            env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
        for _ in range(num_servers):
            job.servers.append(subprocess.Popen(
                cmd,
                env={**env, "DMLC_ROLE": "server"}, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True))
        job.env["KVSYNC_TEST_SERVER_PIDS"] = ",".join(str(p.pid) for p in job.servers)
        yield job
    finally:
        for p in job.workers + job.servers:
            _kill(p)
        if not torch_store:  # (torch's server stops when its last reference goes)
            store.close()
