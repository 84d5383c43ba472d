"""kvsync-run accepts torchrun's command line: spellings, value forms, output routing and
``--max-restarts`` (tested by killing a worker in the middle of dist_sync training)."""

from __future__ import annotations

import argparse
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvsync.launcher import torchrun_args
from kvsync.launcher.run import build_parser, child_specs, main

RUN = [sys.executable, "-m", "kvsync.run"]


def _args(*argv: str) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    torchrun_args.resolve(args, parser.error)
    return args


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _script(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


def test_underscore_spellings_and_torchrun_value_forms_are_accepted() -> None:
    args = _args(
        "--nproc_per_node",
        "cpu",
        "--nnodes",
        "1:1",
        "--node_rank",
        "0",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "0",
        "--max_restarts",
        "2",
        "--rdzv_backend",
        "c10d",
        "--rdzv_id",
        "job7",
        "train.py",
        "--lr",
        "1",
    )
    assert args.nproc_per_node == (os.cpu_count() or 1) and args.nnodes == 1
    assert args.max_restarts == 2 and args.rdzv_id == "job7"
    assert (args.script, args.script_args) == ("train.py", ["--lr", "1"])
    assert _args("--nproc-per-node", "auto", "t.py").nproc_per_node == (os.cpu_count() or 1)


def test_rdzv_endpoint_and_standalone_name_the_store() -> None:
    args = _args("--rdzv-endpoint", "10.0.0.1:29400", "--nnodes", "2", "--node-rank", "1", "t.py")
    assert (args.master_addr, args.master_port) == ("10.0.0.1", 29400)
    args = _args("--standalone", "--nproc-per-node", "2", "t.py")
    assert (args.master_addr, args.master_port, args.nnodes) == ("127.0.0.1", 0, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nnodes", "1:4"], "elastic node counts (1:4) are not supported"),
        (["--nproc-per-node", "gpu"], "'gpu' needs GPUs"),
        (["--rdzv-backend", "etcd"], "--rdzv-backend 'etcd' is not supported"),
        (["--rdzv-endpoint", "h:70000"], "70000 is not a TCP port"),
        (["--standalone", "--nnodes", "2"], "--standalone is one node"),
        (["--rdzv-endpoint", "a:1", "--master-addr", "b"], "name different stores"),
        (["--no-python", "-m"], "-m and --no-python exclude each other"),
        (["--redirects", "5"], "S in 0-3"),
    ],
)
def test_what_kvsync_run_cannot_do_is_refused_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in _refused(capsys, *argv, "t.py")


def test_children_get_torchelastics_variables_and_the_log_level() -> None:
    args = _args(
        "--max-restarts",
        "3",
        "--rdzv-id",
        "j",
        "--log-level",
        "INFO",
        "--nproc-per-node",
        "2",
        "t.py",
    )
    for spec in child_specs(args, 5000, restart=2):
        assert spec.env["TORCHELASTIC_RESTART_COUNT"] == "2"
        assert spec.env["TORCHELASTIC_MAX_RESTARTS"] == "3"
        assert spec.env["TORCHELASTIC_RUN_ID"] == "j"
        assert spec.env["KVSYNC_LOG_LEVEL"] == "20"
    workers = child_specs(args, 5000, roles=("worker",))
    assert [s.role for s in workers] == ["worker", "worker"]


def test_worker_commands_for_no_python_and_run_path() -> None:
    assert child_specs(_args("--no-python", "./t.sh", "x"), 1)[0].argv == ["./t.sh", "x"]
    argv = child_specs(_args("--run-path", "/abs/t.py", "x"), 1)[0].argv
    assert argv[-4:] == ["-c", torchrun_args.RUNPY_CODE, "/abs/t.py", "x"]


def test_console_filter_follows_local_ranks_filter_and_redirects() -> None:
    show = torchrun_args.console_filter(
        _args("--nproc-per-node", "3", "--local-ranks-filter", "0,2", "--redirects", "2:1", "t.py")
    )
    assert show("worker", 0, "stdout") and not show("worker", 1, "stdout")
    assert show("worker", 2, "stderr") and not show("worker", 2, "stdout")
    assert show("server", 5, "stdout")


PRINT_RANK = """
    import os, sys
    print("out", os.environ["LOCAL_RANK"], flush=True)
    print("err", os.environ["LOCAL_RANK"], file=sys.stderr, flush=True)
"""


