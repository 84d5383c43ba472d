"""An in-process, thread-safe store driving the server's own state machine.

Strategy: every call takes one lock, hands its request to a shared
:class:`~kvsync.server.state.StoreState` under a fresh connection id, and files every reply
that comes out into a mailbox keyed by connection id (a ``set`` may answer other threads'
parked ``wait``\\ s). A caller whose request was parked waits on the condition until its
reply is in the mailbox, waking at the state's next deadline to run ``expire()``; so
blocking calls cost no polling and every wait is bounded by the request's deadline.

Example:
    >>> import threading
    >>> store = HashStore()
    >>> t = threading.Thread(target=store.wait, args=(["ready"],))
    >>> t.start()
    >>> store.set("ready", "1")
    >>> t.join(timeout=10)
    >>> t.is_alive()
    False
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

from kvsync import defaults, log
from kvsync.errors import StoreTimeoutError
from kvsync.server.state import Outgoing, StoreState
from kvsync.store.base import Store, Timeout

__all__ = ["HashStore"]


def _owned(msg: object) -> object:
    """``msg`` with every bytearray/memoryview field copied to bytes (callers may reuse
    their buffers after the call, but the store keeps what it is given)."""
    changes: dict[str, object] = {}
    for f in dataclasses.fields(msg):  # type: ignore[arg-type]
        v = getattr(msg, f.name)
        if isinstance(v, bytearray | memoryview):
            changes[f.name] = bytes(v)
        elif isinstance(v, tuple) and any(isinstance(x, bytearray | memoryview) for x in v):
            changes[f.name] = tuple(
                bytes(x) if isinstance(x, bytearray | memoryview) else x for x in v
            )
    return dataclasses.replace(msg, **changes) if changes else msg  # type: ignore[type-var]


class HashStore(Store):
    """A Store held in this process's memory, safe to share between threads.

    Same semantics as ``TCPStore`` (``get`` of a missing key returns ``b""``).

    Args:
        timeout: default deadline of every operation, seconds or ``timedelta``.
        max_key_bytes: longest key accepted, in UTF-8 bytes.
        max_value_bytes: largest value accepted.

    Raises:
        TypeError, ValueError: bad ``timeout``.

    Example:
        >>> s = HashStore(timeout=60)
        >>> s.set("k", "v"); s.get("k"), s.num_keys()
        (b'v', 1)
        >>> s
        HashStore(timeout=60)
    """

    def __init__(
        self,
        timeout: Timeout = defaults.DEFAULT_TIMEOUT,
        *,
        max_key_bytes: int = defaults.MAX_KEY_BYTES,
        max_value_bytes: int = defaults.MAX_VALUE_BYTES,
    ) -> None:
        super().__init__(timeout)
        log.configure_from_environment()  # KVSYNC_LOG_LEVEL, as every store: once per process
        self._state = StoreState(max_key_bytes=max_key_bytes, max_value_bytes=max_value_bytes)
        self._cond = threading.Condition(threading.Lock())
        self._mailbox: dict[int, object] = {}
        self._ids = itertools.count(1)

    def _call(self, msg: object, timeout: float) -> object:
        msg = _owned(msg)
        with self._cond:
            conn_id = next(self._ids)
            start = time.monotonic()
            deadline = start + timeout
            out = self._state.handle(conn_id, 0, msg, start)
            if len(out) == 1 and out[0].conn_id == conn_id:  # the common case: no wake-ups
                return out[0].reply
            self._deliver(out)
            while conn_id not in self._mailbox:
                now = time.monotonic()
                if now >= deadline:  # the state should have expired it first
                    self._state.drop_connection(conn_id)
                    raise StoreTimeoutError(
                        f"no reply to {type(msg).__name__} within {timeout:.2f} s"
                    )
                next_deadline = self._state.next_deadline()
                wake = deadline if next_deadline is None else min(deadline, next_deadline)
                self._cond.wait(max(wake - now, 0.0))
                self._deliver(self._state.expire(time.monotonic()))
            return self._mailbox.pop(conn_id)

    def _deliver(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            self._mailbox[out.conn_id] = out.reply
        if outgoing:
            self._cond.notify_all()
