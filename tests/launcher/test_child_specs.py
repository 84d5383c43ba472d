"""Specification of what each child of kvsync-run runs and which variables it gets."""

from __future__ import annotations

import sys

from kvsync.launcher.run import SERVER_MODULE, build_parser, child_specs


def _specs(*argv: str, port: int = 6000) -> list:
    return child_specs(build_parser().parse_args(list(argv)), port)


def test_servers_come_first_with_dmlc_server_role_and_the_server_module() -> None:
    specs = _specs("--nproc-per-node", "2", "--num-servers", "2", "--server-setup",
                   "my.updaters", "train.py", "--epochs", "1")
    assert [(s.role, s.rank) for s in specs] == [
        ("server", 0), ("server", 1), ("worker", 0), ("worker", 1)]
    server = specs[0]
    assert list(server.argv) == [sys.executable, "-u", "-m", SERVER_MODULE]
    assert server.env["DMLC_ROLE"] == "server"
    assert server.env["KVSYNC_SERVER_SETUP"] == "my.updaters"
    assert server.env["DMLC_NUM_SERVER"] == "2" and server.env["DMLC_NUM_WORKER"] == "2"
    worker = specs[3]
    assert list(worker.argv) == [sys.executable, "-u", "train.py", "--epochs", "1"]
    assert worker.env["DMLC_ROLE"] == "worker"


def test_every_child_is_told_where_the_launchers_store_is() -> None:
    for spec in _specs("--nproc-per-node", "2", "--num-servers", "1", "t.py", port=6123):
        assert spec.env["KVSYNC_STORE_ADDR"] == "127.0.0.1"
        assert spec.env["KVSYNC_STORE_PORT"] == "6123"
        assert spec.env["MASTER_PORT"] == "6123"
        assert spec.env["DMLC_PS_ROOT_PORT"] == "6123"
        # torchrun's convention: MASTER_ADDR:MASTER_PORT is an agent store to join, not bind
        assert spec.env["TORCHELASTIC_USE_AGENT_STORE"] == "True"


def test_ranks_are_global_over_nodes_and_counts_cover_the_whole_job() -> None:
    specs = _specs("--nnodes", "3", "--node-rank", "2", "--master-addr", "10.1.2.3",
                   "--master-port", "7000", "--nproc-per-node", "4", "--num-servers", "2",
                   "-m", "pkg.train")
    workers = [s for s in specs if s.role == "worker"]
    servers = [s for s in specs if s.role == "server"]
    assert [s.env["RANK"] for s in workers] == ["8", "9", "10", "11"]
    assert [s.env["LOCAL_RANK"] for s in workers] == ["0", "1", "2", "3"]
    assert [s.env["RANK"] for s in servers] == ["4", "5"]
    for s in specs:
        assert s.env["WORLD_SIZE"] == "12" and s.env["DMLC_NUM_WORKER"] == "12"
        assert s.env["DMLC_NUM_SERVER"] == "6" and s.env["GROUP_RANK"] == "2"
        assert s.env["MASTER_ADDR"] == "10.1.2.3"
    assert list(workers[0].argv)[-2:] == ["-m", "pkg.train"]
    assert workers[0].env["LOCAL_WORLD_SIZE"] == "4"
    assert servers[0].env["LOCAL_WORLD_SIZE"] == "2"
