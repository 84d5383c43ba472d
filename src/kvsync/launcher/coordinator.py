"""How one node's supervisor learns about the rest of the job: done, failed, restarted.

:class:`~kvsync.launcher.agent.Supervisor` asks its :class:`Coordinator` whether the job
is done, whether another node failed it, and whether (and why) the worker group is to be
restarted, and tells it the same about its own node. A single node's job needs nobody
else (:class:`LocalCoordinator`); the nodes of a multi-node job coordinate through the
job's store (:class:`kvsync.launcher.job_store.StoreCoordinator`).

Example:
    >>> c = LocalCoordinator(); c.workers_done(0); c.job_done(0)
    True
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Coordinator", "LocalCoordinator"]


class Coordinator(Protocol):
    """How one node's supervisor learns about the rest of the job (other nodes).

    ``restart`` numbers the worker group: 0 for the first, then one more per restart, the
    same on every node.
    """

    def workers_done(self, restart: int) -> None:
        """Called once per group, when every local worker has exited with code 0."""

    def job_done(self, restart: int) -> bool:
        """Whether every node's group ``restart`` is done (asked after :meth:`workers_done`)."""

    def request_restart(self, restart: int, reason: str) -> None:
        """Ask every node to replace its workers with group ``restart`` (the first request
        for a group wins; later ones change nothing)."""

    def restart_requested(self, restart: int) -> str | None:
        """Why group ``restart`` was requested (by any node), ``None`` if it was not."""

    def workers_stopped(self, restart: int) -> None:
        """Called once this node's workers of the group before ``restart`` have all exited."""

    def not_stopped(self, restart: int) -> list[int]:
        """The node ranks whose workers before group ``restart`` may still run."""

    def remote_failure(self) -> str | None:
        """A message if another node failed or the job store is gone, else ``None``."""

    def report_failure(self, message: str) -> None:
        """Tell the other nodes that this node failed the job."""


class LocalCoordinator:
    """The coordinator of a single-node job: done when the local workers are.

    Example:
        >>> c = LocalCoordinator(); c.workers_done(0); c.job_done(0)
        True
        >>> c.request_restart(1, "worker 1 failed"); c.restart_requested(1), c.not_stopped(1)
        ('worker 1 failed', [])
    """

    def __init__(self) -> None:
        self._done: set[int] = set()
        self._restarts: dict[int, str] = {}

    def workers_done(self, restart: int) -> None:
        """Mark group ``restart`` done."""
        self._done.add(restart)

    def job_done(self, restart: int) -> bool:
        """Whether :meth:`workers_done` was called for group ``restart``."""
        return restart in self._done

    def request_restart(self, restart: int, reason: str) -> None:
        """Remember the first request for group ``restart``."""
        self._restarts.setdefault(restart, reason)

    def restart_requested(self, restart: int) -> str | None:
        """The reason :meth:`request_restart` gave for group ``restart``."""
        return self._restarts.get(restart)

    def workers_stopped(self, restart: int) -> None:
        """Nothing to tell."""

    def not_stopped(self, restart: int) -> list[int]:
        """None: this node is the job."""
        return []

    def remote_failure(self) -> str | None:
        """Never: there are no other nodes."""
        return None

    def report_failure(self, message: str) -> None:
        """Nothing to tell."""
