"""``kvsync inspect``: the key table of a store, locally and against a real server."""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from kvsync.server import StoreServer
from kvsync.store import HashStore
from kvsync.store.inspect import add_arguments, describe, run
from kvsync.store.tcp import TCPStore


def test_describe_lists_sorted_keys_only_by_default() -> None:
    s = HashStore()
    s.multi_set(["b", "a"], ["1", "2"])
    assert describe(s).splitlines() == ["key", "---", "a", "b"]


def test_describe_with_values_shows_kind_size_and_truncated_preview() -> None:
    s = HashStore()
    s.set("bin", b"\xff\x00")
    s.set("long", "x" * 100)
    s.queue_push("q", "1")
    s.queue_push("q", "2")
    lines = describe(s, values=True).splitlines()
    assert lines[0].split() == ["key", "kind", "size", "preview"]
    assert lines[2].split() == ["bin", "value", "2", "B", "b'\\xff\\x00'"]
    assert lines[3].startswith("long") and lines[3].endswith("...") and "100 B" in lines[3]
    assert lines[4].split() == ["q", "queue", "2", "(2", "items)"]


def test_describe_filters_by_prefix() -> None:
    s = HashStore()
    s.multi_set(["job/a", "jobs/b", "other"], ["1", "2", "3"])
    assert describe(s, prefix="job").splitlines()[2:] == ["job/a"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_inspect_reads_a_running_server(capsys: pytest.CaptureFixture[str]) -> None:
    from kvsync.server import StoreServer
    from kvsync.store.tcp import TCPStore

    with StoreServer(host="127.0.0.1", port=0).start() as server:
        with TCPStore("127.0.0.1", server.port, timeout=10) as client:
            client.set("run/addr", "10.0.0.1:29500")
            client.queue_push("run/jobs", "j1")
            client.set("elsewhere", "x")
        assert run(parse(["--port", str(server.port), "--prefix", "run", "--values"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["run/addr", "value", "14", "B", "'10.0.0.1:29500'"]
    assert lines[3].split() == ["run/jobs", "queue", "1", "(1", "item)"]
    assert len(lines) == 4


def test_inspect_of_an_unreachable_port_fails_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run(parse(["--port", str(port), "--timeout", "0.5"])) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


# --- stats, waiters, rounds (issue 14) --------------------------------------------------


def _json_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert run(parse([*argv, "--json"])) == 0
    return json.loads(capsys.readouterr().out)


def test_inspect_stats_counts_connections_requests_and_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with StoreServer(port=0).start() as server:
        with TCPStore("127.0.0.1", server.port, timeout=10) as store:
            store.set("a", "1")
            store.get("a")
            store.get("a")
            report = _json_out(capsys, ["stats", "--port", str(server.port)])
            assert report["connections"] == 2  # the store's and inspect's own
            assert report["requests"]["Get"] == 2 and report["requests"]["Set"] == 1
            assert report["bytes_in"] > 0 and report["bytes_out"] > 0
            assert report["pending_bytes"] == 0 and report["uptime_s"] >= 0
            assert run(parse(["stats", "--port", str(server.port)])) == 0
    table = capsys.readouterr().out
    assert "connections" in table and "half-received frames" in table
    assert [line.split() for line in table.splitlines() if line.startswith("Get")] == [["Get", "2"]]


def test_inspect_waiters_names_the_keys_the_wait_time_and_the_rank(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with StoreServer(port=0).start() as server:
        monkeypatch.setenv("RANK", "3")  # the waiting store tells the server its rank
        waiter = TCPStore("127.0.0.1", server.port, timeout=10)
        monkeypatch.delenv("RANK")
        thread = threading.Thread(target=lambda: waiter.wait(["ready", "go"], timeout=10))
        thread.start()
        with TCPStore("127.0.0.1", server.port, timeout=10) as other:
            other.set("ready", "1")
            found: list[Any] = []
            for _ in range(200):  # until the wait is parked (bounded: 2 s)
                found = _json_out(capsys, ["waiters", "--port", str(server.port)])
                if found:
                    break
                time.sleep(0.01)
            [w] = found
            assert (w["op"], w["keys"], w["rank"], w["timeout_s"]) == ("wait", ["go"], 3, 10.0)
            assert w["peer"].startswith("127.0.0.1:") and w["waited_s"] >= 0
            assert run(parse(["waiters", "--port", str(server.port)])) == 0
            line = capsys.readouterr().out.splitlines()[2].split()
            assert line[2:5] == ["3", "wait", "go"]
            other.set("go", "1")
        thread.join(timeout=10)
        waiter.close()
        assert _json_out(capsys, ["waiters", "--port", str(server.port)]) == []


def test_inspect_reads_master_addr_and_port_when_no_address_is_given(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with StoreServer(port=0).start() as server:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(server.port))
        assert _json_out(capsys, ["stats"])["server"] == f"127.0.0.1:{server.port}"
        monkeypatch.setenv("KVSYNC_STORE_PORT", "1")  # kvsync-run's variable wins
        assert run(parse(["stats", "--timeout", "0.3"])) == 1
        assert "127.0.0.1:1" in capsys.readouterr().err


def test_inspect_with_a_wrong_secret_fails_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with StoreServer(port=0, secret="right").start() as server:
        monkeypatch.setenv("KVSYNC_SECRET", "wrong")
        for what in ("stats", "keys"):
            assert run(parse([what, "--port", str(server.port)])) == 1
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("kvsync inspect: error: cannot inspect")
            assert "secret" in err


def test_inspect_without_any_address_says_what_to_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "KVSYNC_STORE_ADDR", "KVSYNC_STORE_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert run(parse(["stats"])) == 1
    assert "MASTER_ADDR/MASTER_PORT" in capsys.readouterr().err


def test_inspect_rounds_shows_who_pushed_and_who_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kvsync.client import Client
    from kvsync.launcher.ps_server import make_logic
    from kvsync.protocol import ps_messages as m

    with (
        StoreServer(port=0).start() as store_server,
        StoreServer(port=0, logic=make_logic(0)).start() as ps,
    ):
        with TCPStore("127.0.0.1", store_server.port, timeout=10) as store:
            store.set("kvsync/ps/server/0", f"127.0.0.1:{ps.port}")
        with Client("127.0.0.1", ps.port, timeout=10) as worker:
            worker.call(m.PSHello(rank=0, num_workers=2, sync=True))
            worker.call(m.PSInit(keys=("i3",), values=(np.zeros(4),)))
            push = m.PSPush(keys=("i3",), values=(np.ones(4),), offsets=(0,), counts=(4,),
                            compressed=False)  # fmt: skip
            worker.call(push)
            pull = worker.submit(m.PSPull(keys=("i3",), offsets=(0,), counts=(4,), timeout_ms=2000))
            argv = ["rounds", "--port", str(store_server.port)]
            [server] = _json_out(capsys, argv)
            assert server["rounds"] == [
                {"key": "3", "round": 0, "pushed": [0], "partial": [], "missing": [1]}
            ]
            assert server["parked"] == [{"kind": "pull", "rank": 0, "keys": ["3"]}]
            assert run(parse(argv)) == 0
            row = capsys.readouterr().out.splitlines()[2].split()
            assert row[:5] == ["0", "3", "0", "0", "1"] and "(pull)" in row[-1]
            with pytest.raises(TimeoutError):
                worker.result(pull, timeout=10)  # rank 1 never pushes
    assert run(parse(["rounds", "--port", str(store_server.port), "--timeout", "0.3"])) == 1
