"""The parameter server's messages (opcodes 0x40-0x7F, replies 0xC0-0xC2).

They share the store's framing, handshake, field encodings and :class:`Opcode` space
(:mod:`kvsync.protocol.messages`); the server answers them with the store's ``OkReply``,
``ValueReply`` and ``ErrorReply`` too, and with the array replies below.

Keys travel as "wire keys": ``"i<n>"`` for the int key ``n``, ``"s<name>"`` for the str
key ``name`` (see kvsync.protocol.wire_keys.wire_key), so int and str keys never collide and the
server can hand the original key to the updater. Each server holds, per key, one
contiguous row slice of the array (the whole array when it is small). Blocking requests
carry ``timeout_ms`` like the Store API's.

Example:
    >>> from kvsync.protocol.ps_messages import PS_MESSAGE_OF, PSBarrier
    >>> PS_MESSAGE_OF[Opcode.PS_BARRIER] is PSBarrier
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsync.protocol.codec import register
from kvsync.protocol.messages import Buffer, NDArray, Opcode

__all__ = [
    "PS_MESSAGE_OF",
    "PSBarrier",
    "PSHello",
    "PSInit",
    "PSLoadStates",
    "PSPackedReply",
    "PSPull",
    "PSPullRows",
    "PSPullShm",
    "PSPush",
    "PSPushPacked",
    "PSPushRows",
    "PSPushShm",
    "PSSaveStates",
    "PSSetCompression",
    "PSSetOptimizer",
    "PSSetUpdater",
    "PSShmReply",
    "PSShutdown",
    "PSStats",
    "PSValuesReply",
    "PSWaitInit",
    "PSWaiting",
]


@dataclass(slots=True)
class PSHello:
    """First message of a worker connection: who it is and which mode the job runs in.
    Every worker of a job must agree on ``num_workers`` and ``sync``. Reply: OkReply."""

    rank: int
    num_workers: int
    sync: bool


@dataclass(slots=True)
class PSInit:
    """Rank 0 stores the initial value of each key (the row slice this server holds).
    A key already initialised is an INVALID_ARGUMENT error. Reply: OkReply."""

    keys: tuple[str, ...]
    values: tuple[NDArray, ...]


@dataclass(slots=True)
class PSWaitInit:
    """Other ranks' ``init``: park until every key exists (rank 0's init wins).
    Reply: OkReply, or an ErrorReply (TIMEOUT, or CONNECTION when rank 0 is gone)."""

    keys: tuple[str, ...]
    timeout_ms: int


@dataclass(slots=True)
class PSPush:
    """Push gradient rows per key: ``values[i]`` holds rows ``offsets[i]...`` of the slice
    this server keeps for ``keys[i]`` (a big slice travels as several parts, in row order;
    a worker's push is complete when all rows arrived; in sync mode complete pushes are
    summed per round). With ``compressed`` each value is the packed form of the job's
    gradient compression. Reply: OkReply (a bad shape/dtype/key is an ErrorReply and
    changes nothing)."""

    keys: tuple[str, ...]
    values: tuple[NDArray, ...]
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    compressed: bool


@dataclass(slots=True)
class PSPushRows:
    """Push a row-sparse gradient slice: ``rows`` are row numbers local to the slice this
    server holds, ``data`` has one row per entry. Reply: OkReply."""

    key: str
    rows: NDArray
    data: NDArray


@dataclass(slots=True)
class PSPull:
    """Read rows ``offsets[i]`` to ``offsets[i] + counts[i]`` of each key's slice; in sync
    mode wait until every round this worker pushed into has been applied.
    Reply: PSValuesReply in key order."""

    keys: tuple[str, ...]
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    timeout_ms: int


@dataclass(slots=True)
class PSPullRows:
    """Read only ``rows`` (local row numbers) of one key's slice, with the same waiting
    rule as PSPull. Reply: PSValuesReply with one array of ``len(rows)`` rows."""

    key: str
    rows: NDArray
    timeout_ms: int


@dataclass(slots=True)
class PSSetOptimizer:
    """Install an optimizer from its JSON config (``Optimizer.to_config()``); the name must
    be registered in the server process. Reply: OkReply or ErrorReply (UNKNOWN_NAME)."""

    config: str


@dataclass(slots=True)
class PSSetUpdater:
    """Install an updater registered on the server by name (kvsync.server.ps
    ``register_updater``), with JSON ``params``. Reply: OkReply or UNKNOWN_NAME."""

    name: str
    params: str


@dataclass(slots=True)
class PSSetCompression:
    """Gradient-compression parameters (JSON) used to decompress compressed pushes.
    Reply: OkReply."""

    params: str


@dataclass(slots=True)
class PSSaveStates:
    """The server updater's state (``Updater.get_states``). Reply: ValueReply."""

    dump_optimizer: bool


