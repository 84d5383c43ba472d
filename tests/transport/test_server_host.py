"""Specification of where a master's server runs (thread or child process) and how it ends.

Masters run in real subprocesses (``MASTER`` below); the test process is the other rank.
Every process is checked and, if need be, ended by its PID (the child server's command line
is checked first, so a reused PID is never touched).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from transport_helpers import child_env, wait_until

from kvsync import env
from kvsync.errors import StoreConnectionError
from kvsync.server.host import ChildHost, host_server
from kvsync.store.tcp import TCPStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

#: A master rank: hosts the store, says where, waits for the test's client, then ends by
#: ``ENDING``: "kill" (sleeps until SIGKILLed), "exit" (returns without closing the store)
#: or "drop" (drops the store without closing it, as a ``main()`` that returns does, and
#: then exits).
#: With "fork-kill" it first forks a sleeper (which holds every descriptor it has, the
#: child server's control pipe too) and prints its PID on a second line.
MASTER = """
import os, sys, time
from kvsync.store.tcp import TCPStore
placement, ending = sys.argv[1], sys.argv[2]
store = TCPStore("127.0.0.1", 0, is_master=True, timeout=30,
                 server=None if placement == "env" else placement)
print(store.port, getattr(store._server, "pid", 0), store.server_placement, flush=True)
if ending == "fork-kill":
    sleeper = os.fork()
    if sleeper == 0:
        time.sleep(30)
        os._exit(0)
    print(sleeper, flush=True)
store.wait(["go"])
store.set("master/exiting", "1")
if ending.endswith("kill"):
    time.sleep(60)
if ending == "drop":
    del store
    print("dropped", flush=True)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) kvsync child server process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"kvsync.server.host" in cmdline


def children() -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            listed = (task / "children").read_text()
        except FileNotFoundError:  # the thread ended since the listing (another test's)
            continue
        out.update(int(p) for p in listed.split())
    return out


@contextmanager
def master_process(
    tmp_path: Path, placement: str, ending: str, **extra_env: str
) -> Iterator[tuple[subprocess.Popen[str], int, int, str, Path]]:
    """Yield (master process, port, child server PID or 0, placement, its stderr file)."""
    log = tmp_path / "master.stderr"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", MASTER, placement, ending], stdout=subprocess.PIPE,
            stderr=stderr, text=True, env=child_env(**extra_env),
        )  # fmt: skip
    child = 0
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert len(line) == 3, f"master did not start: {log.read_text()}"
        port, child, where = int(line[0]), int(line[1]), line[2]
        yield proc, port, child, where, log
    finally:
        if proc.poll() is None:
            proc.kill()  # by PID: the master we started
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        if child and running(child):
            os.kill(child, signal.SIGKILL)  # its server, started by our master


def master_ending(port: int) -> TCPStore:
    """A client of the master's store, once the master reached its ``ENDING``."""
    client = TCPStore("127.0.0.1", port, timeout=10)
    client.set("go", "1")
    client.wait(["master/exiting"])
    return client


def do_work(store: TCPStore, n: int, key: str = "work") -> int:
    count = 0
    for _ in range(n):
        count = store.add(key, 1)
        time.sleep(0.02)
    return count


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (env.KVSYNC_STORE_SERVER, env.KVSYNC_STORE_EXIT_GRACE, "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_bind_error_is_raised_in_the_parent_and_starts_no_child(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = children()
        with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port}"):
            TCPStore("127.0.0.1", port, is_master=True, server="process", timeout=5)
        assert children() == before


def test_a_child_that_cannot_serve_is_reported_naming_it_and_its_exit_code(
    capfd: pytest.CaptureFixture[str],
) -> None:
    read_end, write_end = os.pipe()  # not a socket: the child's server fails to start
    os.close(write_end)
    with pytest.raises(StoreConnectionError, match=r"127.0.0.1:1 exited with code 1 before"):
        ChildHost(read_end, "127.0.0.1", 1, grace=1.0)
    assert "Socket operation on non-socket" in capfd.readouterr().err


def test_close_stops_the_child_server_and_its_clients_lose_it(
    clean_env: pytest.MonkeyPatch,
) -> None:
    master = TCPStore("127.0.0.1", 0, is_master=True, server="process", timeout=10)
    pid = master._server.pid  # type: ignore[union-attr]
    assert master.server_placement == "process" and pid in children() and running(pid)
    client = TCPStore("127.0.0.1", master.port, timeout=5)
    client.set("k", "v")
    assert master.get("k") == b"v"
    master.close()
    assert not running(pid) and pid not in children()  # close waits for it
    with pytest.raises(ConnectionError):
        client.get("k")
    client.close()


