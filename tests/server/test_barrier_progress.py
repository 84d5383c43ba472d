"""A store barrier's "still waiting" line names the ranks that have not arrived (issue 17).

Real processes: each rank is a ``TCPStore`` client with its own ``RANK``, talking to a real
server on 127.0.0.1, so the rank travels the way it does in a job.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from kvsync.server.loop import StoreServer
from kvsync.server.state import StoreState

_RANK = """
import sys
from kvsync import TCPStore
with TCPStore("127.0.0.1", int(sys.argv[1]), timeout=30) as store:
    store.barrier("ready", 8, timeout=30)
"""
_LINE = "ranks reached barrier 'ready'"


def _start(port: int, ranks: list[int], with_rank: bool = True) -> list[subprocess.Popen[bytes]]:
    procs = []
    for r in ranks:
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        if with_rank:
            env["RANK"] = str(r)
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK, str(port)], env=env))
    return procs


def _line_once(
    caplog: pytest.LogCaptureFixture,
    prefix: str,
    procs: list[subprocess.Popen[bytes]],
    timeout: float = 30.0,
) -> str:
    """The first progress line about barrier 'ready' that starts its count with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = [p.returncode for p in procs if p.poll() is not None]
        assert not ended, f"a rank ended before the barrier was complete: {ended}"
        for r in caplog.records:
            text = r.getMessage()
            if _LINE in text and text.split("longest waiting: ")[-1].startswith(prefix):
                return text
        time.sleep(0.05)
    seen = [r.getMessage() for r in caplog.records]
    raise AssertionError(f"no progress line with {prefix!r} within {timeout} s: {seen}")


def _finish(procs: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """Each rank's exit code; a rank still running after 30 s is killed (``None``)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    codes = [p.poll() for p in procs]
    for p in procs:
        if p.returncode is None:
            p.kill()
            p.wait(timeout=10)
    return codes


@pytest.mark.timeout(90)
def test_barrier_progress_line_names_the_missing_ranks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kvsync.server.state")
    with StoreServer(port=0, logic=StoreState(progress_seconds=0.2)).start() as server:
        procs = _start(server.port, [0, 1, 2, 4, 6, 7])
        try:
            line = _line_once(caplog, "6/8 ", procs)
            assert line.endswith("; missing ranks 3, 5"), line
            procs += _start(server.port, [3, 5])  # the missing ones come: everyone passes
        finally:
            codes = _finish(procs)
    assert codes == [0] * 8


@pytest.mark.timeout(90)
def test_barrier_progress_line_says_ranks_unknown_without_rank(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kvsync.server.state")
    with StoreServer(port=0, logic=StoreState(progress_seconds=0.2)).start() as server:
        procs = _start(server.port, [0], with_rank=False) + _start(server.port, [1])
        try:
            line = _line_once(caplog, "2/8 ", procs)
            assert line.endswith("; ranks unknown"), line
            procs += _start(server.port, [2, 3, 4, 5, 6, 7])
        finally:
            codes = _finish(procs)
    assert codes == [0] * 8
