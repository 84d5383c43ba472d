"""Specification of the supervisor: prefixed output, failures, stopping, no orphans."""

from __future__ import annotations

import io
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from launcher_procs import alive, wait_dead

from kvsync.launcher.agent import ChildSpec, Supervisor
from kvsync.launcher.job_store import DONE_KEY, StoreCoordinator
from kvsync.launcher.output import OutputRouter
from kvsync.store import HashStore

pytestmark = pytest.mark.slow


def _spec(role: str, rank: int, code: str) -> ChildSpec:
    return ChildSpec(role, rank, [sys.executable, "-u", "-c", textwrap.dedent(code)], {})


def _supervisor(log_dir: Path | None = None, grace: float = 2.0):
    out, err = io.BytesIO(), io.BytesIO()
    sup = Supervisor(OutputRouter(out, err, log_dir), grace=grace, poll_interval=0.01)
    return sup, out, err


def _exit_when(path: Path, code: int) -> str:
    """A child program that exits with ``code`` once ``path`` exists (at most 10 s)."""
    return (
        f"import os, sys, time\nd = time.monotonic() + 10\n"
        f"while not os.path.exists({str(path)!r}) and time.monotonic() < d:\n"
        f"    time.sleep(0.01)\nsys.exit({code})\n"
    )


def _lines(stream: io.BytesIO) -> list[str]:
    return stream.getvalue().decode().splitlines()


def test_every_line_is_prefixed_with_role_and_rank_and_streams_stay_apart() -> None:
    sup, out, err = _supervisor()
    code = "import sys; print('a'); print('b', file=sys.stderr); print('c')"
    sup.start([_spec("worker", r, code) for r in range(3)])
    result = sup.supervise()
    assert result.exit_code == 0
    assert result.summary() == []
    for rank in range(3):
        mine = [line for line in _lines(out) if line.startswith(f"[worker {rank}] ")]
        assert mine == [f"[worker {rank}] a", f"[worker {rank}] c"]
    assert sorted(_lines(err)) == [f"[worker {r}] b" for r in range(3)]


def test_a_failing_worker_stops_the_others_and_gives_its_code_and_stderr_tail() -> None:
    sup, _, _ = _supervisor()
    sleeper = "import time; print('up'); time.sleep(30)"
    failer = (
        "import sys, time; time.sleep(0.2); print('boom at step 7', file=sys.stderr); sys.exit(3)"
    )
    sup.start(
        [_spec("worker", 0, sleeper), _spec("worker", 1, failer), _spec("server", 0, sleeper)]
    )
    started = time.monotonic()
    result = sup.supervise()
    assert time.monotonic() - started < 5.0
    assert result.exit_code == 3
    assert result.failed is not None
    assert (result.failed.spec.name, result.failed.returncode) == ("worker 1", 3)
    assert result.failed.stderr_tail == ("boom at step 7",)
    assert sorted(result.stopped) == ["server 0", "worker 0"]
    summary = "\n".join(result.summary())
    assert "worker 1 (pid" in summary and "exit code 3" in summary
    assert "boom at step 7" in summary
    assert not [p for p in sup.pids if alive(p)]


