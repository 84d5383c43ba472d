"""kvsync-run accepts torchrun's command line: spellings, value forms, output routing and
``--max-restarts`` (tested by killing a worker in the middle of dist_sync training)."""

from __future__ import annotations

import argparse
import os
import re
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
        (["--max-restarts", "1", "--nnodes", "2", "--master-port", "5"], "one node only"),
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
    import os, signal
    import numpy as np
    import kvsync.kv
    from kvsync.optimizer import SGD

    STEPS = 8
    restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    kv = kvsync.kv.create("dist_sync", timeout=30)
    if kv.rank == 0:
        kv.set_optimizer(SGD(learning_rate=0.5))  # each round: w -= 0.5 * (1 + 1)
    kv.barrier()
    kv.init(0, np.zeros(4))  # after a restart: adopts the servers' trained value
    w = kv.pull(0)
    start = int(round(-w[0]))  # rounds the servers completed
    print(f"restart {restart} rank {kv.rank} resumes at step {start}", flush=True)
    for step in range(start, STEPS):
        if restart == 0 and kv.rank == 1 and step == 4:
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
