"""Where a master's store server runs: a thread of the master process, or a child process.

:func:`host_server` binds the address in the calling process (so a bind error is raised
there) and serves it either from a thread (:class:`ThreadHost`, the default: the shape of
torch's store) or from a child Python process that takes over the bound socket
(:class:`ChildHost`: its event loop shares no GIL with the master's own Python work).

Strategy for the child: the parent keeps the write end of a control pipe. ``close()``
writes ``stop`` and the child stops at once. When the pipe reaches end-of-file without it
(the parent exited, was killed, or detached at exit), or the child is re-parented (the
pipe is held open by a process the parent forked), the parent is gone: the child serves
the clients still connected until the last one disconnects, at most ``grace`` seconds,
logs what it did, and exits. So it is never left running on its own.

``close()`` stops either kind at once. ``leave()`` (a store dropped without ``close()``, or
left open at exit) lets it serve the clients still connected until they disconnect, at
most ``grace`` seconds, logged: a :class:`ThreadHost` from a background thread that the
exit hook joins (:func:`join_leaving`), a :class:`ChildHost` by detaching from the child.

Example:
    >>> from kvsync.client import Client
    >>> from kvsync.protocol.messages import Get, Set
    >>> server = host_server("127.0.0.1", 0, placement="process", grace=5.0)
    >>> with Client("127.0.0.1", server.port, timeout=10) as client:
    ...     client.call(Set("k", b"v"))
    ...     bytes(client.call(Get("k", False, 0)).value)
    OkReply()
    b'v'
    >>> server.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from kvsync import defaults, env
from kvsync.errors import StoreConnectionError
from kvsync.server.loop import StoreServer, _listen

__all__ = [
    "ChildHost", "ThreadHost", "child_main", "host_server", "join_leaving", "serve_remaining",
]  # fmt: skip

logger = logging.getLogger(__name__)

_READY_TIMEOUT = 60.0  # seconds a child may take to start serving
_STOP_TIMEOUT = 10.0  # seconds a stopped child may take to exit before it is killed
_PARENT_POLL = 0.5  # seconds between two looks at the parent (bounds death detection)
_DRAIN_POLL = 0.05  # seconds between two counts of the connections while draining
_SETTLE = 0.2  # seconds connections closed by a leaving process may take to be noticed
_STOP = b"stop"
_CHILD_CODE = (
    "import sys; from kvsync.server.host import child_main; sys.exit(child_main(sys.argv[1:]))"
)


def _settle(connections: Callable[[], int], seconds: float) -> int:
    """``connections()`` once it is 0, or after ``seconds`` (connections that were just
    closed by this process take the server a moment to notice)."""
    deadline = time.monotonic() + seconds
    n = connections()
    while n and time.monotonic() < deadline:
        time.sleep(_DRAIN_POLL)
        n = connections()
    return n


def serve_remaining(connections: Callable[[], int], grace: float, what: str) -> int:
    """Wait until ``connections()`` is 0 or ``grace`` seconds passed; log both ends.

    Args:
        connections: how many clients are connected right now.
        grace: the most seconds to wait.
        what: names the server in the log lines.

    Returns:
        The clients still connected when it gave up (0: all of them left).

    Example:
        >>> serve_remaining(lambda: 0, 5.0, "a store server")
        0
    """
    start = time.monotonic()
    n = _settle(connections, min(_SETTLE, grace))
    if n == 0:
        return 0
    logger.warning(
        "%s: %d client(s) still connected; serving them until they disconnect, at most %g s",
        what, n, grace,
    )  # fmt: skip
    deadline = start + grace
    while n and time.monotonic() < deadline:
        time.sleep(min(_DRAIN_POLL, max(0.0, deadline - time.monotonic())))
        n = connections()
    if n:
        logger.warning("%s: grace period of %g s over; closing %d connection(s)", what, grace, n)
    else:
        logger.warning(
            "%s: the last client disconnected after %.1f s", what, time.monotonic() - start
        )
    return n


#: Threads serving the clients of servers left by their stores (joined at exit).
_leaving: list[threading.Thread] = []


def join_leaving(timeout: float) -> None:
    """Wait for the servers left by their stores to finish serving (at most ``timeout``
    seconds in all); called at exit.

    Example:
        >>> join_leaving(1.0)
    """
    deadline = time.monotonic() + timeout
    for thread in _leaving[:]:
        thread.join(max(0.0, deadline - time.monotonic()))


class ThreadHost:
    """A :class:`StoreServer` on a thread of this process.

    Args:
        server: the (not yet started) server.
        grace: seconds :meth:`leave` keeps serving connected clients.
    """

    placement = "thread"

    def __init__(self, server: StoreServer, grace: float) -> None:
        self.server = server.start()
        self.host, self.port = server.host, server.port
        self.grace = grace
        self._pid = os.getpid()

    def close(self) -> None:
        """Stop the server now. Idempotent; does nothing in a forked child."""
        if os.getpid() == self._pid:  # a fork's copy: the server belongs to the parent
            self.server.close()

    def leave(self) -> None:
        """Stop the server once its clients disconnected, at most ``grace`` seconds from
        now (logged): at once when none is connected, else from a background thread (see
        :func:`join_leaving`), or from the calling thread at interpreter exit where Python
        (3.12 and later) starts no new thread. Does nothing in a forked child."""
        if os.getpid() != self._pid:
            return
        connections = lambda: self.server.connections  # noqa: E731
        if _settle(connections, min(_SETTLE, self.grace)) == 0:
            self.server.close()
            return
        what = f"store server {self.server.address} left by its store in process {self._pid}"

        def serve_then_close() -> None:
            serve_remaining(connections, self.grace, what)
            self.server.close()

        thread = threading.Thread(target=serve_then_close, name="kvsync-leave", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # Python >= 3.12 starts no thread at exit: serve from this one
            serve_then_close()
            return
        _leaving[:] = [t for t in _leaving if t.is_alive()]
        _leaving.append(thread)

    def __repr__(self) -> str:
        return f"ThreadHost({self.server!r})"


class ChildHost:
    """A store server in a child process that serves a socket bound by this one.

    Args:
        sock_fd: the bound listening socket (this object closes it once the child has it).
        host: the address it is bound to, port: its port.
        grace: seconds the child serves connected clients after this process is gone.

    Raises:
        StoreConnectionError: the child did not start serving (names its PID and exit code).
    """

    placement = "process"

    def __init__(self, sock_fd: int, host: str, port: int, grace: float) -> None:
        self.host, self.port, self.grace = host, port, grace
        self._pid = os.getpid()
        read_end, self._control = os.pipe()
        argv = [str(sock_fd), str(read_end), repr(grace), str(self._pid)]
        path = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this kvsync
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, *argv],
                pass_fds=(sock_fd, read_end),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=env.child_environment(path),
            )
        except BaseException:
            os.close(self._control)
            raise
        finally:
            os.close(read_end)
            os.close(sock_fd)
        self.pid = self._proc.pid
        try:
            self._await_ready()
        except BaseException:
            self.close()
            raise
        logger.debug("store server %s:%d runs in child process %d", host, port, self.pid)

    def _await_ready(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], _READY_TIMEOUT)
        line = stdout.readline() if ready else b""
        stdout.close()
        if line.strip() != b"ready":
            if ready:  # its stdout closed: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(_STOP_TIMEOUT)
            code = self._proc.poll()
            state = (
                f"did not start serving within {_READY_TIMEOUT:g} s"
                if code is None
                else f"exited with code {code} before serving (its stderr says why)"
            )
            raise StoreConnectionError(
                f"store server process {self.pid} for {self.host}:{self.port} {state}"
            )

    def close(self) -> None:
        """Stop the child now and reap it. Idempotent; a forked child's copy only closes
        its end of the control pipe."""
        mine = os.getpid() == self._pid
        if not self._close_control(_STOP if mine else b"") or not mine:
            return
        try:
            self._proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning("store server process %d did not stop; killing it", self.pid)
            self._proc.kill()  # by PID: our own child
            self._proc.wait(_STOP_TIMEOUT)

    def leave(self) -> None:
        """Leave the child to serve its clients until they disconnect (at most ``grace``
        seconds) and exit on its own."""
        self._close_control(b"")

    def _close_control(self, say: bytes) -> bool:
        """Write ``say`` and close the control pipe; False if it was closed already."""
        control, self._control = self._control, -1
        if control < 0:
            return False
        try:
            if say:
                os.write(control, say)
        except OSError:  # the child is gone already
            pass
        finally:
            os.close(control)
        return True

    def __repr__(self) -> str:
        state = "running" if self._proc.poll() is None else f"exited {self._proc.returncode}"
        return f"ChildHost({self.host}:{self.port}, pid {self.pid}, {state})"


def host_server(
    host: str = defaults.DEFAULT_HOST,
    port: int = 0,
    *,
    placement: str = defaults.STORE_SERVER,
    grace: float = defaults.STORE_EXIT_GRACE_SECONDS,
    listen_fd: int | None = None,
    secret: str | bytes | None = None,
) -> ThreadHost | ChildHost:
    """Bind ``host:port`` (or take ``listen_fd``) here and serve it from ``placement``.

    Args:
        host: address to bind; port: port to bind (``0``: a free one, see ``.port``).
        placement: ``"thread"`` or ``"process"``.
        grace: seconds connected clients are served after this process exits.
        listen_fd: an already bound socket to serve instead of binding.
        secret: the HMAC handshake's shared secret (a child reads ``KVSYNC_SECRET``, which
            is where a store's secret comes from; a different one is refused).

    Raises:
        StoreConnectionError: the address cannot be bound, or the child did not start.
        ValueError: an unknown ``placement``, or a ``secret`` a child cannot get.
    """
    if placement == "thread":
        return ThreadHost(StoreServer(host, port, listen_fd=listen_fd, secret=secret), grace)
    if placement != "process":
        raise ValueError(f"placement must be one of {env.STORE_SERVER_CHOICES}, got {placement!r}")
    if secret is not None and secret != env.read().secret:
        raise ValueError(f"a child-process server takes its secret from {env.KVSYNC_SECRET} only")
    sock = _listen(host, port, listen_fd, defaults.LISTEN_BACKLOG)
    bound_host, bound_port = sock.getsockname()[:2]
    return ChildHost(sock.detach(), str(bound_host), int(bound_port), grace)


# --- the child's side ---------------------------------------------------------------------


def _parent_gone(control: int, parent: int) -> bool:
    """Block until the parent says stop (False) or is gone (True)."""
    while True:  # ends with the parent: each turn is bounded by _PARENT_POLL
        readable, _, _ = select.select([control], [], [], _PARENT_POLL)
        if readable:
            data = os.read(control, 64)
            if data.startswith(_STOP):
                return False
            if not data:
                return True
        if os.getppid() != parent:
            return True


def child_main(argv: list[str]) -> int:
    """The child process: ``SOCK_FD CONTROL_FD GRACE PARENT_PID``; returns the exit code."""
    sock_fd, control, grace, parent = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("kvsync store server (pid %(process)d): %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    server = StoreServer(listen_fd=sock_fd, secret=env.read().secret).start()
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.flush()
    sys.stdout.close()
    try:
        if _parent_gone(control, parent):
            what = f"store server {server.address} of exited process {parent}"
            serve_remaining(lambda: server.connections, grace, what)
    finally:
        server.close()
    return 0
