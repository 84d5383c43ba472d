"""Two "hosts" on one Linux machine: network namespaces joined by a veth pair.

A :class:`HostPair` makes two network namespaces, each with its loopback up and one end
of a veth pair (:data:`ADDRESSES`, a /24 that exists only inside them), so a multi-host
job (a ``kvsync-run`` per "host", dialling each other over the veth link) runs on one
machine: what the tests of multi-host jobs and ``kvsync bench kvstore --hosts 2`` use.
Namespaces are named ``<prefix><pid>a`` and ``<prefix><pid>b`` so parallel runs never
clash; :meth:`HostPair.close` deletes them by name (with them the veth pair), and
:meth:`HostPair.create` first deletes leftovers of the same prefix whose process is gone.
Needs root and iproute2 (:func:`unavailable_reason` says why not). Each namespace also
gets its own host identity (:func:`kvsync.kv.shm.host_id`), so the two never share memory.

The same by hand::

    ip netns add hostA && ip netns add hostB
    ip -n hostA link add kvs0 type veth peer name kvs0 netns hostB
    ip -n hostA addr add 10.77.0.1/24 dev kvs0 && ip -n hostB addr add 10.77.0.2/24 dev kvs0
    for h in hostA hostB; do ip -n $h link set lo up; ip -n $h link set kvs0 up; done
    ip netns exec hostA kvsync-run ...    # and in hostB; at the end: ip netns del hostA ...

Example:
    >>> pair = HostPair("kvsdoc")
    >>> pair.command(1, ["python", "-V"])[:4] == ["ip", "netns", "exec", pair.names[1]]
    True
    >>> pair.addresses
    ('10.77.0.1', '10.77.0.2')
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

__all__ = [
    "ADDRESSES",
    "DEVICE",
    "HostPair",
    "launcher_argv",
    "remove_stale",
    "unavailable_reason",
]

#: The veth addresses of the two namespaces (a /24 that exists only inside them).
ADDRESSES = ("10.77.0.1", "10.77.0.2")
#: The name of the veth end inside each namespace.
DEVICE = "kvs0"
_PREFIX_LEN = 24
_IP_TIMEOUT = 10.0


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not Linux, not root, no ``ip``), or ``None``.

    Example:
        >>> unavailable_reason() is None or isinstance(unavailable_reason(), str)
        True
    """
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    return None


def launcher_argv(node_rank: int, port: int, *args: str) -> list[str]:
    """The ``kvsync-run`` command line of node ``node_rank`` of a two-node job whose store
    node 0 hosts on the first address, port ``port``; ``args`` follow (workers, script).

    Example:
        >>> launcher_argv(1, 29611, "t.py")[5:]
        ['--node-rank', '1', '--master-addr', '10.77.0.1', '--master-port', '29611', 't.py']
    """
    return [sys.executable, "-m", "kvsync.run", "--nnodes", "2", "--node-rank", str(node_rank),
            "--master-addr", ADDRESSES[0], "--master-port", str(port), *args]  # fmt: skip


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise OSError(f"`ip {' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(prefix: str) -> list[str]:
    """Delete namespaces ``<prefix><pid>a|b`` whose process ``pid`` is gone; their names.

    Raises:
        OSError: ``ip netns`` cannot list namespaces.
    """
    pattern = re.compile(re.escape(prefix) + r"([0-9]+)[ab]")
    removed = []
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split(" ", 1)[0]
        match = pattern.fullmatch(name)
        if match and not _alive(int(match.group(1))) and int(match.group(1)) != os.getpid():
            _ip("netns", "delete", name, check=False)
            removed.append(name)
    return removed


class HostPair:
    """Two network namespaces joined by a veth pair; a context manager.

    Args:
        prefix: start of the namespace names (letters; a pid and ``a``/``b`` follow).
    """

    def __init__(self, prefix: str = "kvsync") -> None:
        if not prefix.isalpha():
            raise ValueError(f"namespace prefix must be letters, got {prefix!r}")
        self.prefix = prefix
        tag = f"{prefix}{os.getpid()}"
        self.names = (f"{tag}a", f"{tag}b")
        self.addresses = ADDRESSES
        self._made: list[str] = []

    def create(self) -> HostPair:
        """Make both namespaces and the link (after removing stale ones of this prefix).

        Raises:
            OSError: an ``ip`` command failed (everything made so far is deleted).
        """
        remove_stale(self.prefix)
        try:
            for name in self.names:
                _ip("netns", "delete", name, check=False)  # ours, from an earlier create
                _ip("netns", "add", name)
                self._made.append(name)
            a, b = self.names
            _ip("-n", a, "link", "add", DEVICE, "type", "veth", "peer", "name", DEVICE, "netns", b)
            for name, address in zip(self.names, self.addresses, strict=True):
                _ip("-n", name, "addr", "add", f"{address}/{_PREFIX_LEN}", "dev", DEVICE)
                _ip("-n", name, "link", "set", "lo", "up")
                _ip("-n", name, "link", "set", DEVICE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``host`` (0 or 1), with this environment."""
        return ["ip", "netns", "exec", self.names[host], *argv]

    def close(self) -> None:
        """Delete both namespaces by name (and with them the veth pair); idempotent."""
        for name in self._made:
            _ip("netns", "delete", name, check=False)
        self._made.clear()

    def __enter__(self) -> HostPair:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
