"""Specification of ``kvsync-run`` (run as ``python -m kvsync.run``) with real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from launcher_procs import alive, wait_dead

pytestmark = pytest.mark.slow

RUN = [sys.executable, "-m", "kvsync.run"]


def _script(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def _run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout)


def _pids_written(tmp_path: Path, count: int, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(tmp_path.glob("*.pid"))
        if len(files) == count and all(f.read_text().endswith("\n") for f in files):
            return [int(f.read_text()) for f in files]
        time.sleep(0.02)
    raise AssertionError(f"children did not write {count} pid files in {timeout} s")


ENV_DUMP = """
    import json, os
    names = ["MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
             "LOCAL_WORLD_SIZE", "GROUP_RANK", "DMLC_ROLE", "DMLC_NUM_WORKER",
             "DMLC_NUM_SERVER", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT"]
    print(json.dumps({n: os.environ.get(n) for n in names}))
"""


def _env_lines(stdout: str) -> dict[str, dict[str, str]]:
    found = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"\[(worker \d+)\] (\{.*\})", line)
        if m:
            found[m.group(1)] = json.loads(m.group(2))
    return found


def test_workers_get_torchrun_and_dmlc_variables_and_prefixed_output(tmp_path: Path) -> None:
    script = _script(tmp_path, "dump.py", ENV_DUMP)
    done = _run("--nproc-per-node", "3", script)
    assert done.returncode == 0, done.stderr
    port = re.search(r"store server listening on 127\.0\.0\.1:(\d+)", done.stderr)
    assert port is not None, done.stderr
    seen = _env_lines(done.stdout)
    assert sorted(seen) == ["worker 0", "worker 1", "worker 2"]
    for rank in range(3):
        e = seen[f"worker {rank}"]
        assert e == {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port.group(1), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3",
            "GROUP_RANK": "0", "DMLC_ROLE": "worker", "DMLC_NUM_WORKER": "3",
            "DMLC_NUM_SERVER": "0", "DMLC_PS_ROOT_URI": "127.0.0.1",
            "DMLC_PS_ROOT_PORT": port.group(1),
        }


def test_module_mode_passes_arguments_through(tmp_path: Path) -> None:
    (tmp_path / "kvsync_echo_mod.py").write_text("import sys; print(sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run([*RUN, "-m", "kvsync_echo_mod", "--lr", "0.1", "x"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[worker 0] ['--lr', '0.1', 'x']\n"


def test_a_failing_rank_stops_the_job_with_its_code_and_a_summary(tmp_path: Path) -> None:
    script = _script(tmp_path, "fail.py", f"""
        import os, sys, time
        rank = int(os.environ["RANK"])
        with open(os.path.join({str(tmp_path)!r}, f"{{rank}}.pid"), "w") as f:
            f.write(f"{{os.getpid()}}\\n")
        if rank == 1:
            deadline = time.monotonic() + 10  # fail once every rank is up
            while len(os.listdir({str(tmp_path)!r})) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            print("loss is nan at step 12", file=sys.stderr)
            sys.exit(7)
        time.sleep(30)
    """)
    started = time.monotonic()
    done = _run("--nproc-per-node", "3", "--grace", "2", script)
    assert time.monotonic() - started < 15.0
    assert done.returncode == 7
    assert "[worker 1] loss is nan at step 12" in done.stderr
    summary = [line for line in done.stderr.splitlines() if line.startswith("[kvsync-run] ")]
    text = "\n".join(summary)
    assert "worker 1 failed" in text
    assert "ended with exit code 7; last stderr lines:" in text
    assert "loss is nan at step 12" in text
    assert "stopped 2 other process(es): worker 0, worker 2" in text
    assert wait_dead(_pids_written(tmp_path, 3, timeout=0.1), timeout=1.0) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_launcher_stops_every_child(tmp_path: Path, signum: int) -> None:
    script = _script(tmp_path, "sleep.py", f"""
        import os, subprocess, sys, time
        rank = os.environ["RANK"]
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        with open(os.path.join({str(tmp_path)!r}, f"{{rank}}.pid"), "w") as f:
            f.write(f"{{os.getpid()}}\\n")
        with open(os.path.join({str(tmp_path)!r}, f"{{rank}}c.pid"), "w") as f:
            f.write(f"{{child.pid}}\\n")
        time.sleep(30)
    """)
    launcher = subprocess.Popen([*RUN, "--nproc-per-node", "2", "--grace", "2", script],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = _pids_written(tmp_path, 4)
        assert all(alive(p) for p in pids)
        launcher.send_signal(signum)
        _, err = launcher.communicate(timeout=15)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 128 + signum
    assert f"received {signal.Signals(signum).name}" in err
    assert wait_dead(pids, timeout=1.0) == []


def test_log_dir_holds_per_rank_files(tmp_path: Path) -> None:
    script = _script(tmp_path, "hello.py", """
        import os, sys
        print("out", os.environ["RANK"]); print("err", os.environ["RANK"], file=sys.stderr)
    """)
    done = _run("--nproc-per-node", "2", "--log-dir", str(tmp_path / "logs"), script)
    assert done.returncode == 0, done.stderr
    for rank in range(2):
        logs = tmp_path / "logs"
        assert (logs / f"worker_{rank}.stdout.log").read_text() == f"out {rank}\n"
        assert (logs / f"worker_{rank}.stderr.log").read_text() == f"err {rank}\n"


def test_bad_arguments_are_refused_with_usage() -> None:
    done = _run("--nnodes", "2", "--node-rank", "1", "x.py")
    assert done.returncode == 2
    assert "--master-port is required" in done.stderr
    done = _run("--nproc-per-node", "0", "x.py")
    assert done.returncode == 2 and "must be at least 1" in done.stderr
    done = _run("--grace", "-1", "x.py")
    assert done.returncode == 2 and "must be 0 or more seconds" in done.stderr


STORE_SCRIPT = """
    import sys
    from kvsync import env
    from kvsync.store.tcp import TCPStore

    e = env.read()
    with TCPStore(timeout=20) as store:  # the launcher's store, found through the environment
        store.add("ranks", 1)
        if e.rank == int(sys.argv[1]):
            sys.exit(5)
        store.barrier("all", e.world_size)
        print(f"rank {e.rank} on node {e.group_rank} sees {int(store.get('ranks'))}")
        store.barrier("bye", e.world_size)
"""


def test_ranks_share_the_launchers_store_which_outlives_a_crashing_rank_zero(
    tmp_path: Path,
) -> None:
    script = _script(tmp_path, "store.py", STORE_SCRIPT)
    done = _run("--nproc-per-node", "3", script, "-1")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        f"[worker {r}] rank {r} on node 0 sees 3" for r in range(3)]
    crashed = _run("--nproc-per-node", "3", "--grace", "2", script, "0")
    assert crashed.returncode == 5
    assert "[kvsync-run] worker 0 failed" in crashed.stderr
    assert "Error" not in crashed.stderr  # the others were stopped, not broken by a lost store


def _start_node(rank: int, port: int, script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RUN, "--nnodes", "2", "--node-rank", str(rank), "--master-port", str(port),
         "--nproc-per-node", "2", "--grace", "2", script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _two_nodes(script: str, *args: str) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    node0 = _start_node(0, 0, script, *args)
    node1 = None
    try:
        first = node0.stderr.readline() if node0.stderr else ""
        found = re.search(r"store server listening on 127\.0\.0\.1:(\d+) \(node 0 of 2\)", first)
        assert found is not None, first
        node1 = _start_node(1, int(found.group(1)), script, *args)
        out1, err1 = node1.communicate(timeout=30)
        out0, err0 = node0.communicate(timeout=30)
    finally:
        for proc in (node0, node1):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert node1 is not None
    return (node0.returncode, out0, err0), (node1.returncode, out1, err1)


def test_two_launchers_on_one_machine_form_one_job(tmp_path: Path) -> None:
    script = _script(tmp_path, "store.py", STORE_SCRIPT)
    (code0, out0, err0), (code1, out1, err1) = _two_nodes(script, "-1")
    assert (code0, code1) == (0, 0), err0 + err1
    assert sorted(out0.splitlines()) == [
        "[worker 0] rank 0 on node 0 sees 4", "[worker 1] rank 1 on node 0 sees 4"]
    assert sorted(out1.splitlines()) == [
        "[worker 2] rank 2 on node 1 sees 4", "[worker 3] rank 3 on node 1 sees 4"]


def test_a_failure_on_one_node_stops_the_other_node(tmp_path: Path) -> None:
    script = _script(tmp_path, "store.py", STORE_SCRIPT)
    started = time.monotonic()
    (code0, _, err0), (code1, _, err1) = _two_nodes(script, "3")
    assert time.monotonic() - started < 20.0
    assert code1 == 5, err1
    assert "[kvsync-run] worker 3 failed" in err1
    assert code0 == 1, err0
    assert "job stopped by node 1: worker 3 failed" in err0


def test_parameter_servers_serve_a_dist_sync_job(tmp_path: Path) -> None:
    script = _script(tmp_path, "ps.py", """
        import numpy as np
        import kvsync.kv

        kv = kvsync.kv.create("dist_sync")
        w = np.zeros((4, 3), dtype=np.float32)
        kv.init(3, w)
        for _ in range(2):
            kv.push(3, np.full_like(w, kv.rank + 1))
            kv.pull(3, out=w)
        print(f"rank {kv.rank}/{kv.num_workers} pulled {w[0, 0]:g}")
    """)
    done = _run("--nproc-per-node", "2", "--num-servers", "2", script)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[worker 0] rank 0/2 pulled 3", "[worker 1] rank 1/2 pulled 3"]


def test_python_dash_m_kvsync_launcher_run_is_the_launcher(tmp_path: Path) -> None:
    # Regression: the module had no __main__ guard, so it ran nothing and exited 0.
    script = _script(tmp_path, "fail.py", "raise SystemExit(3)")
    done = subprocess.run([sys.executable, "-m", "kvsync.launcher.run", script],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "worker 0 failed" in done.stderr
