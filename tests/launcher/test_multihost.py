"""Specification of multi-host jobs: two "hosts" made of network namespaces and a veth pair.

Each test runs one ``kvsync-run`` per host (``ip netns exec``), with one worker and one
parameter server on each, so the big key is split over servers on both hosts. Traffic
stays on loopback and the veth addresses inside the namespaces :class:`HostPair` made.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from launcher_procs import alive, wait_dead
from multihost_job import BIG, LR, ROUNDS, SMALL, gradient

import kvsync.kv
from kvsync.optimizer import SGD
from kvsync.testing.hosts import ADDRESSES, HostPair, launcher_argv, unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HERE = Path(__file__).parent
_ports = itertools.count(29611)


@pytest.fixture(scope="module")
def hosts() -> Iterator[HostPair]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"two-host tests need network namespaces: {reason}")
    pair = HostPair("kvsynctest")
    try:
        pair.create()
    except OSError as exc:
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield pair
    finally:
        pair.close()


class Job:
    """Two launchers of one job, their output files, and every pid they reported."""

    def __init__(
        self, hosts: HostPair, out: Path, kind: str, namespaces: tuple[int, int], *extra: str
    ) -> None:
        self.out = out
        port = next(_ports)
        environ = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
            "KVSYNC_BIGARRAY_BOUND": "1000",
            "KVSYNC_TEST_PID_DIR": str(out),
        }
        self.launchers = []
        for node, ns in enumerate(namespaces):
            argv = launcher_argv(
                node, port, "--nproc-per-node", "1", "--num-servers", "1", "--server-setup",
                "multihost_setup", "--grace", "2", str(HERE / "multihost_job.py"), kind,
                str(out), *extra,
            )  # fmt: skip
            with open(out / f"launcher{node}.out", "wb") as log:
                self.launchers.append(
                    subprocess.Popen(
                        hosts.command(ns, argv),
                        env=environ,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

    def child_pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.out.glob("*.pid") if p.read_text().endswith("\n")]

    def wait_children(self, count: int, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.child_pids()) < count:
            assert time.monotonic() < deadline, self.output(0) + self.output(1)
            assert all(p.poll() is None for p in self.launchers), self.output(0) + self.output(1)
            time.sleep(0.05)

    def wait(self, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(max(0.1, deadline - time.monotonic())) for p in self.launchers]
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "launchers did not end:\n" + self.output(0) + self.output(1)
            ) from None
        finally:
            self.kill_all()

    def kill_all(self) -> None:
        """Leave nothing running, whatever happened (only the processes of this job)."""
        for p in self.launchers:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for pid in self.child_pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def output(self, node: int) -> str:
        return (self.out / f"launcher{node}.out").read_text(errors="replace")

    def results(self, rank: int) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        with np.load(self.out / f"rank{rank}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        return json.loads((self.out / f"rank{rank}.json").read_text()), arrays


def _single_process_answer() -> dict[str, np.ndarray]:
    kv = kvsync.kv.create("local")
    kv.set_optimizer(SGD(learning_rate=LR))
    kv.init(["big", "small"], [np.zeros(BIG, np.float32), np.zeros(SMALL, np.float32)])
    for step in range(ROUNDS):
        kv.push(["big", "small"], [[gradient(r, step, n) for r in range(2)] for n in (BIG, SMALL)])
    big, small = kv.pull(["big", "small"])
    return {"big": big, "small": small}


def _finished(job: Job, kind: str) -> list[dict[str, object]]:
    codes = job.wait()  # kills whatever is left, even on failure
    assert codes == [0, 0], job.output(0) + job.output(1)
    pids = job.child_pids()
    assert len(pids) == 4 and wait_dead([*pids, *(p.pid for p in job.launchers)]) == []
    expected = _single_process_answer()
    infos = []
    for rank in range(2):
        info, arrays = job.results(rank)
        for key in ("big", "small"):
            np.testing.assert_allclose(arrays[key], expected[key], rtol=1e-5, err_msg=kind)
        infos.append(info)
    for node in range(2):
        assert "all 2 nodes joined" in job.output(node)
    return infos


@pytest.mark.parametrize("kind", ["dist_sync", "dist_async"])
def test_a_job_over_two_hosts_splits_big_arrays_over_servers_on_both(
    hosts: HostPair, tmp_path: Path, kind: str
) -> None:
    info = _finished(Job(hosts, tmp_path, kind, (0, 1)), kind)[0]
    registered = sorted(str(a).rpartition(":")[0] for a in info["registered"])  # type: ignore[attr-defined]
    assert registered == sorted(ADDRESSES)  # reachable addresses, no loopback
    stats = info["stats"]
    assert isinstance(stats, list)
    # each server shares memory with the worker on its host only; the other's come by socket
    assert [s["shm_pushes"] for s in stats] == [ROUNDS, ROUNDS]
    assert all(s["bytes_in"] >= 2 * ROUNDS * BIG * 4 // 2 for s in stats)


def test_two_launchers_on_one_host_still_share_memory(hosts: HostPair, tmp_path: Path) -> None:
    info = _finished(Job(hosts, tmp_path, "dist_async", (0, 0)), "dist_async")[0]
    assert {str(a).rpartition(":")[0] for a in info["registered"]} == {ADDRESSES[0]}  # type: ignore[attr-defined]
    assert [s["shm_pushes"] for s in info["stats"]] == [2 * ROUNDS, 2 * ROUNDS]  # type: ignore[attr-defined,index]


def test_a_worker_killed_on_one_host_stops_both_launchers_leaving_no_process(
    hosts: HostPair, tmp_path: Path
) -> None:
    job = Job(hosts, tmp_path, "dist_sync", (0, 1), "--until-killed")
    try:
        job.wait_children(4)
        pids = job.child_pids() + [p.pid for p in job.launchers]
        os.kill(int((tmp_path / "worker1.pid").read_text()), signal.SIGKILL)
        codes = job.wait(timeout=40)
    finally:
        job.kill_all()
    out0, out1 = job.output(0), job.output(1)
    assert codes[1] == 128 + signal.SIGKILL, out1
    assert "worker 1 (pid" in out1 and "signal SIGKILL" in out1
    assert codes[0] != 0, out0
    # Node 0 stops for whichever failure it sees first, and both are right: node 1's report
    # of its dead worker, or one of its own children failing because worker 1 is gone (a
    # barrier of the parameter servers names rank 1 as disconnected, a worker loses a
    # server...), which the launcher reports as that child's exit code or signal.
    remote = "job stopped by node 1: worker 1 failed" in out0
    own = re.search(r"\b(worker|server) \d+ \(pid \d+\) ended with (exit code [1-9]|signal )", out0)
    assert remote or own, out0
    assert wait_dead(pids, timeout=10) == []


def test_host_pairs_remove_what_a_dead_run_left_and_delete_their_namespaces_by_name(
    hosts: HostPair,
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a pid whose process is gone, as after a crashed run
    stale = f"kvsyncstale{dead.pid}a"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        pair = HostPair("kvsyncstale").create()
        made = _namespaces()
        pair.close()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True, timeout=10)
    assert stale not in made and set(pair.names) <= made
    assert not set(pair.names) & _namespaces()
    assert set(hosts.names) <= _namespaces()  # another pair is left alone


def _namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split(" ", 1)[0] for line in listing.stdout.splitlines()}


AGENT_ON_HOST_A = """
import datetime
import torch.distributed as dist
agent = dist.TCPStore("10.77.0.1", 0, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=30))  # torchrun's agent store
print(agent.port, flush=True)
print(agent.get("from/0").decode(), flush=True)  # blocks until rank 0 on host B set it
"""

RANK0_ON_HOST_B = """
import os, sys
import kvsync
os.environ.update({"TORCHELASTIC_USE_AGENT_STORE": "True", "RANK": "0", "WORLD_SIZE": "1",
                   "MASTER_ADDR": "10.77.0.1", "MASTER_PORT": sys.argv[1]})
with kvsync.TCPStore(timeout=20) as store:  # a client of host A's agent store: hosts nothing
    store.set("from/0", f"{store.dialect} {store.is_master}")
"""


@pytest.mark.torch
def test_under_torchrun_a_rank_on_another_host_is_a_client_of_the_agent_store(
    hosts: HostPair,
) -> None:
    pytest.importorskip("torch.distributed")
    agent = subprocess.Popen(
        hosts.command(0, [sys.executable, "-c", AGENT_ON_HOST_A]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert agent.stdout is not None
        port = agent.stdout.readline().strip()
        rank0 = subprocess.run(
            hosts.command(1, [sys.executable, "-c", RANK0_ON_HOST_B, port]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        published = agent.communicate(timeout=30)[0].strip()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
    assert rank0.returncode == 0, rank0.stderr
    assert published == "torch False"
