"""A frame-aware TCP proxy that injects faults, chosen by a seeded plan, into what clients send.

Between a client and a server on loopback, it splits the client's byte stream into kvsync
frames (the 24-byte header says each payload's length) and, frame by frame after the
handshake, asks its plan what to do: pass it, drop it (the server never sees it), delay
it, or cut it (send its first half, then close both sides, as a crash mid-send would). The
plan is a function of the frame's index, so a seed gives the same faults on every run and
each failure path runs deterministically. Replies pass through untouched.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum

from kvsync.protocol.framing import HEADER_SIZE, unpack_header

__all__ = ["Fault", "FaultProxy", "seeded_plan"]


class Fault(Enum):
    PASS = "pass"
    DROP = "drop"
    DELAY = "delay"
    CUT = "cut"


#: A plan: (index of the request frame over the proxy's life) -> what to do with it.
Plan = Callable[[int], Fault]


def seeded_plan(seed: int, weights: dict[Fault, int]) -> Plan:
    """The fault of each frame index, drawn from ``Random(seed)`` (same seed, same faults)."""
    rng = random.Random(seed)
    faults, counts = list(weights), list(weights.values())
    drawn: list[Fault] = []

    def plan(index: int) -> Fault:
        while len(drawn) <= index:
            drawn.append(rng.choices(faults, counts)[0])
        return drawn[index]

    return plan


class FaultProxy:
    """Listen on a free loopback port; forward each connection to ``port``, faults applied.

    Args:
        port: the server's port on 127.0.0.1.
        plan: what to do with each request frame (see :func:`seeded_plan`).
        handshake_frames: frames per connection passed untouched first (the Hello).
        delay: seconds a delayed frame is held back.
    """

    def __init__(self, port: int, plan: Plan, *, handshake_frames: int = 1,
                 delay: float = 0.1) -> None:  # fmt: skip
        self.target = port
        self.plan = plan
        self.handshake_frames = handshake_frames
        self.delay = delay
        self.applied: list[Fault] = []  # what was done to each request frame, in order
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start(self._accept_loop)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        for _ in range(10_000):
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            server.settimeout(None)
            self._socks += [client, server]
            self._start(self._client_to_server, client, server)
            self._start(self._copy, server, client)

    def _next_fault(self) -> Fault:
        with self._lock:
            fault = self.plan(len(self.applied))
            self.applied.append(fault)
            return fault

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        buf = b""
        seen = 0

        def forward(data: bytes) -> bool:
            nonlocal buf, seen
            buf += data
            while len(buf) >= HEADER_SIZE:
                size = HEADER_SIZE + unpack_header(buf).length
                if len(buf) < size:
                    break
                frame, buf = buf[:size], buf[size:]
                seen += 1
                fault = Fault.PASS if seen <= self.handshake_frames else self._next_fault()
                if fault is Fault.CUT:
                    _send(server, frame[: max(HEADER_SIZE, size // 2)])
                    _shut(server)
                    _shut(client)
                    return False
                if fault is Fault.DELAY:
                    time.sleep(self.delay)
                if fault is not Fault.DROP:
                    _send(server, frame)
            return True

        _pump(client, server, forward)

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        _pump(src, dst, lambda data: _send(dst, data) or True)

    def close(self) -> None:
        _shut(self._listener)  # wakes the accept loop
        self._listener.close()
        for s in self._socks:
            _shut(s)
            s.close()
        for t in self._threads:
            t.join(timeout=5)


def _pump(src: socket.socket, dst: socket.socket, forward: Callable[[bytes], bool]) -> None:
    """Read ``src`` until it ends (then shut ``dst``) or ``forward`` says to stop."""
    for _ in range(1_000_000):
        try:
            data = src.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            _shut(dst)
            return
        if not forward(data):
            return


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
