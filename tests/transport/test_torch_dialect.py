"""torch's own ``TCPStore`` client against kvsync's server (both protocols on one port).

Every Store method is run by torch's client against torch's own server and against kvsync's
(in a child process: some of torch's client calls hold the GIL while they block) and the
results must be identical. Skipped cleanly without torch.
"""

from __future__ import annotations

import datetime
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from transport_helpers import closed_by_peer, serve_subprocess, torch_bytes

from kvsync.protocol import torch_wire as tw
from kvsync.store.tcp import TCPStore

pytestmark = [pytest.mark.torch, pytest.mark.timeout(90)]
dist = pytest.importorskip("torch.distributed")

td = datetime.timedelta
HOST = "127.0.0.1"


@pytest.fixture
def kvsync_port() -> Iterator[int]:
    """A fresh server (for tests that count or list every key)."""
    with serve_subprocess("--host", HOST) as (_, _, port):
        yield port


@pytest.fixture(scope="module")
def shared_port() -> Iterator[int]:
    """One server for the tests that only touch keys of their own."""
    with serve_subprocess("--host", HOST) as (_, _, port):
        yield port


def _torch_client(port: int, timeout: float = 10.0, **kwargs: Any) -> Any:
    return dist.TCPStore(HOST, port, is_master=False, timeout=td(seconds=timeout), **kwargs)


def _every_method(s: Any) -> list[tuple[str, Any]]:
    """Run every Store method of torch's client ``s``; what each returned or raised."""
    ops: list[tuple[str, Callable[[], Any]]] = [
        ("set", lambda: s.set("a", "xy")),
        ("get", lambda: s.get("a")),
        ("add", lambda: s.add("n", 5)),
        ("add again", lambda: s.add("n", -2)),
        ("get counter", lambda: s.get("n")),
        ("compare_set hit", lambda: s.compare_set("a", "xy", "zz")),
        ("compare_set miss", lambda: s.compare_set("a", "xy", "no")),
        ("compare_set missing key", lambda: s.compare_set("m", "e", "d")),
        ("compare_set missing, empty expected", lambda: s.compare_set("m2", "", "d")),
        ("check some missing", lambda: s.check(["a", "nope"])),
        ("check all there", lambda: s.check(["a", "n"])),
        ("wait, satisfied", lambda: s.wait(["a", "n"])),
        ("wait, times out", lambda: s.wait(["nope"], td(seconds=0.2))),
        ("get after the timeout", lambda: s.get("a")),
        ("num_keys", lambda: s.num_keys()),
        ("delete_key", lambda: s.delete_key("m2")),
        ("delete_key missing", lambda: s.delete_key("m2")),
        ("multi_set", lambda: s.multi_set(["p", "q"], ["1", b"2"])),
        ("multi_get", lambda: s.multi_get(["p", "q", "a"])),
        ("append", lambda: s.append("p", "x")),
        ("append new key", lambda: s.append("fresh", "y")),
        ("get appended", lambda: s.multi_get(["p", "fresh"])),
        ("queue_push", lambda: s.queue_push("qq", "i1")),
        ("queue_push 2", lambda: s.queue_push("qq", b"i2")),
        ("queue_len", lambda: s.queue_len("qq")),
        ("queue_pop", lambda: s.queue_pop("qq")),
        ("queue_pop nonblocking", lambda: s.queue_pop("qq", False)),
        ("queue_pop nonblocking empty", lambda: s.queue_pop("qq", False)),
        ("queue_len empty", lambda: s.queue_len("qq")),
        ("list_keys", lambda: sorted(s.list_keys())),
        ("barrier of 1", lambda: s.barrier("bar", 1, td(seconds=5))),
        ("barrier counter", lambda: s.get("bar")),
        ("barrier of 3, times out", lambda: s.barrier("b3", 3, td(seconds=0.2))),
        ("barrier count kept", lambda: s.get("b3")),
        ("barrier of 3, second", lambda: s.barrier("b3", 3, td(seconds=0.2))),
        ("barrier of 3, third passes", lambda: s.barrier("b3", 3, td(seconds=5))),
        ("barrier passed stays passed", lambda: s.barrier("b3", 3, td(seconds=5))),
        ("set bytes", lambda: s.set("bin", bytes(range(256)))),
        ("get bytes", lambda: s.get("bin")),
        ("num_keys at the end", lambda: s.num_keys()),
        ("list_keys at the end", lambda: sorted(s.list_keys())),
    ]
    results = []
    for name, op in ops:
        try:
            got = op()
        except Exception as exc:  # the class is part of the behaviour compared
            got = type(exc).__name__
        results.append((name, got))
    return results


