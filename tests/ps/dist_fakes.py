"""In-process parameter servers for the dist KVStore tests: the real PS logic behind links
that encode and decode every message with the real codec (so arrays arrive as fresh views,
as over a socket), without sockets or processes."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from kvsync.errors import StoreConnectionError, StoreTimeoutError, error_from_code
from kvsync.kv.dist import DistKVStore
from kvsync.launcher.ps_server import make_logic
from kvsync.protocol.codec import OPCODE_OF, Limits, decode, encode_frame
from kvsync.protocol.framing import HEADER_SIZE
from kvsync.protocol.messages import ErrorReply


def wire(msg: object) -> object:
    payload = bytearray(b"".join(bytes(p) for p in encode_frame(0, msg))[HEADER_SIZE:])
    return decode(OPCODE_OF[type(msg)], payload, Limits())


class FakeServer:
    """One parameter server: the real logic, a lock, and a ticker for deadlines."""

    def __init__(self, index: int, stall_seconds: float = 5.0) -> None:
        self.index = index
        self.logic = make_logic(index, stall_seconds=stall_seconds)
        self.cv = threading.Condition()
        self.replies: dict[tuple[int, int], object] = {}
        self.conns = itertools.count(1)
        self.alive = True
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.02):
            with self.cv:
                self.deliver(self.logic.expire(time.monotonic()))

    def deliver(self, outs: list[Any]) -> None:
        for o in outs:
            self.replies[o.conn_id, o.request_id] = wire(o.reply)
        if outs:
            self.cv.notify_all()

    def kill(self) -> None:
        with self.cv:
            self.alive = False
            self.cv.notify_all()

    def stop(self) -> None:
        self._stop.set()
        self._ticker.join()


class FakeLink:
    """A pipelined link to a FakeServer (the Client's submit/result/close)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.conn = next(server.conns)
        self.rids = itertools.count(1)

    def submit(self, msg: object, into: object = None) -> int:
        s = self.server
        with s.cv:
            if not s.alive:
                raise StoreConnectionError(f"server {s.index} is gone")
            rid = next(self.rids)
            s.deliver(s.logic.handle(self.conn, rid, wire(msg), time.monotonic()))
            return rid

    def result(self, rid: int, timeout: float | None = None) -> object:
        s = self.server
        with s.cv:
            ok = s.cv.wait_for(lambda: (self.conn, rid) in s.replies or not s.alive, timeout)
            if not s.alive:
                raise StoreConnectionError(f"server {s.index} is gone")
            if not ok:
                raise StoreTimeoutError(f"no reply to request {rid} within {timeout} s")
            reply = s.replies.pop((self.conn, rid))
        if isinstance(reply, ErrorReply):
            raise error_from_code(reply.code, reply.message)
        return reply

    def close(self) -> None:
        s = self.server
        with s.cv:
            s.logic.drop_connection(self.conn)
            s.deliver(s.logic.expire(time.monotonic()))


class SilentLink(FakeLink):
    """A link whose server never answers messages of the ``silent`` types (a stuck server)."""

    def __init__(self, server: FakeServer, silent: tuple[type, ...]) -> None:
        super().__init__(server)
        self.silent = silent

    def submit(self, msg: object, into: object = None) -> int:
        if isinstance(msg, self.silent):
            return next(self.rids)  # swallowed: no reply will ever come
        return super().submit(msg, into)


def run_workers(
    n: int,
    servers: list[FakeServer],
    fn: Callable[[DistKVStore], Any],
    kind: str = "dist_sync",
    bound: int = 1000,
    timeout: float = 20.0,
    shm: bool | list[bool] = False,
) -> list[Any]:
    """Run ``fn(kv)`` in ``n`` worker threads; return their results (re-raise the first
    failure)."""
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n

    def work(rank: int) -> None:
        kv = DistKVStore(
            kind,
            rank=rank,
            num_workers=n,
            links=[FakeLink(s) for s in servers],
            bound=bound,
            timeout=timeout,
            shm=shm,
        )
        try:
            results[rank] = fn(kv)
        except BaseException as exc:
            errors[rank] = exc
        finally:
            kv.close()

    threads = [threading.Thread(target=work, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
        assert not t.is_alive(), "a worker hung"
    for exc in errors:
        if exc is not None:
            raise exc
    return results
