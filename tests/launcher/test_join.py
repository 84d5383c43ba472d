"""Specification of how the launchers of a multi-node job wait for each other, and say so."""

from __future__ import annotations

import argparse
import socket
import threading

import pytest

from kvsync import env
from kvsync.errors import StoreTimeoutError
from kvsync.launcher.job_store import MAX_RESTARTS_KEY, JobStore
from kvsync.launcher.run import build_parser, child_specs, node_address
from kvsync.server import StoreServer
from kvsync.store.tcp import TCPStore

pytestmark = pytest.mark.timeout(20)


def _args(node_rank: int, port: int, *extra: str) -> argparse.Namespace:
    return build_parser().parse_args(
        ["--nnodes", "2", "--node-rank", str(node_rank), "--master-port", str(port), *extra, "t.py"]
    )


def _open(
    args: argparse.Namespace, said: list[str], timeout: float = 1.0, bind: str | None = None
) -> JobStore:
    return JobStore.open(
        args, env.read({}), said.append, bind=bind, join_timeout=timeout, notice=0.2
    )


def test_a_node_alone_says_every_few_seconds_how_many_joined_then_gives_up() -> None:
    said: list[str] = []
    with pytest.raises(StoreTimeoutError, match=r"1 of 2 nodes joined .*node rank\(s\) 1"):
        _open(_args(0, 0), said)
    assert said[0].startswith("store server listening on 127.0.0.1:")
    waiting = [s for s in said if "1 of 2 nodes joined after" in s]
    assert len(waiting) >= 3, said


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_a_node_says_while_it_waits_for_node_zeros_store() -> None:
    port = _free_port()
    said: list[str] = []
    with pytest.raises(StoreTimeoutError, match=f"node 0's job store at 127.0.0.1:{port}"):
        _open(_args(1, port), said)
    assert len([s for s in said if f"waiting for the job store at 127.0.0.1:{port}" in s]) >= 2


def test_nodes_go_on_once_all_joined_and_node_zero_binds_the_address_given() -> None:
    port = _free_port()
    said: list[list[str]] = [[], []]
    opened: list[JobStore] = []

    def node(rank: int) -> None:
        args = _args(rank, port, "--master-addr", "localhost")
        opened.append(_open(args, said[rank], 10, bind="127.0.0.1" if rank == 0 else None))

    threads = [threading.Thread(target=node, args=(r,)) for r in (1, 0)]  # 1 dials first
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    try:
        assert len(opened) == 2
        for rank in (0, 1):
            assert said[rank][-1] == f"all 2 nodes joined; this is node {rank}"
        assert said[0][0] == f"store server listening on 127.0.0.1:{port} (node 0 of 2)"
    finally:
        for store in opened:
            store.close()


def test_the_node_address_is_the_flag_then_the_variable_then_the_route_to_the_master() -> None:
    variable = env.read({"KVSYNC_NODE_ADDR": "10.9.9.9"})
    flagged = _args(1, 5, "--node-addr", "10.8.8.8")
    assert node_address(flagged, variable) == "10.8.8.8"
    assert node_address(_args(1, 5), variable) == "10.9.9.9"
    assert node_address(_args(1, 5), env.read({})) == "127.0.0.1"
    one_node = build_parser().parse_args(["t.py"])
    assert node_address(one_node, env.read({})) is None  # loopback, as before


def test_every_child_of_a_multi_node_job_gets_the_node_address() -> None:
    args = _args(1, 5, "--num-servers", "1", "--node-addr", "10.8.8.8")
    specs = child_specs(args, 5)
    assert [(s.role, s.env["KVSYNC_NODE_ADDR"]) for s in specs] == [
        ("server", "10.8.8.8"),
        ("worker", "10.8.8.8"),
    ]
    single = child_specs(build_parser().parse_args(["t.py"]), 5)
    assert all("KVSYNC_NODE_ADDR" not in s.env for s in single)


def test_a_node_whose_max_restarts_differs_from_the_first_nodes_is_refused() -> None:
    with StoreServer(port=0).start() as node0_store:  # node 0 joined with --max-restarts 2
        with TCPStore("127.0.0.1", node0_store.port, timeout=5) as node0:
            node0.set(MAX_RESTARTS_KEY, "2")
        said: list[str] = []
        with pytest.raises(ValueError) as refused:
            _open(_args(1, node0_store.port, "--max-restarts", "1"), said, 5)
    assert str(refused.value) == (
        "node 1 has --max-restarts 1 but another node of the job has 2: every node needs "
        "the same --max-restarts"
    )
