"""Memory shared between the processes of a job on one host (Linux ``/dev/shm``).

A segment is a ``/dev/shm`` file that is unlinked as soon as it is created and opened, so
it never outlives its processes; other processes open it through ``/proc/<pid>/fd/<fd>``
(same user) and map it. Parameter servers keep big slices in such segments and workers on
the same host push and pull them with one memory copy each way instead of a socket round
trip (see :mod:`kvsync.kv.dist`); the messages carry only the segment's path.

Example:
    >>> seg = SharedSegments()
    >>> path, buf = seg.create(16)
    >>> view = seg.attach(path, 16)
    >>> buf[:2] = [104, 105]; bytes(view[:2])
    b'hi'
    >>> seg.close()
"""

from __future__ import annotations

import itertools
import mmap
import os
import re
import threading

import numpy as np

__all__ = ["SharedSegments", "host_id", "shm_supported"]

_DIR = "/dev/shm"
_PREFIX = f"{_DIR}/kvsync-"
#: The only paths :meth:`SharedSegments.attach` opens: another process's descriptor.
_SEGMENT_PATH = re.compile(r"/proc/[0-9]+/fd/[0-9]+")
_counter = itertools.count()
_BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _check_segment(target: str, path: str) -> None:
    """Refuse anything but a kvsync segment (a peer must not make us open other files)."""
    if not target.startswith(_PREFIX):
        raise PermissionError(f"{path} is not a kvsync shared-memory segment")


def shm_supported() -> bool:
    """Whether this host offers ``/dev/shm`` and ``/proc/<pid>/fd`` (Linux).

    Example:
        >>> isinstance(shm_supported(), bool)
        True
    """
    return os.path.isdir(_DIR) and os.path.isdir(f"/proc/{os.getpid()}/fd")


def host_id() -> str:
    """Who can share memory with this process: ``hostname/boot id/net namespace``.

    Processes of one job compare it (parameter servers publish theirs when they register)
    instead of guessing from addresses: two processes share ``/dev/shm`` and ``/proc``
    when the kernel (its boot id) is the same, and a separate network namespace (a
    container, or the test set-up of two "hosts" on one machine) counts as another host.
    Two launchers on one machine get the same id. Without ``/proc`` the id is unique to
    this process, so nothing is shared.

    Example:
        >>> host_id() == host_id()
        True
    """
    try:
        with open(_BOOT_ID) as f:
            boot = f.read().strip()
        net = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return f"{os.uname().nodename}/pid-{os.getpid()}"
    return f"{os.uname().nodename}/{boot}/net-{net}"


class SharedSegments:
    """The segments one process created or attached (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._own: dict[str, tuple[int, mmap.mmap]] = {}
        self._attached: dict[str, mmap.mmap] = {}

    def create(self, nbytes: int) -> tuple[str, np.ndarray]:
        """A new zero-filled segment of ``nbytes``: its path and a writable uint8 view.

        Raises:
            OSError: ``/dev/shm`` is missing or full.
        """
        name = f"{_DIR}/kvsync-{os.getpid()}-{next(_counter)}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.unlink(name)
            os.ftruncate(fd, max(nbytes, 1))
            mm = mmap.mmap(fd, max(nbytes, 1))
        except BaseException:
            os.close(fd)
            raise
        path = f"/proc/{os.getpid()}/fd/{fd}"
        with self._lock:
            self._own[path] = (fd, mm)
        return path, np.frombuffer(mm, np.uint8, count=nbytes)

    def attach(self, path: str, nbytes: int) -> np.ndarray:
        """A writable uint8 view of another process's segment (mapped once, cached).

        Only paths of the form ``/proc/<pid>/fd/<fd>`` whose descriptor is a kvsync
        segment (``/dev/shm/kvsync-*``, checked again on the opened descriptor) are
        accepted, so a peer cannot make this process open or map any other file.

        Raises:
            PermissionError: ``path`` is not a kvsync segment.
            OSError: the segment is gone (its process exited) or too small.
        """
        with self._lock:
            mm = self._attached.get(path)
            if mm is None:
                if not _SEGMENT_PATH.fullmatch(path):
                    raise PermissionError(f"{path!r} is not a shared-memory descriptor path")
                _check_segment(os.readlink(path), path)
                fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    _check_segment(os.readlink(f"/proc/self/fd/{fd}"), path)
                    mm = mmap.mmap(fd, 0)
                finally:
                    os.close(fd)
                self._attached[path] = mm
        if len(mm) < nbytes:
            raise OSError(f"shared segment {path} has {len(mm)} bytes, {nbytes} needed")
        return np.frombuffer(mm, np.uint8, count=nbytes)

    def close(self) -> None:
        """Unmap everything (views must no longer be used) and close owned segments."""
        with self._lock:
            maps = [mm for _, mm in self._own.values()] + list(self._attached.values())
            fds = [fd for fd, _ in self._own.values()]
            self._own.clear()
            self._attached.clear()
        for mm in maps:
            _unmap(mm)
        for fd in fds:
            os.close(fd)


def _unmap(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # a numpy view still exists: the GC unmaps it later
        pass
