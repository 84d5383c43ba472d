"""Specification of how TCPStore() finds its store server, including under torchrun."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvsync import env
from kvsync.store.address import StoreAddress, resolve_store_address


def _resolve(**variables: str) -> StoreAddress:
    return resolve_store_address(env.read(variables))


def test_a_launcher_hosted_store_wins_over_master_addr_and_torchrun() -> None:
    got = _resolve(
        KVSYNC_STORE_ADDR="10.0.0.2",
        KVSYNC_STORE_PORT="7001",
        RANK="0",
        MASTER_ADDR="10.0.0.1",
        MASTER_PORT="29500",
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    assert got == StoreAddress("10.0.0.2", 7001, False)


def test_env_init_makes_rank_zero_the_master_like_torch() -> None:
    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert _resolve(**base, RANK="0").is_master
    assert not _resolve(**base, RANK="3").is_master
    assert _resolve(**base).is_master  # a lone process without RANK


def test_no_environment_means_an_embedded_store_on_a_free_port() -> None:
    assert _resolve() == StoreAddress("127.0.0.1", 0, True)


def test_under_torchrun_every_rank_is_a_torch_client_of_the_agent_store() -> None:
    for rank in ("0", "1"):
        got = _resolve(
            TORCHELASTIC_USE_AGENT_STORE="True",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT="29500",
            RANK=rank,
        )
        assert got == StoreAddress("127.0.0.1", 29500, False)


def test_torchrun_variables_without_master_address_are_refused() -> None:
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        _resolve(TORCHELASTIC_USE_AGENT_STORE="True", RANK="0")


# The script of issue 13: under torchrun, rank 1 used to lose its store when rank 0 (which
# hosted it) finished first. Here rank 0 leaves at once, and rank 1 goes on using the store
# only once rank 0's process has exited.
ISSUE_SCRIPT = """
    import os, sys, kvsync
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = kvsync.TCPStore(timeout=30)
    assert store.dialect == "torch" and not store.is_master, (store.dialect, store.is_master)
    store.set(f"hello/{rank}", str(rank)); store.add("arrived", 1)
    store.wait([f"hello/{r}" for r in range(world)])
    if rank == 0:
        store.set("pid/0", str(os.getpid()))
        os._exit(0)  # first out, without even closing the store
    store.wait(["pid/0"])
    stat = f"/proc/{int(store.get('pid/0'))}/stat"
    for _ in range(1000):  # until rank 0 has exited (gone, or a zombie torchrun has not reaped)
        try:
            with open(stat) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        import time; time.sleep(0.01)
    else:
        raise SystemExit("rank 0 did not exit")
    values = sorted(int(store.get(f"hello/{r}")) for r in range(world))
    store.barrier("end", world - 1)
    sys.stdout.write(f"rank {rank} read {values}\\n")
"""


# torchrun 20 times in one process: torchrun's entry point (torch.distributed.run.main) is
# imported once, and each run still has its own agent, rendezvous, agent store and two fresh
# rank processes. (A torchrun process per run spent most of its time importing torch: ~190 s
# for the 20 runs on the shared machine.)
TORCHRUN_20_TIMES = """
    import sys
    from torch.distributed.run import main
    for run in range(20):
        print(f"--- run {run}", flush=True)
        main(["--standalone", "--nproc-per-node", "2", sys.argv[1]])  # raises if a rank fails
"""


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.timeout(280)
def test_the_issue_script_runs_under_torchrun_with_rank_zero_leaving_first_20_times(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch.distributed")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(ISSUE_SCRIPT))
    driver = tmp_path / "torchrun_20_times.py"
    driver.write_text(textwrap.dedent(TORCHRUN_20_TIMES))
    done = subprocess.run([sys.executable, str(driver), str(script)], capture_output=True,
                          text=True, timeout=260)  # fmt: skip
    runs = done.stdout.split("--- run ")[1:]
    assert done.returncode == 0, f"run {len(runs) - 1}: {done.stdout}{done.stderr}"
    assert len(runs) == 20, done.stdout + done.stderr
    for run, out in enumerate(runs):
        assert "rank 1 read [0, 1]" in out, f"run {run}: {out}{done.stderr}"