@pytest.mark.slow
def test_local_ranks_filter_and_redirects_route_real_output(tmp_path: Path) -> None:
    script = _script(tmp_path, "p.py", PRINT_RANK)
    done = _run("--nproc_per_node", "2", "--local_ranks_filter", "1", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[worker 1] out 1"]
    logs = tmp_path / "logs"
    done = _run("--nproc-per-node", "2", "--redirects", "3", "--log-dir", str(logs), script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "[worker" not in done.stderr
    assert (logs / "worker_1.stdout.log").read_text() == "out 1\n"
    assert (logs / "worker_0.stderr.log").read_text() == "err 0\n"


@pytest.mark.slow
def test_no_python_runs_the_program_itself(tmp_path: Path) -> None:
    program = tmp_path / "prog.sh"
    program.write_text('#!/bin/sh\necho "rank $RANK of $WORLD_SIZE args $*"\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    done = _run("--nproc-per-node", "2", "--no-python", str(program), "a", "b")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[worker 0] rank 0 of 2 args a b",
        "[worker 1] rank 1 of 2 args a b",
    ]


RESTARTED_TRAINING = """
    import os, signal, sys
    import numpy as np
    import kvsync.kv
    from kvsync.optimizer import SGD

    STEPS = 8
    KILLED = int(sys.argv[1])  # the rank that dies in the first group
    restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    kv = kvsync.kv.create("dist_sync", timeout=30)
    per_round = 0.5 * kv.num_workers  # each round: w -= 0.5 * (one 1 per worker)
    if kv.rank == 0:
        kv.set_optimizer(SGD(learning_rate=0.5))
    kv.barrier()
    kv.init(0, np.zeros(4))  # after a restart: adopts the servers' trained value
    w = kv.pull(0)
    start = int(round(-w[0] / per_round))  # rounds the servers completed
    print(f"restart {restart} rank {kv.rank} resumes at step {start}", flush=True)
    for step in range(start, STEPS):
        if restart == 0 and kv.rank == KILLED and step == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-training, before round 5
        kv.push(0, np.ones(4))
        kv.pull(0, out=w)
    print(f"restart {restart} rank {kv.rank} final {w[0]:g}", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_max_restarts_restarts_the_workers_and_training_resumes_from_the_servers(
    tmp_path: Path,
) -> None:
    script = _script(tmp_path, "train.py", RESTARTED_TRAINING)
    done = _run(
        "--nproc-per-node",
        "2",
        "--num-servers",
        "2",
        "--max-restarts",
        "2",
        "--grace",
        "2",
        script,
        "1",
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # worker 1 kills itself; the launcher may see worker 0 fail first (its parameter-server
    # barrier names rank 1 as disconnected): either way it is restart 1 of 2
    assert re.search(
        r"worker (1 failed with signal SIGKILL|0 failed with exit code 1): "
        r"restarting the workers \(restart 1 of 2\)",
        done.stderr,
    ), done.stderr
    lines = set(done.stdout.splitlines())
    assert {
        "[worker 0] restart 0 rank 0 resumes at step 0",
        "[worker 0] restart 1 rank 0 resumes at step 4",
        "[worker 1] restart 1 rank 1 resumes at step 4",
        "[worker 0] restart 1 rank 0 final -8",
        "[worker 1] restart 1 rank 1 final -8",
    } <= lines, done.stdout


@pytest.mark.slow
def test_without_restarts_left_the_job_fails_with_the_workers_code(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        "fail.py",
        """
        import os, sys
        print("attempt", os.environ["TORCHELASTIC_RESTART_COUNT"], flush=True)
        sys.exit(3 if os.environ["RANK"] == "0" else 0)
    """,
    )
    done = _run("--nproc-per-node", "2", "--max-restarts", "1", "--grace", "1", script)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("restarting the workers") == 1
    attempts = [line for line in done.stdout.splitlines() if line.startswith("[worker 0]")]
    assert attempts == ["[worker 0] attempt 0", "[worker 0] attempt 1"]


@pytest.mark.slow
def test_the_launchers_log_level_reaches_the_ranks_kvsync_loggers(tmp_path: Path) -> None:
    script = _script(
        tmp_path,
        "lvl.py",
        """
        import logging
        import kvsync

        with kvsync.TCPStore(timeout=20) as store:  # applies KVSYNC_LOG_LEVEL, once
            print("level", logging.getLogger("kvsync.store").getEffectiveLevel(), flush=True)
        """,
    )
    done = _run("--nproc-per-node", "1", "-v", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[worker 0] level 20"]
    done = _run("--nproc-per-node", "1", script)
    assert done.stdout.splitlines() == ["[worker 0] level 30"]  # Python's default: WARNING


def _two_nodes(
    flags: list[str], script: str, *script_args: str, timeout: float = 120.0
) -> list[tuple[int, str, str]]:
    """Run two launchers (``--nnodes 2``, node ranks 0 and 1, one rendezvous endpoint) of
    two workers and one parameter server each; their exit codes, stdouts and stderrs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: node 0's store binds it
    common = ["--nnodes", "2", "--rdzv-endpoint", endpoint, "--nproc-per-node", "2",
              "--num-servers", "1", "--grace", "2"]  # fmt: skip
    nodes = [
        subprocess.Popen([*RUN, *common, "--node-rank", str(rank), *flags, script, *script_args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]  # fmt: skip
    try:
        outputs = [node.communicate(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait(timeout=10)
    return [(node.returncode, out, err) for node, (out, err) in zip(nodes, outputs, strict=True)]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_max_restarts_with_two_nodes_restarts_every_nodes_workers_and_resumes(
    tmp_path: Path,
) -> None:
    script = _script(tmp_path, "train.py", RESTARTED_TRAINING)
    (code0, out0, err0), (code1, out1, err1) = _two_nodes(["--max-restarts", "2"], script, "3")
    assert (code0, code1) == (0, 0), err0 + err1
    # worker 3 (node 1) kills itself; the first failure a launcher sees may also be a worker
    # whose parameter server names rank 3 as gone (exit code 1): either way one request,
    # restart 1 of 2, and every node prints the same line
    restart = re.compile(
        r"node \d: worker \d failed with (signal SIGKILL|exit code 1): restarting the "
        r"workers on every node \(restart 1 of 2\); the store and the parameter servers "
        r"keep running"
    )
    lines = [[line for line in err.splitlines() if restart.search(line)] for err in (err0, err1)]
    assert len(lines[0]) == len(lines[1]) == 1 and lines[0] == lines[1], err0 + err1
    assert "restart 2" not in err0 + err1
    expected = {
        f"[worker {rank}] restart 1 rank {rank} {what}"
        for rank in range(4)
        for what in ("resumes at step 4", "final -16")
    }
    assert {f"[worker {r}] restart 0 rank {r} resumes at step 0" for r in (0, 1)} <= set(
        out0.splitlines()
    ), out0
    assert expected <= set(out0.splitlines()) | set(out1.splitlines()), out0 + out1


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_restarts_exhausted_on_one_node_end_the_job_on_every_node(tmp_path: Path) -> None:
    # node 0's workers succeed every time; worker 3 on node 1 fails a little later, each time
    script = _script(
        tmp_path,
        "fail.py",
        """
        import os, sys, time
        rank = int(os.environ["RANK"])
        print("attempt", os.environ["TORCHELASTIC_RESTART_COUNT"], "rank", rank, flush=True)
        if rank == 3:
            time.sleep(1)  # node 0 has counted its workers done by now
            sys.exit(3)
    """,
    )
    seen = []
    for _ in range(2):  # one retry: a CI run once saw both nodes end 0 with no restart at
        # all (not reproduced in 8 reruns); the retry keeps what the first run printed
        (code0, out0, err0), (code1, out1, err1) = _two_nodes(["--max-restarts", "1"], script)
        if (code0, code1) == (1, 3):
            break
        seen.append(f"codes {(code0, code1)}\n{out0}{out1}{err0}{err1}")
    assert (code0, code1) == (1, 3), "\n---\n".join(seen)
    line = (
        "node 1: worker 3 failed with exit code 3: restarting the workers on every node "
        "(restart 1 of 1); the store and the parameter servers keep running"
    )
    assert err0.count(line) == err1.count(line) == 1, err0 + err1
    failed = re.compile(r"worker 3 failed \(pid \d+\); no restarts left \(--max-restarts 1\)")
    assert re.search(r"\[kvsync-run\] job stopped by node 1: " + failed.pattern, err0), err0
    assert re.search(r"\[kvsync-run\] " + failed.pattern, err1), err1
    assert {"[worker 3] attempt 0 rank 3", "[worker 3] attempt 1 rank 3"} <= set(
        out1.splitlines()
    ), out1
    # the node whose workers had succeeded restarted them too
    assert [x for x in out0.splitlines() if "rank 0" in x] == [
        "[worker 0] attempt 0 rank 0",
        "[worker 0] attempt 1 rank 0",
    ], out0
