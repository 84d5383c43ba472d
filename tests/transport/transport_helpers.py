"""Helpers of the transport tests: raw protocol sockets, subprocess servers, bounded waits."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kvsync.protocol import torch_wire as tw
from kvsync.protocol.codec import encode_frame
from kvsync.protocol.connection import NEED_DATA, Connection, Event, Role


def join(parts: list[Any]) -> bytes:
    return b"".join(bytes(p) for p in parts)


class RawClient:
    """A blocking test client speaking the protocol by hand (to send bad bytes on purpose)."""

    def __init__(self, port: int, *, handshake: bool = True, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.proto = Connection(Role.CLIENT)
        if handshake:
            self.sock.sendall(join(self.proto.data_to_send()))
            self.events()  # until the handshake completes
            assert self.proto.handshake_complete

    def send(self, request_id: int, msg: object) -> None:
        self.sock.sendall(join(encode_frame(request_id, msg)))

    def events(self, count: int = 0) -> list[Event]:
        """Read until ``count`` events arrived (0: until the handshake completes) or EOF."""
        out: list[Event] = []
        for _ in range(10_000):
            if count and len(out) >= count:
                return out
            if not count and self.proto.handshake_complete:
                return out
            data = self.sock.recv(65536)
            if not data:
                return out
            self.proto.receive_data(data)
            for _ in range(10_000):
                ev = self.proto.next_event()
                if ev is NEED_DATA:
                    break
                assert isinstance(ev, Event)
                out.append(ev)
        raise AssertionError("unbounded read")

    def read_until_eof(self) -> bytes:
        chunks = []
        for _ in range(10_000):
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (EOF or reset) rather than sending bytes."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def torch_bytes(*msgs: object) -> bytes:
    """torch TCPStore messages as the bytes on the wire."""
    return b"".join(bytes(b) for m in msgs for b in tw.encode(m))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


#: ``kvsync serve`` with Python's cycle collector off (buffers must be freed without it).
_SERVE_GC_OFF = (
    "import argparse, gc, sys; gc.disable(); from kvsync.launcher import serve;"
    " p = argparse.ArgumentParser(); serve.add_arguments(p);"
    " sys.exit(serve.run(p.parse_args(sys.argv[1:])))"
)


@contextmanager
def serve_subprocess(
    *args: str, gc_disabled: bool = False, **env: str
) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """Run ``python -m kvsync.launcher.serve --port 0 ARGS`` (with ``gc.disable()`` first
    when ``gc_disabled``; ``env`` added to its environment); yield (proc, host, port)."""
    entry = ["-c", _SERVE_GC_OFF] if gc_disabled else ["-m", "kvsync.launcher.serve"]
    proc = subprocess.Popen(
        [sys.executable, *entry, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(**env),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        assert match, f"unexpected first line {line!r}"
        yield proc, match.group(1), int(match.group(2))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
