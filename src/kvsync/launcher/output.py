"""Rank-prefixed output: every line a child prints reaches the launcher's own stream.

Strategy: one small thread per child pipe reads whole lines (``readline`` on a buffered
binary pipe, so no per-byte Python work), writes them to the launcher's stdout or stderr
behind the child's prefix (``[worker 3] ``) under one lock so lines never interleave
mid-line, optionally tees the unprefixed bytes to a per-child file, and keeps the last
stderr lines for the failure summary. A line longer than :data:`CHUNK_BYTES` is passed on
in pieces, each on its own prefixed line. A broken destination (the launcher's
stdout piped into ``head``) is ignored so children never block on a full pipe.

Example:
    >>> import io
    >>> out, err = io.BytesIO(), io.BytesIO()
    >>> router = OutputRouter(out, err)
    >>> child = router.attach("worker", 3, io.BytesIO(b"hello\\nworld"), io.BytesIO(b"oops\\n"))
    >>> child.join(5.0)
    True
    >>> out.getvalue().decode()
    '[worker 3] hello\\n[worker 3] world\\n'
    >>> child.tail()
    ['oops']
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

__all__ = ["CHUNK_BYTES", "TAIL_LINES", "ChildOutput", "OutputRouter", "log_file_names", "prefix"]

_log = logging.getLogger(__name__)

#: Largest piece of a line read at once; longer lines are forwarded in pieces.
CHUNK_BYTES = 1 << 16
#: How many stderr lines of each child are kept for the failure summary.
TAIL_LINES = 20


def prefix(role: str, rank: int) -> bytes:
    """The prefix put before each line of a child's output.

    Example:
        >>> prefix("server", 0)
        b'[server 0] '
    """
    return f"[{role} {rank}] ".encode()


def log_file_names(role: str, rank: int) -> tuple[str, str]:
    """The names of a child's stdout and stderr files inside ``--log-dir``.

    Example:
        >>> log_file_names("worker", 2)
        ('worker_2.stdout.log', 'worker_2.stderr.log')
    """
    return f"{role}_{rank}.stdout.log", f"{role}_{rank}.stderr.log"


class OutputRouter:
    """Forwards children's pipes to two destination streams with per-child prefixes.

    Args:
        stdout: binary stream receiving every child's stdout lines (the launcher's stdout).
        stderr: binary stream receiving every child's stderr lines.
        log_dir: when given, each child's unprefixed output is also written to
            :func:`log_file_names` files in this directory (created if missing; a restarted
            child appends to its files).
        console: ``console(role, rank, stream)`` says whether that child's stream reaches
            the destination streams (default: every one does); its files get it anyway.
    """

    def __init__(
        self,
        stdout: BinaryIO,
        stderr: BinaryIO,
        log_dir: Path | None = None,
        console: Callable[[str, int, str], bool] | None = None,
    ) -> None:
        self._dest = {"stdout": stdout, "stderr": stderr}
        self._lock = threading.Lock()
        self._log_dir = log_dir
        self._console = console
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def attach(
        self, role: str, rank: int, stdout: IO[bytes] | None, stderr: IO[bytes] | None
    ) -> ChildOutput:
        """Start forwarding one child's pipes; returns a handle to join and read its tail."""
        child = ChildOutput(prefix(role, rank))
        names = log_file_names(role, rank)
        for pipe, stream, name in ((stdout, "stdout", names[0]), (stderr, "stderr", names[1])):
            if pipe is None:
                continue
            tee = None if self._log_dir is None else (self._log_dir / name).open("ab")
            shown = self._console is None or self._console(role, rank, stream)
            thread = threading.Thread(
                target=self._pump,
                args=(pipe, self._dest[stream] if shown else None, tee, child,
                      stream == "stderr"),
                name=f"kvsync-output-{role}-{rank}-{stream}",
                daemon=True,
            )
            child.threads.append(thread)
            thread.start()
        return child

    def write_line(self, stream: str, line: bytes) -> None:
        """Write one already-prefixed line to ``"stdout"`` or ``"stderr"`` under the lock."""
        with self._lock:
            self._write(self._dest[stream], line)

    def _pump(
        self,
        pipe: IO[bytes],
        dest: BinaryIO | None,
        tee: BinaryIO | None,
        child: ChildOutput,
        keep_tail: bool,
    ) -> None:
        try:
            for piece in iter(lambda: pipe.readline(CHUNK_BYTES), b""):
                line = piece if piece.endswith(b"\n") else piece + b"\n"
                if dest is not None:
                    with self._lock:
                        self._write(dest, child.prefix + line)
                if tee is not None:
                    tee.write(piece)
                    tee.flush()
                if keep_tail:
                    child.add_tail(line)
        except (OSError, ValueError) as exc:  # the pipe was closed under us
            _log.debug("output pump for %r stopped: %s", child.prefix, exc)
        finally:
            if tee is not None:
                tee.close()
            pipe.close()

    @staticmethod
    def _write(dest: BinaryIO, data: bytes) -> None:
        try:
            dest.write(data)
            dest.flush()
        except (OSError, ValueError):  # broken pipe or closed stream: keep draining the child
            pass


class ChildOutput:
    """The forwarding threads of one child and the last lines it wrote to stderr."""

    def __init__(self, line_prefix: bytes) -> None:
        self.prefix = line_prefix
        self.threads: list[threading.Thread] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._tail_lock = threading.Lock()

    def add_tail(self, line: bytes) -> None:
        """Record one line the child wrote to stderr."""
        text = line.decode(errors="replace").rstrip("\n")
        with self._tail_lock:
            self._tail.append(text)

    def tail(self) -> list[str]:
        """The last :data:`TAIL_LINES` stderr lines, oldest first, without newlines."""
        with self._tail_lock:
            return list(self._tail)

    def join(self, timeout: float) -> bool:
        """Wait until both pipes reached end of file; returns whether they did in time."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)