@dataclass(slots=True)
class PSLoadStates:
    """Restore the updater's state saved by PSSaveStates. Reply: OkReply."""

    data: Buffer


@dataclass(slots=True)
class PSBarrier:
    """Park until every worker has entered the barrier. Reply: OkReply, or an ErrorReply
    naming the ranks that left or never came."""

    timeout_ms: int


@dataclass(slots=True)
class PSStats:
    """Counters of this server (bytes in/out, keys, rounds) as JSON. Reply: ValueReply."""


@dataclass(slots=True)
class PSShutdown:
    """Ask the server process to exit once it has replied. Reply: OkReply."""


@dataclass(slots=True)
class PSPushPacked:
    """PSPush of many small parts of one dtype, concatenated (flattened) into ``data`` in
    key order; each part holds ``counts[i]`` rows of its key's slice from row
    ``offsets[i]``, so the server knows where each ends. Reply: OkReply."""

    keys: tuple[str, ...]
    data: NDArray
    offsets: tuple[int, ...]
    counts: tuple[int, ...]


@dataclass(slots=True)
class PSWaiting:
    """This worker is (``waiting``) or is no longer blocked on a request to *another*
    server, so this one can tell when every worker is stuck (uneven pushes across servers).
    Reply: OkReply."""

    waiting: bool


@dataclass(slots=True)
class PSPushShm:
    """Push whole slices that a worker on the same host wrote into its shared-memory
    segments: ``keys[i]``'s slice is in ``paths[i]`` (``/proc/<pid>/fd/<fd>``, see
    kvsync.kv.shm). Each key is its own push, as in PSPush; the server reads them before
    replying, so the worker may reuse the segments after the reply. Reply: OkReply."""

    keys: tuple[str, ...]
    paths: tuple[str, ...]


@dataclass(slots=True)
class PSPullShm:
    """Like PSPull of whole slices, answered with where each slice lives in the server's
    shared memory instead of its bytes. Reply: PSShmReply."""

    keys: tuple[str, ...]
    timeout_ms: int


@dataclass(slots=True)
class PSShmReply:
    """The shared-memory segments holding the slices a PSPullShm asked for, in key order
    (each unchanged until the asking worker pushes its key again)."""

    paths: tuple[str, ...]


@dataclass(slots=True)
class PSPackedReply:
    """The arrays answering a PSPull of many small keys of one dtype, flattened and
    concatenated in request order (the worker knows each one's size)."""

    data: NDArray


@dataclass(slots=True)
class PSValuesReply:
    """Arrays answering PSPull / PSPullRows, in request order."""

    values: tuple[NDArray, ...]


#: opcode -> parameter-server message class.
PS_MESSAGE_OF: dict[Opcode, type] = {
    Opcode.PS_HELLO: PSHello,
    Opcode.PS_INIT: PSInit,
    Opcode.PS_WAIT_INIT: PSWaitInit,
    Opcode.PS_PUSH: PSPush,
    Opcode.PS_PUSH_ROWS: PSPushRows,
    Opcode.PS_PULL: PSPull,
    Opcode.PS_PULL_ROWS: PSPullRows,
    Opcode.PS_SET_OPTIMIZER: PSSetOptimizer,
    Opcode.PS_SET_UPDATER: PSSetUpdater,
    Opcode.PS_SET_COMPRESSION: PSSetCompression,
    Opcode.PS_SAVE_STATES: PSSaveStates,
    Opcode.PS_LOAD_STATES: PSLoadStates,
    Opcode.PS_BARRIER: PSBarrier,
    Opcode.PS_STATS: PSStats,
    Opcode.PS_SHUTDOWN: PSShutdown,
    Opcode.PS_PUSH_SHM: PSPushShm,
    Opcode.PS_PULL_SHM: PSPullShm,
    Opcode.PS_PUSH_PACKED: PSPushPacked,
    Opcode.PS_WAITING: PSWaiting,
    Opcode.PS_VALUES: PSValuesReply,
    Opcode.PS_SHM: PSShmReply,
    Opcode.PS_PACKED: PSPackedReply,
}

register(PS_MESSAGE_OF)  # compiled once, now: the first use of a parameter-server message