def test_a_worker_killed_by_a_signal_exits_the_job_with_128_plus_the_signal() -> None:
    sup, _, _ = _supervisor()
    sup.start(
        [
            _spec("worker", 0, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
            _spec("worker", 1, "import time; time.sleep(30)"),
        ]
    )
    result = sup.supervise()
    assert result.exit_code == 128 + signal.SIGKILL
    assert result.failed is not None and result.failed.describe() == "signal SIGKILL"
    assert not [p for p in sup.pids if alive(p)]


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    sup, out, _ = _supervisor(grace=0.5)
    ready = tmp_path / "ready"
    stubborn = f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        open({str(ready)!r}, "w").close()
        time.sleep(30)
    """
    sup.start([_spec("worker", 0, stubborn), _spec("worker", 1, _exit_when(ready, 2))])
    started = time.monotonic()
    result = sup.supervise()
    elapsed = time.monotonic() - started
    assert result.exit_code == 2
    assert 0.5 <= elapsed < 5.0  # SIGTERM was ignored: SIGKILL came after the grace
    assert b"[worker 0] ready" in out.getvalue()
    assert not [p for p in sup.pids if alive(p)]


def test_grandchildren_of_a_stopped_child_do_not_survive(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    parent = f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
        time.sleep(30)
    """
    sup, _, _ = _supervisor()
    sup.start([_spec("worker", 0, parent), _spec("worker", 1, _exit_when(pid_file, 1))])
    assert sup.supervise().exit_code == 1
    grandchild = int(pid_file.read_text())
    assert wait_dead([grandchild]) == []


def test_request_stop_stops_everything_with_128_plus_the_signal() -> None:
    sup, _, _ = _supervisor()
    sup.start([_spec("worker", r, "import time; time.sleep(30)") for r in range(2)])
    sup.request_stop(signal.SIGTERM)
    result = sup.supervise()
    assert result.exit_code == 128 + signal.SIGTERM
    assert "SIGTERM" in result.reason
    assert result.failed is None
    assert not [p for p in sup.pids if alive(p)]


def test_servers_are_stopped_once_every_worker_succeeded() -> None:
    sup, _, _ = _supervisor()
    sup.start(
        [_spec("server", 0, "import time; time.sleep(30)"), _spec("worker", 0, "print('done')")]
    )
    started = time.monotonic()
    result = sup.supervise()
    assert result.exit_code == 0
    assert time.monotonic() - started < 5.0
    assert not [p for p in sup.pids if alive(p)]


def test_log_dir_gets_each_childs_unprefixed_stdout_and_stderr(tmp_path: Path) -> None:
    sup, _, _ = _supervisor(log_dir=tmp_path / "logs")
    code = "import sys; print('out line'); print('err line', file=sys.stderr)"
    sup.start([_spec("worker", 0, code), _spec("worker", 1, code)])
    assert sup.supervise().exit_code == 0
    for name in ("worker_0", "worker_1"):
        assert (tmp_path / "logs" / f"{name}.stdout.log").read_text() == "out line\n"
        assert (tmp_path / "logs" / f"{name}.stderr.log").read_text() == "err line\n"


def test_start_failure_raises_oserror_and_stops_children_already_started() -> None:
    sup, _, _ = _supervisor()
    with pytest.raises(OSError):
        sup.start(
            [
                _spec("worker", 0, "import time; time.sleep(30)"),
                ChildSpec("worker", 1, ["/nonexistent/kvsync-no-such-program"], {}),
            ]
        )
    assert wait_dead(sup.pids) == []


# --- restarts coordinated through the job store (several nodes) ----------------------------


@pytest.fixture
def job_store() -> HashStore:
    """Stands in for node 0's job store, which every node's coordinator is a client of."""
    return HashStore(timeout=5)


def _coordinators(store: HashStore, nnodes: int) -> list[StoreCoordinator]:
    return [StoreCoordinator(store, nnodes, rank, interval=0.0) for rank in range(nnodes)]


def test_the_first_restart_request_of_a_group_wins_and_every_node_sees_it(
    job_store: HashStore,
) -> None:
    node0, node1 = _coordinators(job_store, 2)
    assert node0.restart_requested(1) is None
    node1.request_restart(1, "worker 3 failed with signal SIGKILL")
    node0.request_restart(1, "worker 0 failed with exit code 1")  # too late: changes nothing
    assert (
        node0.restart_requested(1)
        == node1.restart_requested(1)
        == ("node 1: worker 3 failed with signal SIGKILL")
    )
    assert node0.restart_requested(2) is None


def test_a_restart_waits_until_every_node_marked_its_workers_stopped(job_store: HashStore) -> None:
    node0, node1 = _coordinators(job_store, 2)
    node0.workers_stopped(1)
    assert node0.not_stopped(1) == node1.not_stopped(1) == [1]
    node1.workers_stopped(1)
    assert node0.not_stopped(1) == [] and node0.not_stopped(2) == [0, 1]


def test_done_counts_per_group_so_a_restart_needs_every_node_done_again(
    job_store: HashStore,
) -> None:
    node0, node1 = _coordinators(job_store, 2)
    node0.workers_done(0)
    assert not node0.job_done(0)
    node1.request_restart(1, "worker 3 failed with exit code 3")
    node1.workers_done(1)
    assert not node0.job_done(1)  # node 0's done of group 0 does not count for group 1
    node0.workers_done(1)
    assert node0.job_done(1) and node1.job_done(1)


def test_a_node_that_does_not_stop_its_workers_fails_the_restart_naming_it(
    job_store: HashStore,
) -> None:
    node0, node1 = _coordinators(job_store, 2)
    out, err = io.BytesIO(), io.BytesIO()
    said: list[str] = []
    sup = Supervisor(
        OutputRouter(out, err), grace=1.0, poll_interval=0.01, coordinator=node0,
        max_restarts=1, respawn=lambda n, why: [_spec("worker", 0, "pass")],
        restart_timeout=0.5, say=said.append,
    )  # fmt: skip
    sup.start([_spec("worker", 0, "import sys; sys.exit(4)")])
    result = sup.supervise()
    assert result.exit_code == 1 and sup.restarts == 1
    assert result.reason == "restart 1: node(s) 1 did not stop their workers within 0.5 s"
    assert node1.remote_failure() == "job stopped by node 0: " + result.reason


def test_a_restart_requested_by_another_node_restarts_workers_that_had_succeeded(
    job_store: HashStore,
) -> None:
    node0, node1 = _coordinators(job_store, 2)
    out, err = io.BytesIO(), io.BytesIO()
    groups: list[tuple[int, str]] = []

    def respawn(restart: int, why: str) -> list[ChildSpec]:
        groups.append((restart, why))
        node1.workers_stopped(restart)  # node 1 stopped its workers too
        node1.workers_done(restart)  # and its new group succeeded
        return [_spec("worker", 0, "print('group 1')")]

    sup = Supervisor(OutputRouter(out, err), grace=1.0, poll_interval=0.01, coordinator=node0,
                     max_restarts=1, respawn=respawn)  # fmt: skip
    sup.start([_spec("worker", 0, "print('group 0')")])

    def node1_fails_once_node0_is_done() -> None:
        deadline = time.monotonic() + 10
        while job_store.add(DONE_KEY.format(0), 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        node1.request_restart(1, "worker 1 failed with exit code 2")

    other = threading.Thread(target=node1_fails_once_node0_is_done)
    other.start()
    result = sup.supervise()
    other.join(10)
    assert result.exit_code == 0 and groups == [(1, "node 1: worker 1 failed with exit code 2")]
    assert _lines(out) == ["[worker 0] group 0", "[worker 0] group 1"]
