"""Every environment variable kvsync reads, in one place.

Nothing else in kvsync touches ``os.environ``: code asks :func:`read` for an
:class:`Environment` (or passes its own mapping, which is how tests stay hermetic), which
reads each variable when it is first used. The launcher writes the same names through
:func:`worker_environment`.

Example:
    >>> from kvsync import env
    >>> e = env.read({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "1",
    ...               "WORLD_SIZE": "4"})
    >>> (e.master_addr, e.master_port, e.rank, e.world_size)
    ('127.0.0.1', 29500, 1, 4)
    >>> env.read({}).rank is None
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar, overload

from kvsync.errors import InvalidPortError

__all__ = [
    "DIALECT_CHOICES",
    "DMLC_NUM_SERVER",
    "DMLC_NUM_WORKER",
    "DMLC_PS_ROOT_PORT",
    "DMLC_PS_ROOT_URI",
    "DMLC_ROLE",
    "GROUP_RANK",
    "KVSYNC_BIGARRAY_BOUND",
    "KVSYNC_FRAME_TIMEOUT",
    "KVSYNC_HANDSHAKE_TIMEOUT",
    "KVSYNC_IDLE_TIMEOUT",
    "KVSYNC_LOG_LEVEL",
    "KVSYNC_MAX_CONNECTIONS",
    "KVSYNC_MAX_PENDING_BYTES",
    "KVSYNC_NODE_ADDR",
    "KVSYNC_PROGRESS_SECONDS",
    "KVSYNC_PS_SHM",
    "KVSYNC_SECRET",
    "KVSYNC_SERVER_SETUP",
    "KVSYNC_STORE_ADDR",
    "KVSYNC_STORE_DIALECT",
    "KVSYNC_STORE_EXIT_GRACE",
    "KVSYNC_STORE_PORT",
    "KVSYNC_STORE_SERVER",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "MS_RECEIVE_MSG_TIMEOUT",
    "MXNET_KVSTORE_BIGARRAY_BOUND",
    "PS_VERBOSE",
    "RANK",
    "STORE_SERVER_CHOICES",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "WORLD_SIZE",
    "Environment",
    "check_port",
    "child_environment",
    "read",
    "worker_environment",
]

MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
RANK = "RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_RANK = "LOCAL_RANK"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
GROUP_RANK = "GROUP_RANK"
#: The reference document's per-message receive timeout, in seconds.
MS_RECEIVE_MSG_TIMEOUT = "MS_RECEIVE_MSG_TIMEOUT"
#: Set by torchrun when its agent already serves a torch store on MASTER_PORT.
TORCHELASTIC_USE_AGENT_STORE = "TORCHELASTIC_USE_AGENT_STORE"
#: Set by torchrun: how many times its agent restarted the workers (0 on the first run).
TORCHELASTIC_RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"
#: Set by torchrun (and kvsync-run): the most restarts ``--max-restarts`` allows.
TORCHELASTIC_MAX_RESTARTS = "TORCHELASTIC_MAX_RESTARTS"
#: Set by torchrun (and kvsync-run): the job id given with ``--rdzv-id``.
TORCHELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"
#: Where kvsync's own store server listens when it is not MASTER_ADDR:MASTER_PORT.
KVSYNC_STORE_ADDR = "KVSYNC_STORE_ADDR"
KVSYNC_STORE_PORT = "KVSYNC_STORE_PORT"
#: Where ``TCPStore(is_master=True)`` runs its server: ``thread`` or ``process``.
KVSYNC_STORE_SERVER = "KVSYNC_STORE_SERVER"
#: The values :data:`KVSYNC_STORE_SERVER` takes (any case).
STORE_SERVER_CHOICES = ("thread", "process")
#: Seconds a master's server keeps serving connected clients once its store is left.
KVSYNC_STORE_EXIT_GRACE = "KVSYNC_STORE_EXIT_GRACE"
#: The address this node's listening sockets bind and register in a multi-host job
#: (``kvsync-run --node-addr``); default: this host's address on the route to MASTER_ADDR.
KVSYNC_NODE_ADDR = "KVSYNC_NODE_ADDR"
#: Server limits (``kvsync serve`` flags of the same names; defaults in kvsync.defaults).
KVSYNC_HANDSHAKE_TIMEOUT = "KVSYNC_HANDSHAKE_TIMEOUT"
KVSYNC_FRAME_TIMEOUT = "KVSYNC_FRAME_TIMEOUT"
KVSYNC_IDLE_TIMEOUT = "KVSYNC_IDLE_TIMEOUT"
KVSYNC_MAX_CONNECTIONS = "KVSYNC_MAX_CONNECTIONS"
KVSYNC_MAX_PENDING_BYTES = "KVSYNC_MAX_PENDING_BYTES"
#: The protocol a TCPStore client speaks: "kvsync" or "torch" (kvsync.store.dialect).
KVSYNC_STORE_DIALECT = "KVSYNC_STORE_DIALECT"
#: The values :data:`KVSYNC_STORE_DIALECT` takes (any case).
DIALECT_CHOICES = ("kvsync", "torch")
#: Shared secret for the HMAC handshake (optional).
KVSYNC_SECRET = "KVSYNC_SECRET"
#: A module a parameter-server process imports before serving (``kvsync-run --server-setup``).
KVSYNC_SERVER_SETUP = "KVSYNC_SERVER_SETUP"
#: Arrays with more elements than this are split over all parameter servers.
KVSYNC_BIGARRAY_BOUND = "KVSYNC_BIGARRAY_BOUND"
#: Level of kvsync's loggers (``DEBUG``, ``INFO``, ``WARNING``, ... or a number); the
#: launcher passes its ``--log-level`` to every child through it.
KVSYNC_LOG_LEVEL = "KVSYNC_LOG_LEVEL"
#: Seconds between "still waiting" log lines of a long wait (0 turns them off).
KVSYNC_PROGRESS_SECONDS = "KVSYNC_PROGRESS_SECONDS"
#: "0" keeps dist KVStore workers from using shared memory with servers on their host.
KVSYNC_PS_SHM = "KVSYNC_PS_SHM"
#: MXNet's name for KVSYNC_BIGARRAY_BOUND (read when that one is unset).
MXNET_KVSTORE_BIGARRAY_BOUND = "MXNET_KVSTORE_BIGARRAY_BOUND"
#: ps-lite's log switch (1: INFO, 2: DEBUG), read when KVSYNC_LOG_LEVEL is unset.
PS_VERBOSE = "PS_VERBOSE"
DMLC_ROLE = "DMLC_ROLE"
DMLC_NUM_WORKER = "DMLC_NUM_WORKER"
DMLC_NUM_SERVER = "DMLC_NUM_SERVER"
DMLC_PS_ROOT_URI = "DMLC_PS_ROOT_URI"
DMLC_PS_ROOT_PORT = "DMLC_PS_ROOT_PORT"


def _int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


#: The highest TCP port number.
MAX_PORT = 65535


def check_port(port: int, what: str = "port") -> int:
    """Return ``port`` if it is a TCP port number (0-65535; 0 means "pick a free one").

    The socket layer silently wraps larger numbers (70000 binds 4464), so every place that
    takes a port (API arguments, command-line flags, environment variables) checks it here.

    Raises:
        InvalidPortError: ``port`` is outside 0-65535; the message names ``what``.

    Example:
        >>> check_port(29500)
        29500
        >>> check_port(70000, "--port")
        Traceback (most recent call last):
        ...
        kvsync.errors.InvalidPortError: --port=70000 is not a TCP port (0-65535)
    """
    if not 0 <= port <= MAX_PORT:
        raise InvalidPortError(f"{what}={port} is not a TCP port (0-{MAX_PORT})")
    return port


def _port(environ: Mapping[str, str], name: str) -> int | None:
    value = _int(environ, name)
    return None if value is None else check_port(value, f"environment variable {name}")


def _float(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


def _str(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name, "").strip()
    return raw or None


_T = TypeVar("_T")

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = _str(environ, name)
    if raw is None or raw.lower() in choices:
        return None if raw is None else raw.lower()
    raise ValueError(f"environment variable {name}={raw!r} is not one of {', '.join(choices)}")


def _seconds(environ: Mapping[str, str], name: str) -> float | None:
    value = _float(environ, name)
    if value is not None and not 0 <= value < float("inf"):  # also refuses nan
        raise ValueError(f"environment variable {name}={value!r} must be finite and >= 0 seconds")
    return value


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _str(environ, name)
    if raw is None:
        return default
    word = raw.lower()
    if word in _TRUE_WORDS or word in _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise ValueError(
        f"environment variable {name}={raw!r} is not a boolean (1/0, true/false, yes/no, on/off)"
    )


def _first(*values: _T | None) -> _T | None:
    return next((v for v in values if v is not None), None)


def _ps_verbose(environ: Mapping[str, str]) -> str | None:
    level = _int(environ, PS_VERBOSE)
    if not level:
        return None
    return "INFO" if level == 1 else "DEBUG"


def _bigarray_bound(environ: Mapping[str, str], name: str) -> int | None:
    return _first(_int(environ, name), _int(environ, MXNET_KVSTORE_BIGARRAY_BOUND))


def _log_level(environ: Mapping[str, str], name: str) -> str | None:
    return _first(_str(environ, name), _ps_verbose(environ))


def _store_server(environ: Mapping[str, str], name: str) -> str | None:
    return _choice(environ, name, STORE_SERVER_CHOICES)


def _store_dialect(environ: Mapping[str, str], name: str) -> str | None:
    return _choice(environ, name, DIALECT_CHOICES)


def _false_unless_set(environ: Mapping[str, str], name: str) -> bool:
    return _bool(environ, name, False)


def _true_unless_set(environ: Mapping[str, str], name: str) -> bool:
    return _bool(environ, name, True)


class _Variable(Generic[_T]):
    """One attribute of :class:`Environment`: parsed from its mapping on first access, then
    kept on the instance (so a TCPStore pays for the 2 or 3 variables it uses, not all)."""

    def __init__(self, name: str, parse: Callable[[Mapping[str, str], str], _T]) -> None:
        self.name, self._parse = name, parse
        self._attr = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self._attr = attr

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Variable[_T]: ...

    @overload
    def __get__(self, obj: Environment, owner: type | None = None) -> _T: ...

    def __get__(self, obj: Environment | None, owner: type | None = None) -> _T | _Variable[_T]:
        if obj is None:  # on the class (documentation tools): the descriptor itself
            return self
        value = self._parse(obj.environ, self.name)
        obj.__dict__[self._attr] = value  # shadows this (non-data) descriptor from now on
        return value


class Environment:
    """kvsync's variables in one mapping; each attribute is ``None`` where unset.

    Attributes mirror the variable names in lower case (see the module constants). A
    variable is read and parsed the first time its attribute is used, and kept.

    Raises:
        ValueError: (on access) a variable that must be a number or a boolean is not one;
            the message names it.
    """

    master_addr = _Variable(MASTER_ADDR, _str)
    master_port = _Variable(MASTER_PORT, _port)
    rank = _Variable(RANK, _int)
    world_size = _Variable(WORLD_SIZE, _int)
    local_rank = _Variable(LOCAL_RANK, _int)
    local_world_size = _Variable(LOCAL_WORLD_SIZE, _int)
    group_rank = _Variable(GROUP_RANK, _int)
    receive_timeout = _Variable(MS_RECEIVE_MSG_TIMEOUT, _float)
    use_agent_store = _Variable(TORCHELASTIC_USE_AGENT_STORE, _false_unless_set)
    store_addr = _Variable(KVSYNC_STORE_ADDR, _str)
    store_port = _Variable(KVSYNC_STORE_PORT, _port)
    store_server = _Variable(KVSYNC_STORE_SERVER, _store_server)
    store_exit_grace = _Variable(KVSYNC_STORE_EXIT_GRACE, _seconds)
    node_addr = _Variable(KVSYNC_NODE_ADDR, _str)
    handshake_timeout = _Variable(KVSYNC_HANDSHAKE_TIMEOUT, _seconds)
    frame_timeout = _Variable(KVSYNC_FRAME_TIMEOUT, _seconds)
    idle_timeout = _Variable(KVSYNC_IDLE_TIMEOUT, _seconds)
    max_connections = _Variable(KVSYNC_MAX_CONNECTIONS, _int)
    max_pending_bytes = _Variable(KVSYNC_MAX_PENDING_BYTES, _int)
    store_dialect = _Variable(KVSYNC_STORE_DIALECT, _store_dialect)
    secret = _Variable(KVSYNC_SECRET, _str)
    server_setup = _Variable(KVSYNC_SERVER_SETUP, _str)
    bigarray_bound = _Variable(KVSYNC_BIGARRAY_BOUND, _bigarray_bound)
    ps_shm = _Variable(KVSYNC_PS_SHM, _true_unless_set)
    log_level = _Variable(KVSYNC_LOG_LEVEL, _log_level)
    progress_seconds = _Variable(KVSYNC_PROGRESS_SECONDS, _seconds)
    dmlc_role = _Variable(DMLC_ROLE, _str)
    dmlc_num_worker = _Variable(DMLC_NUM_WORKER, _int)
    dmlc_num_server = _Variable(DMLC_NUM_SERVER, _int)
    dmlc_ps_root_uri = _Variable(DMLC_PS_ROOT_URI, _str)
    dmlc_ps_root_port = _Variable(DMLC_PS_ROOT_PORT, _port)

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def __repr__(self) -> str:
        return f"Environment({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def read(environ: Mapping[str, str] | None = None) -> Environment:
    """kvsync's variables in ``environ`` (default: the process environment).

    Example:
        >>> read({"MS_RECEIVE_MSG_TIMEOUT": "30"}).receive_timeout
        30.0
        >>> read({"RANK": "zero"}).rank
        Traceback (most recent call last):
        ...
        ValueError: environment variable RANK='zero' is not an integer
    """
    return Environment(os.environ if environ is None else environ)


def worker_environment(
    *,
    master_addr: str,
    master_port: int,
    rank: int,
    world_size: int,
    local_rank: int,
    local_world_size: int,
    group_rank: int,
    role: str = "worker",
    num_servers: int = 0,
) -> dict[str, str]:
    """The variables the launcher exports to one child process (merged over its own).

    Example:
        >>> e = worker_environment(master_addr="127.0.0.1", master_port=5, rank=1,
        ...     world_size=2, local_rank=1, local_world_size=2, group_rank=0)
        >>> e["RANK"], e["DMLC_ROLE"], e["DMLC_NUM_WORKER"]
        ('1', 'worker', '2')
    """
    return {
        MASTER_ADDR: master_addr,
        MASTER_PORT: str(master_port),
        RANK: str(rank),
        WORLD_SIZE: str(world_size),
        LOCAL_RANK: str(local_rank),
        LOCAL_WORLD_SIZE: str(local_world_size),
        GROUP_RANK: str(group_rank),
        DMLC_ROLE: role,
        DMLC_NUM_WORKER: str(world_size),
        DMLC_NUM_SERVER: str(num_servers),
        DMLC_PS_ROOT_URI: master_addr,
        DMLC_PS_ROOT_PORT: str(master_port),
    }


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The process environment with ``extra`` merged over it, for a child process.

    Example:
        >>> child_environment({"RANK": "3"})["RANK"]
        '3'
    """
    return {**os.environ, **extra}
