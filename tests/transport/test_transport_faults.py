"""Failure paths run deterministically: a seeded proxy drops, delays or cuts request frames.

For each seed the proxy's plan fixes which request frame suffers which fault, so every run
of a seed takes the same failure paths. Each outcome is then what a client and the server
must do: a dropped request times out on the client's deadline (and the connection still
works), a delayed one succeeds, a cut one fails at once with a connection error while the
server forgets the half frame (its memory reservation back to zero) and serves everyone
else. Timing bounds carry slack for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import time

import pytest
from fault_proxy import Fault, FaultProxy, seeded_plan

from kvsync.client import Client
from kvsync.errors import StoreConnectionError, StoreTimeoutError
from kvsync.protocol import messages as m
from kvsync.server import StoreServer

TIMEOUT = 1.0  # the client's reply timeout through the proxy
WEIGHTS = {Fault.PASS: 5, Fault.DROP: 2, Fault.DELAY: 2, Fault.CUT: 2}
STEPS = 12


def _inspect(direct: Client) -> dict[str, object]:
    reply = direct.call(m.Inspect())
    assert isinstance(reply, m.ValueReply)
    report: dict[str, object] = json.loads(bytes(reply.value))
    return report


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(4))
def test_dropped_delayed_and_cut_frames_take_their_failure_paths(seed: int) -> None:
    plan = seeded_plan(seed, WEIGHTS)
    with (
        StoreServer(port=0).start() as server,
        Client("127.0.0.1", server.port, timeout=10) as direct,
    ):
        proxy = FaultProxy(server.port, plan)
        try:
            client = Client("127.0.0.1", proxy.port, timeout=TIMEOUT)
            stored: set[str] = set()
            for step in range(STEPS):
                key = f"k{step}"
                value = bytes(100_000) if step % 3 == 0 else b"v"  # cuts land in payloads too
                fault = plan(step)
                start = time.monotonic()
                if fault in (Fault.PASS, Fault.DELAY):
                    assert client.call(m.Set(key, value)) == m.OkReply()
                    stored.add(key)
                elif fault is Fault.DROP:
                    with pytest.raises(StoreTimeoutError):
                        client.call(m.Set(key, value))
                    took = time.monotonic() - start
                    assert TIMEOUT <= took < TIMEOUT + 1.0, took  # its own deadline, not more
                else:  # CUT: the connection is gone at once, the server drops the half frame
                    with pytest.raises(StoreConnectionError):
                        client.call(m.Set(key, value))
                    assert time.monotonic() - start < TIMEOUT  # not a timeout: the close
                    client.close()
                    deadline = time.monotonic() + 5
                    while _inspect(direct)["connections"] != 1 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    report = _inspect(direct)
                    assert report["connections"] == 1 and report["pending_bytes"] == 0
                    client = Client("127.0.0.1", proxy.port, timeout=TIMEOUT)
            client.close()
            assert proxy.applied[:STEPS] == [plan(i) for i in range(STEPS)]
            reply = direct.call(m.ListKeys())
            assert isinstance(reply, m.KeysReply) and set(reply.keys) == stored
        finally:
            proxy.close()


def test_the_seeded_plans_cover_every_fault() -> None:
    seen = {seeded_plan(seed, WEIGHTS)(i) for seed in range(4) for i in range(STEPS)}
    assert seen == set(Fault)
