"""Specification of how TCPStore() finds kvsync's store, including under torchrun."""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from kvsync import env
from kvsync.errors import StoreTimeoutError
from kvsync.store.address import StoreAddress, agent_store_key, resolve_store_address


def _resolve(**variables: str) -> StoreAddress:
    return resolve_store_address(env.read(variables), timeout=5)


def test_a_launcher_hosted_store_wins_over_master_addr_and_torchrun() -> None:
    got = _resolve(KVSYNC_STORE_ADDR="10.0.0.2", KVSYNC_STORE_PORT="7001", RANK="0",
                   MASTER_ADDR="10.0.0.1", MASTER_PORT="29500",
                   TORCHELASTIC_USE_AGENT_STORE="True")
    assert got == StoreAddress("10.0.0.2", 7001, False)


def test_env_init_makes_rank_zero_the_master_like_torch() -> None:
    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert _resolve(**base, RANK="0").is_master
    assert not _resolve(**base, RANK="3").is_master
    assert _resolve(**base).is_master  # a lone process without RANK


def test_no_environment_means_an_embedded_store_on_a_free_port() -> None:
    assert _resolve() == StoreAddress("127.0.0.1", 0, True)


def test_torchrun_variables_without_master_address_are_refused() -> None:
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        _resolve(TORCHELASTIC_USE_AGENT_STORE="True", RANK="0")


@pytest.fixture
def agent_store() -> object:
    dist = pytest.importorskip("torch.distributed")
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=10))


def _torchrun_env(port: int, rank: int) -> dict[str, str]:
    return {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "RANK": str(rank), "TORCHELASTIC_RESTART_COUNT": "2"}


@pytest.mark.torch
def test_under_torchrun_rank_zero_publishes_a_listening_port_the_others_read(
    agent_store: object
) -> None:
    port = agent_store.port  # type: ignore[attr-defined]
    seen: list[StoreAddress] = []
    reader = threading.Thread(target=lambda: seen.append(
        resolve_store_address(env.read(_torchrun_env(port, 1)), timeout=10)))
    reader.start()
    master = resolve_store_address(env.read(_torchrun_env(port, 0)), timeout=10)
    reader.join(10)
    assert master.is_master and master.listen_fd is not None
    assert master.host == "127.0.0.1" and master.port != port
    assert seen == [StoreAddress("127.0.0.1", master.port, False)]
    listener = socket.socket(fileno=master.listen_fd)
    try:
        with socket.create_connection(("127.0.0.1", master.port), timeout=5):
            pass  # the published port accepts connections before anyone serves it
    finally:
        listener.close()
    key = agent_store_key(2, 0)
    assert agent_store.get(key) == f"127.0.0.1:{master.port}".encode()  # type: ignore[attr-defined]


@pytest.mark.torch
def test_under_torchrun_a_rank_waits_for_rank_zero_up_to_the_timeout(
    agent_store: object
) -> None:
    port = agent_store.port  # type: ignore[attr-defined]
    with pytest.raises(StoreTimeoutError, match="kvsync/store/2/"):
        resolve_store_address(env.read(_torchrun_env(port, 5)), timeout=0.5)


TORCHRUN_SCRIPT = """
    import sys

    from kvsync import env
    from kvsync.store.tcp import TCPStore

    e = env.read()
    with TCPStore(timeout=30) as store:  # kvsync's own store, not torch's agent store
        store.add("ranks", 1)
        store.barrier("met", e.world_size)
        total = int(store.get("ranks"))
        # One write per line: with PYTHONUNBUFFERED print() writes the text and the newline
        # separately, and the two ranks' lines (released together) could interleave.
        sys.stdout.write(f"rank {e.rank} sees {total} ranks on port {store.port}\\n")
        sys.stdout.flush()
        # Under torchrun rank 0 hosts the store: it must be the last to leave.
        if e.rank == 0:
            store.wait([f"left/{r}" for r in range(1, e.world_size)])
        else:
            store.set(f"left/{e.rank}", "1")
"""


@pytest.mark.torch
@pytest.mark.slow
def test_a_kvsync_script_runs_under_torchrun(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed")
    torchrun = shutil.which("torchrun")
    argv = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    done = subprocess.run([*argv, "--standalone", "--nproc-per-node", "2", str(script)],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = sorted(line for line in done.stdout.splitlines() if " sees " in line)
    assert [line.split(" on port ")[0] for line in lines] == [
        "rank 0 sees 2 ranks", "rank 1 sees 2 ranks"]
    assert len({line.split(" on port ")[1] for line in lines}) == 1
