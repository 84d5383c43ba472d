"""A real store server driven by several clients over loopback, against a plain dict model.

Hypothesis picks the operations and which client sends each; parked waits and queue pops
of one client are woken by another's writes through the real event loop. Every reply must
be what the dict predicts. Blocking requests use long timeouts (nothing expires; expiry is
covered by the pure state machine's test and the hardening tests).
"""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsync.client import Client
from kvsync.errors import KVSyncError
from kvsync.protocol import messages as m
from kvsync.server import StoreServer

CLIENTS = st.integers(0, 2)
KEYS = st.sampled_from(["a", "b", "c"])
VALUES = st.one_of(st.binary(max_size=6), st.integers(-50, 50).map(lambda i: str(i).encode()))
_PARK_MS = 30_000  # long enough never to expire within a test case


def _b(v: object) -> bytes:
    return bytes(v)  # type: ignore[call-overload]


class ServerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = StoreServer(port=0, max_key_bytes=64, max_value_bytes=64).start()
        self.clients = [self._connect() for _ in range(3)]
        self.values: dict[str, bytes] = {}
        self.queues: dict[str, list[bytes]] = {}
        self.waits: list[tuple[int, int, tuple[str, ...]]] = []  # (client, request id, keys)
        self.pops: list[tuple[int, int, str]] = []  # (client, request id, queue), oldest first

    def _connect(self) -> Client:
        return Client("127.0.0.1", self.server.port, timeout=10)

    def teardown(self) -> None:
        for c in self.clients:
            c.close()
        self.server.close()

    # --- helpers ------------------------------------------------------------------------

    def call(self, client: int, msg: object) -> object:
        try:
            return self.clients[client].call(msg)
        except KVSyncError as exc:  # an error reply: the model checks its class
            return exc

    def park(self, client: int, msg: object) -> int:
        """Send a request that may park; once a Ping on the same connection is answered,
        the server has parked (or answered) it."""
        rid = self.clients[client].submit(msg)
        assert self.clients[client].call(m.Ping()) == m.OkReply()
        return rid

    def exists(self, key: str) -> bool:
        return key in self.values or key in self.queues

    def wake(self) -> None:
        """Every parked wait whose keys now all exist has been answered OK."""
        for entry in list(self.waits):
            client, rid, keys = entry
            if all(map(self.exists, keys)):
                assert self.clients[client].result(rid, timeout=10) == m.OkReply()
                self.waits.remove(entry)

    def store_value(self, key: str, value: bytes) -> None:
        self.queues.pop(key, None)
        self.values[key] = value

    # --- rules --------------------------------------------------------------------------

    @rule(client=CLIENTS, key=KEYS, value=VALUES)
    def set(self, client: int, key: str, value: bytes) -> None:
        assert self.call(client, m.Set(key, value)) == m.OkReply()
        self.store_value(key, value)
        self.wake()

    @rule(client=CLIENTS, key=KEYS)
    def get(self, client: int, key: str) -> None:
        reply = self.call(client, m.Get(key, block=False, timeout_ms=0))
        if key in self.queues:
            assert isinstance(reply, KVSyncError)
        else:
            assert isinstance(reply, m.ValueReply) and _b(reply.value) == self.values.get(key, b"")

    @rule(client=CLIENTS, key=KEYS, amount=st.integers(-1000, 1000))
    def add(self, client: int, key: str, amount: int) -> None:
        reply = self.call(client, m.Add(key, amount))
        try:
            base = int(self.values.get(key, b"0")) if key not in self.queues else None
        except ValueError:
            base = None
        if base is None:
            assert isinstance(reply, KVSyncError)
            return
        assert reply == m.IntReply(base + amount)
        self.values[key] = str(base + amount).encode()
        self.wake()

    @rule(client=CLIENTS, key=KEYS, value=VALUES)
    def append(self, client: int, key: str, value: bytes) -> None:
        reply = self.call(client, m.Append(key, value))
        new = self.values.get(key, b"") + value
        if key in self.queues or len(new) > 64:
            assert isinstance(reply, KVSyncError)
            return
        assert reply == m.OkReply()
        self.values[key] = new
        self.wake()

    @rule(client=CLIENTS, key=KEYS)
    def delete_key(self, client: int, key: str) -> None:
        assert self.call(client, m.DeleteKey(key)) == m.IntReply(int(self.exists(key)))
        self.values.pop(key, None)
        self.queues.pop(key, None)

    @rule(client=CLIENTS, keys=st.lists(KEYS, max_size=3))
    def check_and_multi_get(self, client: int, keys: list[str]) -> None:
        reply = self.call(client, m.Check(tuple(keys)))
        assert reply == m.IntReply(int(all(map(self.exists, keys))))
        reply = self.call(client, m.MultiGet(tuple(keys), block=False, timeout_ms=0))
        if any(k in self.queues for k in keys):
            assert isinstance(reply, KVSyncError)
        else:
            assert isinstance(reply, m.ValuesReply)
            assert [_b(v) for v in reply.values] == [self.values.get(k, b"") for k in keys]

    @rule(client=CLIENTS, keys=st.lists(KEYS, min_size=1, max_size=3))
    def wait(self, client: int, keys: list[str]) -> None:
        rid = self.park(client, m.Wait(tuple(keys), _PARK_MS))
        self.waits.append((client, rid, tuple(keys)))
        self.wake()  # answered at once when every key exists

    @rule(client=CLIENTS, key=KEYS, value=VALUES)
    def queue_push(self, client: int, key: str, value: bytes) -> None:
        reply = self.call(client, m.QueuePush(key, value))
        if key in self.values:
            assert isinstance(reply, KVSyncError)
            return
        assert reply == m.OkReply()
        waiting = [p for p in self.pops if p[2] == key]
        if waiting:  # the oldest parked pop gets it
            popper, rid, _ = waiting[0]
            assert self.clients[popper].result(rid, timeout=10) == m.ValueReply(value)
            self.pops.remove(waiting[0])
            return
        self.queues.setdefault(key, []).append(value)
        self.wake()

    @rule(client=CLIENTS, key=KEYS)
    def queue_pop(self, client: int, key: str) -> None:
        rid = self.park(client, m.QueuePop(key, True, _PARK_MS))
        if key in self.values:
            assert isinstance(self._result(client, rid), KVSyncError)
        elif self.queues.get(key):
            assert self._result(client, rid) == m.ValueReply(self.queues[key].pop(0))
            if not self.queues[key]:
                del self.queues[key]
        else:
            self.pops.append((client, rid, key))

    @rule(first=CLIENTS, second=CLIENTS)
    def barrier(self, first: int, second: int) -> None:
        """Two clients (or one, twice, on one connection: then both in one generation)
        meet at a barrier of two."""
        rid = self.park(first, m.Barrier("bar", 2, _PARK_MS))
        assert self.call(second, m.Barrier("bar", 2, _PARK_MS)) == m.OkReply()
        assert self.clients[first].result(rid, timeout=10) == m.OkReply()
        count = int(self.values.get("bar/arrived", b"0")) + 2
        self.values["bar/arrived"] = str(count).encode()
        self.values[f"bar/done/{count // 2 - 1}"] = b"1"

    @precondition(lambda self: bool(self.waits or self.pops))
    @rule(client=CLIENTS)
    def reconnect(self, client: int) -> None:
        """A client goes away with requests parked; the server forgets them."""
        self.clients[client].close()
        self.clients[client] = self._connect()
        self.waits = [w for w in self.waits if w[0] != client]
        self.pops = [p for p in self.pops if p[0] != client]
        for _ in range(200):  # until the server has seen the close (bounded: 2 s)
            report = self.inspect()
            if report["connections"] == 3 and report["parked"] == len(self.waits) + len(self.pops):
                break
            time.sleep(0.01)

    def inspect(self) -> dict[str, Any]:
        reply = self.call(2, m.Inspect())
        assert isinstance(reply, m.ValueReply)
        report: dict[str, Any] = json.loads(bytes(reply.value))
        return report

    def _result(self, client: int, rid: int) -> object:
        try:
            return self.clients[client].result(rid, timeout=10)
        except KVSyncError as exc:
            return exc

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def the_server_lists_what_is_parked_and_holds_no_half_frames(self) -> None:
        report = self.inspect()
        assert report["pending_bytes"] == 0 and report["connections"] == 3
        parked = sorted((w["op"], tuple(w["keys"])) for w in report["waiters"])
        expected = [
            ("wait", tuple(k for k in keys if not self.exists(k))) for _, _, keys in self.waits
        ]
        expected += [("queue_pop", (key,)) for _, _, key in self.pops]
        assert parked == sorted(expected)

    @invariant()
    def keys_match(self) -> None:
        reply = self.call(0, m.ListKeys())
        assert isinstance(reply, m.KeysReply)
        assert sorted(reply.keys) == sorted({*self.values, *self.queues})
        assert self.call(1, m.NumKeys()) == m.IntReply(len(self.values) + len(self.queues))


ServerModel.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_a_real_server_matches_a_dict_model_from_several_clients = ServerModel.TestCase
