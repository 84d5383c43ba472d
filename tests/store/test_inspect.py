"""``kvsync inspect``: the key table of a store, locally and against a real server."""

from __future__ import annotations

import argparse

import pytest

from kvsync.store import HashStore
from kvsync.store.inspect import add_arguments, describe, run


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
    pytest.importorskip("kvsync.store.tcp", reason="TCPStore comes from the transport branch")
    from kvsync.store.tcp import TCPStore

    from kvsync.server import StoreServer  # type: ignore[attr-defined]

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
    pytest.importorskip("kvsync.store.tcp", reason="TCPStore comes from the transport branch")
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run(parse(["--port", str(port), "--timeout", "0.5"])) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
