"""Spawn and supervise the processes of one node: workers and parameter servers.

Strategy: every child runs in its own process group (``start_new_session``) with pipes
for stdout and stderr, forwarded by :mod:`kvsync.launcher.output`. The supervisor polls
its children a few times a second. The first child that exits with a non-zero code (or
is killed by a signal) fails the job: the others get SIGTERM on their whole process
group, SIGKILL after the grace period, and the job's exit code is that child's
(``128 + signal`` for a signal). A signal to the launcher itself stops the job the same
way; a second one skips the grace period. When every worker has succeeded the job is
done once the :class:`Coordinator` agrees (other nodes may still be working), and the
servers, which serve until told to stop, are stopped with SIGTERM. With ``max_restarts``, a
failing worker instead asks the :class:`Coordinator` to restart the worker group: every
node (one, or all nodes of the job) stops its workers only (the servers keep running),
waits until every node's workers have exited, and starts a new group with the restart
count one higher, up to ``max_restarts`` times; a failure after that ends the job.

Example:
    >>> import io, sys
    >>> from kvsync.launcher.output import OutputRouter
    >>> out, err = io.BytesIO(), io.BytesIO()
    >>> sup = Supervisor(OutputRouter(out, err), poll_interval=0.01)
    >>> sup.start([ChildSpec("worker", 0, [sys.executable, "-c", "print('hi')"], {})])
    >>> sup.supervise().exit_code
    0
    >>> out.getvalue()
    b'[worker 0] hi\\n'
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvsync import defaults, env
from kvsync.launcher.coordinator import Coordinator, LocalCoordinator
from kvsync.launcher.output import ChildOutput, OutputRouter

__all__ = [
    "ChildExit",
    "ChildSpec",
    "JobResult",
    "Respawn",
    "Supervisor",
    "exit_code_of",
]

_log = logging.getLogger(__name__)

#: Seconds to wait for a child's output threads after it exited (grandchildren may hold pipes).
_OUTPUT_DRAIN_SECONDS = 2.0


@dataclass(frozen=True)
class ChildSpec:
    """One process to start.

    Attributes:
        role: ``"worker"`` or ``"server"``; the output prefix and summary use it.
        rank: the child's rank within its role (global over the whole job).
        argv: the command line.
        env: variables merged over the launcher's own environment.
    """

    role: str
    rank: int
    argv: Sequence[str]
    env: dict[str, str]

    @property
    def name(self) -> str:
        """``"worker 3"``: how messages name this child."""
        return f"{self.role} {self.rank}"


def exit_code_of(returncode: int) -> int:
    """A shell-style exit code for a ``Popen.returncode`` (``128 + n`` for signal ``n``).

    Example:
        >>> exit_code_of(3), exit_code_of(-9)
        (3, 137)
    """
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class ChildExit:
    """How a child ended: its spec, pid, return code and last stderr lines."""

    spec: ChildSpec
    pid: int
    returncode: int
    stderr_tail: tuple[str, ...] = ()

    def describe(self) -> str:
        """``"exit code 3"`` or ``"signal SIGKILL"``.

        Example:
            >>> ChildExit(ChildSpec("worker", 1, [], {}), 7, -9).describe()
            'signal SIGKILL'
        """
        if self.returncode < 0:
            try:
                return f"signal {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"signal {-self.returncode}"
        return f"exit code {self.returncode}"


@dataclass
class JobResult:
    """The outcome of :meth:`Supervisor.supervise`.

    Attributes:
        exit_code: what the launcher should exit with.
        failed: the child that failed the job, if one did.
        reason: a one-line account of why the job stopped (empty on success).
        stopped: children the supervisor had to stop (names), in the order stopped.
    """

    exit_code: int
    failed: ChildExit | None = None
    reason: str = ""
    stopped: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """The lines the launcher prints when the job did not succeed.

        Example:
            >>> spec = ChildSpec("worker", 2, [], {})
            >>> JobResult(3, ChildExit(spec, 11, 3, ("boom",)), "worker 2 failed").summary()[:2]
            ['worker 2 failed', 'worker 2 (pid 11) ended with exit code 3; last stderr lines:']
        """
        if self.exit_code == 0:
            return []
        lines = [self.reason] if self.reason else []
        if self.failed is not None:
            f = self.failed
            head = f"{f.spec.name} (pid {f.pid}) ended with {f.describe()}"
            lines.append(head + ("; last stderr lines:" if f.stderr_tail else "; no stderr"))
            lines.extend(f"    {line}" for line in f.stderr_tail)
        if self.stopped:
            lines.append(
                f"stopped {len(self.stopped)} other process(es): " + ", ".join(self.stopped)
            )
        lines.append(f"exit code {self.exit_code}")
        return lines


#: ``respawn(restart, reason)``: the workers to start as group ``restart`` (1, 2, ...) after
#: the previous group failed, ``reason`` saying how (``"worker 1 failed with signal
#: SIGKILL"``, prefixed ``"node 1: "`` in a job of several nodes).
Respawn = Callable[[int, str], Sequence[ChildSpec]]


class _Child:
    def __init__(self, spec: ChildSpec, proc: subprocess.Popen[bytes], out: ChildOutput):
        self.spec = spec
        self.proc = proc
        self.out = out
        self.stopping = False

    def describe(self) -> str:
        """How it ended (``"signal SIGKILL"``), without waiting for its output."""
        return ChildExit(self.spec, self.proc.pid, self.proc.returncode or 0).describe()

    def exit(self) -> ChildExit:
        code = self.proc.returncode
        assert code is not None
        self.out.join(_OUTPUT_DRAIN_SECONDS)
        return ChildExit(self.spec, self.proc.pid, code, tuple(self.out.tail()))


class Supervisor:
    """Starts children, watches them, and stops them all when the job ends.

    Args:
        router: where the children's output goes.
        grace: seconds between SIGTERM and SIGKILL when stopping children.
        poll_interval: seconds between looks at the children.
        coordinator: tells when the whole (multi-node) job is done or failed elsewhere.
        max_restarts: how many times a failing worker restarts the worker group.
        respawn: builds the new group's specs (required with ``max_restarts``).
        restart_timeout: seconds a restart waits for the other nodes to stop their workers.
        say: where progress lines go while a restart waits for other nodes.
    """

    def __init__(
        self,
        router: OutputRouter,
        *,
        grace: float = defaults.SHUTDOWN_GRACE_SECONDS,
        poll_interval: float = 0.05,
        coordinator: Coordinator | None = None,
        max_restarts: int = 0,
        respawn: Respawn | None = None,
        restart_timeout: float = defaults.NODE_JOIN_TIMEOUT_SECONDS,
        say: Callable[[str], None] = _log.info,
    ) -> None:
        if max_restarts and respawn is None:
            raise ValueError("max_restarts needs a respawn function")
        self._max_restarts = max_restarts
        self._respawn = respawn
        self._restart_timeout = restart_timeout
        self._say = say
        #: how many times the worker group was restarted so far (the group's number)
        self.restarts = 0
        self._router = router
        self._grace = grace
        self._poll = poll_interval
        self._coordinator: Coordinator = coordinator or LocalCoordinator()
        self._children: list[_Child] = []
        self._wake = threading.Event()
        self._signals: list[int] = []

    @property
    def pids(self) -> list[int]:
        """The pids of every child started, in start order."""
        return [c.proc.pid for c in self._children]

    def start(self, specs: Sequence[ChildSpec]) -> None:
        """Start one process per spec (in its own process group, output forwarded).

        Raises:
            OSError: a command could not be started; the children already started are
                stopped before the error propagates.
        """
        for spec in specs:
            try:
                proc = subprocess.Popen(
                    list(spec.argv),
                    env=env.child_environment(spec.env),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError:
                self._stop_all(set())
                raise
            out = self._router.attach(spec.role, spec.rank, proc.stdout, proc.stderr)
            self._children.append(_Child(spec, proc, out))
            _log.debug("started %s as pid %d: %s", spec.name, proc.pid, spec.argv)

    def request_stop(self, signum: int) -> None:
        """Ask the job to stop (safe from a signal handler); a second call skips the grace."""
        self._signals.append(signum)
        self._wake.set()

    def supervise(self) -> JobResult:
        """Watch the children until the job succeeds, fails or is stopped; stop the rest.

        Returns:
            The job's result; every child has exited (or been killed) when it returns.
        """
        reported_done = False
        while True:  # until the job ends: each turn waits ``poll_interval``
            workers = [c for c in self._children if c.spec.role == "worker"]
            failed = self._first_failure()
            restartable = self.restarts < self._max_restarts and not self._signals
            if failed is not None and failed.spec.role == "worker" and restartable:
                self._coordinator.request_restart(
                    self.restarts + 1, f"{failed.spec.name} failed with {failed.describe()}"
                )
            elif failed is not None:
                reason = f"{failed.spec.name} failed (pid {failed.proc.pid})"
                if self._max_restarts and failed.spec.role == "worker":
                    reason += f"; no restarts left (--max-restarts {self._max_restarts})"
                self._coordinator.report_failure(reason)
                return self._finish(exit_code_of(failed.proc.returncode or 0), reason, failed)
            stopped = self._stopped_by_signal() or self._remote_failure()
            if stopped is not None:
                return stopped
            why = None
            if self._max_restarts:  # a restart of this node's or another node's request
                why = self._coordinator.restart_requested(self.restarts + 1)
            if why is not None:
                ended = self._restart(why, failed)
                if ended is not None:
                    return ended
                reported_done = False
                continue
            if failed is None and all(c.proc.poll() is not None for c in workers):
                if not reported_done:
                    self._coordinator.workers_done(self.restarts)
                    reported_done = True
                if self._coordinator.job_done(self.restarts):
                    return self._finish(0, "", None)
            self._wake.wait(self._poll)
            self._wake.clear()

    def _stopped_by_signal(self) -> JobResult | None:
        if not self._signals:
            return None
        signum = self._signals[0]
        reason = f"received {signal.Signals(signum).name}: stopping the job"
        self._coordinator.report_failure(reason)
        return self._finish(128 + signum, reason, None)

    def _remote_failure(self) -> JobResult | None:
        remote = self._coordinator.remote_failure()
        return None if remote is None else self._finish(1, remote, None)

    def _first_failure(self) -> _Child | None:
        for child in self._children:
            code = child.proc.poll()
            if code is not None and code != 0 and not child.stopping:
                return child
        return None

    def _restart(self, why: str, failed: _Child | None) -> JobResult | None:
        """Replace the worker group (not the servers) with the next one, once every node
        stopped its workers; a :class:`JobResult` if the job ended meanwhile."""
        assert self._respawn is not None
        self.restarts += 1
        specs = self._respawn(self.restarts, why)  # says "restarting the workers ..."
        workers = [c for c in self._children if c.spec.role == "worker"]
        self._stop(workers, set() if failed is None else {failed.proc.pid})
        if failed is not None:
            failed.exit()  # its last output lines are forwarded
        self._children = [c for c in self._children if c.spec.role != "worker"]
        self._coordinator.workers_stopped(self.restarts)
        start = time.monotonic()
        notice = start + defaults.NODE_WAIT_NOTICE_SECONDS
        while missing := self._coordinator.not_stopped(self.restarts):
            ended = self._stopped_by_signal() or self._remote_failure()
            if ended is not None:
                return ended
            now = time.monotonic()
            nodes = ", ".join(map(str, missing))
            if now - start >= self._restart_timeout:
                reason = (
                    f"restart {self.restarts}: node(s) {nodes} did not stop their "
                    f"workers within {self._restart_timeout:g} s"
                )
                self._coordinator.report_failure(reason)
                return self._finish(1, reason, None)
            if now >= notice:
                self._say(
                    f"restart {self.restarts}: waiting {now - start:.0f} s for node(s) "
                    f"{nodes} to stop their workers"
                )
                notice = now + defaults.NODE_WAIT_NOTICE_SECONDS
            self._wake.wait(self._poll)
            self._wake.clear()
        self.start(specs)
        return None

    def _finish(self, code: int, reason: str, failed: _Child | None) -> JobResult:
        skip = set() if failed is None else {failed.proc.pid}
        stopped = self._stop_all(skip)
        failure = None if failed is None else failed.exit()
        return JobResult(code, failure, reason, [] if code == 0 else stopped)

    def _stop_all(self, skip: set[int]) -> list[str]:
        """SIGTERM every child's process group, SIGKILL after the grace; wait for all."""
        return self._stop(self._children, skip)

    def _stop(self, children: list[_Child], skip: set[int]) -> list[str]:
        """Stop ``children`` as :meth:`_stop_all` does; names those that were running."""
        stopped: list[str] = []
        for child in children:
            child.stopping = True
            if child.proc.poll() is None and child.proc.pid not in skip:
                stopped.append(child.spec.name)
            _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._grace
        signals_seen = len(self._signals)
        while time.monotonic() < deadline and len(self._signals) == signals_seen:
            if all(c.proc.poll() is not None for c in children):
                break
            self._wake.wait(self._poll)
            self._wake.clear()
        for child in children:
            _signal_group(child.proc.pid, signal.SIGKILL)
        for child in children:
            try:
                child.proc.wait(timeout=self._grace + 5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
                _log.error("%s (pid %d) did not die", child.spec.name, child.proc.pid)
            child.out.join(_OUTPUT_DRAIN_SECONDS)
        return stopped


def _signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid`` (the child and its children)."""
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
