"""Every default value of kvsync, in one place.

Servers, clients and stores read their defaults from here; nothing else hard-codes a
limit or a timeout. Caps are server settings and can be raised per server.

Example:
    >>> from kvsync import defaults
    >>> defaults.MAX_KEY_BYTES, defaults.MAX_VALUE_BYTES == 1 << 30
    (4096, True)
"""

from __future__ import annotations

__all__ = [
    "BIGARRAY_BOUND",
    "CONNECT_BACKOFF_MAX",
    "CONNECT_BACKOFF_MIN",
    "DEFAULT_HOST",
    "DEFAULT_TIMEOUT",
    "FRAME_TIMEOUT_SECONDS",
    "HANDSHAKE_TIMEOUT_SECONDS",
    "IDLE_TIMEOUT_SECONDS",
    "LISTEN_BACKLOG",
    "MAX_CONNECTIONS",
    "MAX_FRAME_BYTES",
    "MAX_KEYS_PER_REQUEST",
    "MAX_KEY_BYTES",
    "MAX_PENDING_BYTES",
    "MAX_VALUE_BYTES",
    "NODE_JOIN_TIMEOUT_SECONDS",
    "NODE_WAIT_NOTICE_SECONDS",
    "PROGRESS_LOG_SECONDS",
    "PS_CHUNK_BYTES",
    "PS_PACK_MAX_BYTES",
    "PS_PACK_MIN_KEYS",
    "PS_PUSH_LINGER_SECONDS",
    "PS_REPLY_GRACE_SECONDS",
    "PS_SHM_MIN_BYTES",
    "PS_STALL_SECONDS",
    "PS_WAITING_NOTICE_SECONDS",
    "SERVER_DEATH_DETECT_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "STORE_EXIT_GRACE_SECONDS",
    "STORE_SERVER",
    "TORCH_MAX_KEYS_PER_REQUEST",
    "TORCH_MAX_KEY_BYTES",
    "TORCH_MAX_VALUE_BYTES",
    "TORCH_PARK_SECONDS",
]