def test_torch_client_gets_the_same_results_from_kvsync_as_from_torch(kvsync_port: int) -> None:
    master = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False, timeout=td(seconds=10))
    theirs = _every_method(_torch_client(master.port, world_size=2))
    ours = _every_method(_torch_client(kvsync_port, world_size=2))  # world_size: adds init/
    assert ours == theirs
    assert ("wait, times out", "DistStoreError") in ours  # the run did time out, and went on
    assert ("queue_pop nonblocking empty", "QueueEmptyError") in ours


def test_a_torch_client_and_a_kvsync_client_share_keys(kvsync_port: int) -> None:
    t = _torch_client(kvsync_port, world_size=3)
    with TCPStore(HOST, kvsync_port, timeout=10) as k:
        t.set("from/torch", "1")
        k.set("from/kvsync", b"2")
        assert k.get("from/torch") == b"1" and t.get("from/kvsync") == b"2"
        assert [t.add("count", 1), k.add("count", 1), t.add("count", 1)] == [1, 2, 3]
        t.queue_push("jobs", "j1")
        assert k.queue_pop("jobs") == b"j1"
        k.queue_push("jobs", b"j2")
        assert t.queue_pop("jobs") == b"j2"
        assert k.get("__kvsync/torch/init/") == b"1"  # torch's worker counter, no "/"
        shared = ["count", "from/kvsync", "from/torch"]
        assert sorted(t.list_keys()) == shared  # torch's list_keys hides its init/ key
        assert sorted(k.list_keys()) == ["__kvsync/torch/init/", *shared]

        def later() -> None:
            time.sleep(0.3)
            k.set("late", b"v")
            k.add("meet", 1)

        thread = threading.Thread(target=later)
        thread.start()
        assert t.get("late") == b"v"  # torch's WAIT parked, answered by the kvsync set
        t.barrier("meet", 2, td(seconds=10))  # one torch and one kvsync arrival
        thread.join(10)


def test_a_wait_that_timed_out_leaves_the_connection_working(shared_port: int) -> None:
    t = _torch_client(shared_port)
    with TCPStore(HOST, shared_port, timeout=10) as k:
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(dist.DistStoreError, match="wait timeout"):
                t.wait(["never"], td(seconds=0.2))
            assert time.monotonic() - t0 < 5
            k.set("never2", b"x")  # nothing stale arrives for the canceled wait
            assert t.get("never2") == b"x" and t.add("c", 1) >= 1
        k.set("never", b"now")
        t.wait(["never"], td(seconds=5))


def _raw_torch(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(torch_bytes(tw.Validate(tw.MAGIC)))
    return sock


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\x00\x00",  # unknown query type
        b"\x01" + (1 << 60).to_bytes(8, "little"),  # a key of 2**60 bytes
        b"\x0b" + (1 << 62).to_bytes(8, "little"),  # a MULTI_SET of 2**62 pairs
        torch_bytes(tw.Add("/word", 1)),  # add to a non-integer
    ],
    ids=["unknown query", "huge key", "huge count", "refused add"],
)
def test_garbage_on_a_torch_connection_closes_only_that_connection(
    shared_port: int, garbage: bytes
) -> None:
    t = _torch_client(shared_port)
    with TCPStore(HOST, shared_port, timeout=10) as k:
        k.set("word", b"abc")
        bad = _raw_torch(shared_port)
        bad.sendall(garbage)
        assert closed_by_peer(bad)
        bad.close()
        t.set("still", "fine")
        assert k.get("still") == b"fine" and t.get("word") == b"abc"


def test_the_example_of_docs_torch_md_runs() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "torch.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    try:
        exec(compile(block, "docs/torch.md", "exec"), namespace)
    finally:  # a failing example must not leave its server running for later tests
        server = namespace.get("server")
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        if server is not None and not server.stdout.closed:
            server.stdout.close()