@pytest.mark.parametrize("ending", ["kill", "exit"])
def test_a_child_server_serves_its_clients_after_the_master_dies_then_exits(
    tmp_path: Path, ending: str
) -> None:
    with master_process(tmp_path, "process", ending) as (proc, port, child, where, log):
        assert where == "process" and running(child)
        last = TCPStore("127.0.0.1", port, timeout=10)
        first = master_ending(port)
        if ending == "kill":
            os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == (-signal.SIGKILL if ending == "kill" else 0)
        assert do_work(first, 10) == 10  # the master is gone; the clients finish their work
        first.close()
        assert do_work(last, 10) == 20 and running(child)  # one client left: still serving
        last.close()
        assert wait_until(lambda: not running(child), timeout=10)
        text = log.read_text()
        assert "client(s) still connected" in text and "last client disconnected" in text


def test_a_child_server_notices_its_master_died_when_a_fork_holds_its_control_pipe(
    tmp_path: Path,
) -> None:
    # The fork also holds the master's own connection, so the child serves it the grace.
    grace = {env.KVSYNC_STORE_EXIT_GRACE: "2"}
    with master_process(tmp_path, "process", "fork-kill", **grace) as (proc, port, child, _, log):
        assert proc.stdout is not None
        sleeper = int(proc.stdout.readline())
        try:
            with master_ending(port) as client:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                assert do_work(client, 5) == 5 and running(child)
            assert wait_until(lambda: not running(child), timeout=10)  # re-parented: noticed
            assert f"of exited process {proc.pid}" in log.read_text()
        finally:
            os.kill(sleeper, signal.SIGKILL)  # the master's fork, by PID


@pytest.mark.parametrize("placement", ["thread", "process"])
def test_a_forked_copy_of_a_hosted_server_closing_does_not_stop_it(placement: str) -> None:
    server = host_server("127.0.0.1", 0, placement=placement, grace=5.0)
    try:
        fork = os.fork()
        if fork == 0:  # pragma: no cover - the forked copy
            try:
                server.close()
            finally:
                os._exit(0)
        os.waitpid(fork, 0)
        with TCPStore("127.0.0.1", server.port, timeout=5) as client:
            client.set("k", "v")
            assert client.get("k") == b"v"
    finally:
        server.close()


@pytest.mark.parametrize("ending", ["exit", "drop"])
def test_a_thread_master_that_exits_serves_a_client_mid_work_then_exits(
    tmp_path: Path, ending: str
) -> None:
    with master_process(tmp_path, "thread", ending) as (proc, port, child, where, log):
        assert (where, child) == ("thread", 0)
        client = master_ending(port)  # the master's script ends right after this
        if ending == "drop":
            assert proc.stdout is not None and proc.stdout.readline() == "dropped\n"
        assert do_work(client, 25) == 25
        assert proc.poll() is None  # still serving us: it waits for this client
        client.close()
        assert proc.wait(timeout=10) == 0
        text = log.read_text()
        assert "still connected" in text and "last client disconnected" in text


@pytest.mark.parametrize(("placement", "ending"), [("thread", "exit"), ("process", "kill")])
def test_the_grace_period_is_bounded_when_a_client_never_leaves(
    tmp_path: Path, placement: str, ending: str
) -> None:
    grace = {env.KVSYNC_STORE_EXIT_GRACE: "1"}
    with master_process(tmp_path, placement, ending, **grace) as (proc, port, child, _, log):
        client = master_ending(port)
        start = time.monotonic()
        if ending == "kill":
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        pid = child or proc.pid
        assert wait_until(lambda: not running(pid) and proc.poll() is not None, timeout=10)
        assert time.monotonic() - start >= 0.9  # it did serve the grace period
        with pytest.raises(ConnectionError):
            client.get("go")
        client.close()
        assert "grace period of 1 s over; closing 1 connection(s)" in log.read_text()


def test_the_environment_variable_chooses_where_the_server_runs(
    clean_env: pytest.MonkeyPatch,
) -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=10) as store:
        assert store.server_placement == "thread"
    clean_env.setenv(env.KVSYNC_STORE_SERVER, "Process")
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=10) as store:
        assert store.server_placement == "process"
        pid = store._server.pid  # type: ignore[union-attr]
        assert pid in children() and running(pid)
        store.set("k", "v")
        assert store.get("k") == b"v"
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=10, server="thread") as store:
        assert store.server_placement == "thread"  # the argument wins over the variable
    clean_env.setenv(env.KVSYNC_STORE_SERVER, "fork")
    with pytest.raises(ValueError, match="KVSYNC_STORE_SERVER='fork'"):
        TCPStore("127.0.0.1", 0, is_master=True, timeout=10)
    with pytest.raises(ValueError, match="server must be one of"):
        TCPStore("127.0.0.1", 0, is_master=True, timeout=10, server="fork")


def test_the_environment_variable_chooses_in_a_master_process_too(tmp_path: Path) -> None:
    setting = {env.KVSYNC_STORE_SERVER: "process"}
    with master_process(tmp_path, "env", "exit", **setting) as (proc, port, child, where, _):
        assert where == "process" and child not in (0, proc.pid) and running(child)
        master_ending(port).close()
        assert proc.wait(timeout=10) == 0
        assert wait_until(lambda: not running(child), timeout=10)