#: Seconds a store operation may take before it fails (torch and the reference use 300).
DEFAULT_TIMEOUT: float = 300.0
#: Address a store binds and dials when none is given.
DEFAULT_HOST: str = "127.0.0.1"
#: Keys must be shorter than 4 KiB (the reference document's limit).
MAX_KEY_BYTES: int = 4096
#: Values must be smaller than 1 GiB (the reference document's limit).
MAX_VALUE_BYTES: int = 1 << 30
#: A whole frame's payload may not exceed this (a value plus its key and field headers).
MAX_FRAME_BYTES: int = MAX_VALUE_BYTES + 2 * MAX_KEY_BYTES + 4096
#: Most keys one multi_get / multi_set / wait may name.
MAX_KEYS_PER_REQUEST: int = 1 << 20
#: A server drops a connection that has not finished the handshake (and authentication)
#: this many seconds after it was accepted.
HANDSHAKE_TIMEOUT_SECONDS: float = 5.0
#: A server drops a connection whose half-received frame got no byte for this long.
FRAME_TIMEOUT_SECONDS: float = 10.0
#: A server drops a connection with nothing parked and no traffic for this long; ``0``
#: never does (training jobs sit idle for hours between rendezvous).
IDLE_TIMEOUT_SECONDS: float = 0.0
#: Connections a server holds at most; the next one gets an error reply saying so.
MAX_CONNECTIONS: int = 16384
#: Bytes a server reserves at most, over all connections, for frames half received
#: (big payloads reserve memory as their bytes arrive); a frame that would need more is
#: refused. Never below one whole frame (a value at its cap must fit).
MAX_PENDING_BYTES: int = 4 << 30
#: The caps of torch's (libuv) store server, which a kvsync client of a torch server checks
#: before sending: torch's server closes the connection on a request over them.
TORCH_MAX_KEY_BYTES: int = 8 * 1024
TORCH_MAX_VALUE_BYTES: int = 8 * 1024 * 1024
TORCH_MAX_KEYS_PER_REQUEST: int = 128 * 1024
#: listen() backlog of the server socket; sized for thousands of ranks connecting at once.
LISTEN_BACKLOG: int = 4096
#: Where ``TCPStore(is_master=True)`` runs its server: "thread" (a thread of the master
#: process, as torch's store does) or "process" (a child process: no GIL shared with the
#: master's own Python work, about half a second more to construct).
STORE_SERVER: str = "thread"
#: A master store dropped without close(), or open when its process exits, keeps its
#: server up for the clients still connected until they disconnect, at most this long.
STORE_EXIT_GRACE_SECONDS: float = 30.0
#: Connect retries back off exponentially with full jitter between these bounds (seconds).
CONNECT_BACKOFF_MIN: float = 0.01
CONNECT_BACKOFF_MAX: float = 1.0
#: A blocked client learns that its server died within this many seconds.
SERVER_DEATH_DETECT_SECONDS: float = 2.0
#: Seconds a launcher of a multi-node job waits for the job's store and the other nodes.
NODE_JOIN_TIMEOUT_SECONDS: float = DEFAULT_TIMEOUT
#: A launcher waiting for the job's store or the other nodes says so this often (seconds).
NODE_WAIT_NOTICE_SECONDS: float = 5.0
#: Seconds between SIGTERM and SIGKILL when the launcher stops its children.
SHUTDOWN_GRACE_SECONDS: float = 5.0
#: Arrays with more elements than this are split over all parameter servers
#: (MXNet's MXNET_KVSTORE_BIGARRAY_BOUND default).
BIGARRAY_BOUND: int = 1_000_000
#: A parameter server on which every worker has been waiting this long, with no message
#: arriving, declares the job's pushes uneven (dist_sync) and fails the waiting requests.
PS_STALL_SECONDS: float = 5.0
#: How much longer than its own timeout a worker waits for a parameter server's reply: a
#: server answers a request it parked with a timeout error itself, so this only bounds a
#: reply that never comes (a stuck or lost server).
PS_REPLY_GRACE_SECONDS: float = 15.0
#: A worker blocked this long on a pull from some servers tells the other servers, so a
#: server can see every worker stuck even when they wait on different servers.
PS_WAITING_NOTICE_SECONDS: float = 1.0
#: Big arrays travel to and from parameter servers in parts of at most this many bytes, so
#: every receive buffer is small enough for the allocator to recycle (no fresh pages).
PS_CHUNK_BYTES: int = 4 << 20
#: A wait that lasts longer logs what it still waits for (and who is missing) this often.
PROGRESS_LOG_SECONDS: float = 10.0
#: Slices of at least this many bytes are kept in shared memory by parameter servers, and
#: workers on the same host push and pull them through it instead of the socket.
PS_SHM_MIN_BYTES: int = 1 << 20
#: A push or pull of at least this many arrays of one dtype, of at most PS_PACK_MAX_BYTES
#: in all, travels as one concatenated array: for small arrays the per-array framing is
#: the cost.
PS_PACK_MIN_KEYS: int = 8
PS_PACK_MAX_BYTES: int = 1 << 20
#: A worker's pushes wait in a bucket per server until a call needs them sent (a pull,
#: ``wait``, a barrier), the bucket holds PS_CHUNK_BYTES, or the oldest waited this long
#: (seconds): so pushes of one key per call go out as one message per server.
PS_PUSH_LINGER_SECONDS: float = 0.002
#: torch's server never times out a WAIT or BARRIER (its client sends CANCEL_WAIT when its
#: own timeout passes); kvsync's parks them this long, then closes that connection (the
#: event loop's select() takes at most ~24 days).
TORCH_PARK_SECONDS: float = 7 * 24 * 3600.0
