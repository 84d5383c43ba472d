"""A blocking client of a PyTorch store server (``torch.distributed.TCPStore``'s protocol).

:class:`TorchClient` has :class:`~kvsync.client.Client`'s ``call(msg, timeout)``: it takes
the Store API's requests of :mod:`kvsync.protocol.messages` and returns their replies, so
:class:`kvsync.TCPStore` runs over either dialect unchanged. Each request becomes the torch
queries that express it, through :data:`_HANDLERS`:

* keys travel with torch's ``/`` prefix (kvsync's ``"a"`` is torch's ``store.get("a")``);
  ``list_keys`` strips it and, as torch's own client does, leaves out keys without it;
* ``wait`` (and every blocking ``get``/``multi_get``/``queue_pop``) is a WAIT with torch's
  timeout dance: when the deadline passes, CANCEL_WAIT; the connection stays usable and the
  timeout error names the keys still missing (checked one by one, at most
  :data:`_NAMED_MISSING`);
* a blocking ``queue_pop`` waits for the queue, pops, and waits again if another client won
  the item;
* ``barrier`` is not here: torch's BARRIER keeps a different counter, so
  :class:`kvsync.TCPStore` runs :func:`kvsync.store.sync.barrier` (add/set/wait), whose keys
  are those of kvsync's server-side barrier.

Requests that torch's protocol cannot express raise
:class:`~kvsync.errors.UnsupportedOperationError`. torch's protocol is strictly one request
at a time, so one lock serialises calls (a blocking ``wait`` holds the connection, as in
torch's client). A torch server closes the connection on a request it cannot serve (e.g.
``add`` to a value that is not an integer); the error names that request and the client is
closed. Caps: torch's libuv server refuses keys over 8 KiB (``/`` included), values over
8 MiB and more than 128 Ki keys per request by closing the connection, so they are checked
here first (:class:`~kvsync.errors.LimitExceededError`), and replies are held to the same
caps. The bytes are :mod:`kvsync.protocol.torch_connection`'s (sans-IO, client role); big
values are received straight into their own buffer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from kvsync import defaults
from kvsync.client.connect import Backoff, connect
from kvsync.client.lifetime import ConnectionLifetime
from kvsync.errors import (
    KVSyncError,
    LimitExceededError,
    RemoteProtocolError,
    ServerError,
    StoreConnectionError,
    StoreTimeoutError,
    UnsupportedOperationError,
    VersionMismatchError,
)
from kvsync.protocol import messages as m
from kvsync.protocol import torch_wire as tw
from kvsync.protocol.connection import NEED_DATA, Role
from kvsync.protocol.fields import Limits
from kvsync.protocol.torch_connection import TorchConnection

__all__ = ["TORCH_LIMITS", "TorchClient"]

logger = logging.getLogger(__name__)

#: The caps of torch's libuv store server: requests are checked against them before they
#: are sent (the server would close the connection), replies when they are decoded.
TORCH_LIMITS = Limits(
    max_key_bytes=defaults.TORCH_MAX_KEY_BYTES,
    max_value_bytes=defaults.TORCH_MAX_VALUE_BYTES,
    max_items=defaults.TORCH_MAX_KEYS_PER_REQUEST,
)
#: At most this many missing keys are looked up to name them in a timeout error.
_NAMED_MISSING = 16
#: Seconds granted to the server to answer a CANCEL_WAIT.
_CANCEL_GRACE = 5.0


def _wire(key: str) -> str:
    """torch's wire key of ``key`` (its ``/`` prefix), within the server's cap."""
    wire = "/" + key
    n = len(wire) if wire.isascii() else len(wire.encode())
    if n > TORCH_LIMITS.max_key_bytes:
        raise LimitExceededError(
            f"key {key[:32]!r}... is {n - 1} bytes, over the torch store's cap of "
            f"{TORCH_LIMITS.max_key_bytes - 1} (8 KiB with torch's '/' prefix)"
        )
    return wire


def _wires(keys: tuple[str, ...]) -> tuple[str, ...]:
    if len(keys) > TORCH_LIMITS.max_items:
        raise LimitExceededError(
            f"{len(keys)} keys in one request, over the torch store's cap of "
            f"{TORCH_LIMITS.max_items}"
        )
    return tuple(_wire(k) for k in keys)


def _value(value: m.Buffer, key: str) -> m.Buffer:
    """``value``, within torch's cap on values."""
    n = memoryview(value).nbytes
    if n > TORCH_LIMITS.max_value_bytes:
        raise LimitExceededError(
            f"value of {n} bytes for key {key!r} is over the torch store's cap of "
            f"{TORCH_LIMITS.max_value_bytes} bytes"
        )
    return value


class TorchClient(ConnectionLifetime):
    """A connection to a torch store server, with :class:`~kvsync.client.Client`'s API.

    Args:
        host: server address (a numeric address is used literally).
        port: server port.
        timeout: default seconds to wait for a reply (and to connect, unless
            ``connect_timeout`` is given).
        connect_timeout: seconds to keep retrying the connection and torch's handshake
            (VALIDATE, then a PING that must be echoed).
        timeout_hint: text appended to reply-timeout errors.

    Raises:
        StoreConnectionError: unresolvable host, non-retryable connect error, or the server
            closed the connection during the handshake.
        StoreTimeoutError: nothing accepted the connection or echoed the ping in time.
        VersionMismatchError: the server answered the ping with something else (not a
            torch store server).

    Example:
        >>> import datetime, torch.distributed as dist  # doctest: +SKIP
        >>> server = dist.TCPStore("127.0.0.1", 0, is_master=True)  # doctest: +SKIP
        >>> with TorchClient("127.0.0.1", server.port, timeout=5) as c:  # doctest: +SKIP
        ...     c.call(m.Add("n", 2)).value
        2
    """


    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        connect_timeout: float | None = None,
        timeout_hint: str = "",
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.address = f"{host}:{port}"
        self.peer = f"torch store {self.address}"
        self.timeout_hint = timeout_hint
        connect_timeout = timeout if connect_timeout is None else connect_timeout
        deadline = time.monotonic() + connect_timeout
        self._lock = threading.Lock()
        self._error: KVSyncError | None = None
        self._nonce = os.getpid() & 0xFFFFFFFF
        self._sock = connect(host, port, connect_timeout, Backoff())
        self._proto = TorchConnection(Role.CLIENT, limits=TORCH_LIMITS)
        try:
            self._send(self._proto.send(tw.Validate(tw.MAGIC)), "the handshake")
            self._send(self._proto.send(tw.Ping(self._nonce)), "the handshake")
            reply = self._receive(deadline, "the handshake's ping")
            if reply != tw.PingReply(self._nonce):
                raise RemoteProtocolError(f"{reply} to ping {self._nonce}")
        except (RemoteProtocolError, StoreConnectionError) as exc:
            self._fail(exc)
            raise VersionMismatchError(
                f"{self.address} is not a torch store server (its answer to torch's "
                f"handshake: {exc})"
            ) from exc
        except BaseException as exc:
            self._fail(StoreConnectionError(str(exc)))
            raise

    # --- the Client API -------------------------------------------------------------------

    def call(self, msg: object, timeout: float | None = None) -> object:
        """Carry out the Store API request ``msg``; its reply message.

        Raises:
            UnsupportedOperationError: torch's protocol has no way to express ``msg``.
            StoreTimeoutError: the server did not answer (or a wait did not end) in time.
            StoreConnectionError: the connection is lost; names the request.
            LimitExceededError: a key, value or key count over torch's caps (nothing sent).
        """
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise UnsupportedOperationError(
                f"{type(msg).__name__} cannot be expressed in torch's store protocol "
                f"(server {self.address})"
            )
        with self._lock:
            if self._error is not None:
                raise type(self._error)(str(self._error))
            return handler(self, msg, self.timeout if timeout is None else timeout)

    # --- one round trip -------------------------------------------------------------------

    def _ask(self, request: object, timeout: float) -> Any:
        """Send one torch request and return its decoded reply (``None`` if it has none)."""
        self._send(self._proto.send(request), request)
        if not self._proto.awaiting_replies:
            return None
        return self._receive(time.monotonic() + timeout, request)

    def _send(self, parts: list[Any], what: object) -> None:
        """Send one request's buffers; ``what`` (the request, or a label) names it in errors."""
        try:
            self._sock.settimeout(max(self.timeout, 0.001))
            for part in parts:  # small fields come joined; a big value is its own part
                self._sock.sendall(part)
        except OSError as exc:
            raise self._lost(what, exc) from exc

    def _receive(self, deadline: float, what: object, *, cancellable: bool = False) -> Any:
        """The next reply, or :class:`StoreTimeoutError` at ``deadline``. A late reply would
        be taken for the next request's (torch's replies carry no request id), so the
        connection is closed then, unless the request is ``cancellable`` (a WAIT, which
        CANCEL_WAIT brings back in step)."""
        for _ in range(1_000_000):
            try:
                event = self._proto.next_event()
            except KVSyncError as exc:  # the server's bytes break the protocol or a cap
                raise self._lost(what, exc) from exc
            if event is not NEED_DATA:
                return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = StoreTimeoutError(
                    f"no reply from torch store {self.address} to {_describe(what)} in time"
                    f"{'' if cancellable else ' (connection closed)'}{self.timeout_hint}"
                )
                if not cancellable:
                    self._fail(error)
                raise error
            try:
                self._sock.settimeout(remaining)
                n, _ = self._proto.receive_from(self._sock.recv_into)
            except TimeoutError:
                continue
            except OSError as exc:
                raise self._lost(what, exc) from exc
            if n == 0:
                raise self._lost(what, "the server closed the connection")
        raise StoreConnectionError(f"torch store {self.address} never completed {_describe(what)}")

    def _lost(self, what: object, cause: object) -> KVSyncError:
        error: KVSyncError = StoreConnectionError(
            f"lost the connection to torch store {self.address} during {_describe(what)}: {cause} "
            "(a torch server closes a connection on a request it cannot serve, such as an "
            "add to a value that is not an integer)"
        )
        self._fail(error)
        return error

    def _fail(self, exc: KVSyncError) -> None:
        if self._error is None:
            self._error = exc
            logger.debug("client of torch store %s failed: %s", self.address, exc)
            self._sock.close()

    # --- waiting --------------------------------------------------------------------------

    def _wait(self, keys: tuple[str, ...], timeout: float) -> None:
        """WAIT with torch's cancel dance; the timeout error names the missing keys."""
        self._send(self._proto.send(tw.Wait(_wires(keys))), "wait")
        try:
            self._receive(time.monotonic() + timeout, "wait", cancellable=True)
            return
        except StoreTimeoutError:
            pass
        self._send(self._proto.send(tw.CancelWait()), "cancel_wait")
        answer = self._receive(time.monotonic() + _CANCEL_GRACE, "cancel_wait")
        if isinstance(answer, tw.StopWaiting):  # the keys came just before the cancel
            self._receive(time.monotonic() + _CANCEL_GRACE, "cancel_wait")
            return
        missing = [
            k
            for k in keys[:_NAMED_MISSING]
            if not self._ask(tw.Check((_wire(k),)), self.timeout).ready
        ]
        more = " and more" if len(keys) > _NAMED_MISSING else ""
        raise StoreTimeoutError(
            f"wait for keys {list(keys)} timed out after {timeout:g} s; still missing: "
            f"{missing}{more} (torch store {self.address})"
        )


def _describe(request: object) -> str:
    """``"add of 'n'"``: the request's name and its user key (not its value); a label
    as it is. Built only for an error message."""
    if isinstance(request, str):
        return request
    name = type(request).__name__.lower()
    key = getattr(request, "key", None)
    return name if key is None else f"{name} of {key[1:]!r}"


def _deadline(timeout_ms: int) -> float:
    return timeout_ms / 1000.0


def _get(c: TorchClient, msg: Any, timeout: float) -> object:
    if msg.block:
        c._wait((msg.key,), _deadline(msg.timeout_ms))
    return m.ValueReply(c._ask(tw.Get(_wire(msg.key)), timeout).value)


def _multi_get(c: TorchClient, msg: Any, timeout: float) -> object:
    if not msg.keys:  # torch answers a MULTI_GET of no keys with no bytes at all
        return m.ValuesReply(())
    if msg.block:
        c._wait(msg.keys, _deadline(msg.timeout_ms))
    return m.ValuesReply(c._ask(tw.MultiGet(_wires(msg.keys)), timeout).values)


def _wait(c: TorchClient, msg: Any, timeout: float) -> object:
    c._wait(msg.keys, _deadline(msg.timeout_ms))
    return m.OkReply()


def _queue_pop(c: TorchClient, msg: Any, timeout: float) -> object:
    key = _wire(msg.key)
    deadline = time.monotonic() + _deadline(msg.timeout_ms)
    for _ in range(1_000_000):  # another client may take the item we waited for
        popped = c._ask(tw.QueuePop(key), timeout)
        if popped.value is not None:
            return m.ValueReply(popped.value)
        if not msg.block:
            raise ServerError(f"queue {msg.key!r} is empty")
        try:
            c._wait((msg.key,), max(deadline - time.monotonic(), 0.0))
        except StoreTimeoutError as exc:
            raise StoreTimeoutError(
                f"queue_pop of {msg.key!r} timed out after {_deadline(msg.timeout_ms):g} s;"
                f" the queue is still empty (torch store {c.address})"
            ) from exc
    raise StoreTimeoutError(f"queue_pop of {msg.key!r} gave up")


def _list_keys(c: TorchClient, msg: Any, timeout: float) -> object:
    keys = c._ask(tw.ListKeys(), timeout).keys
    return m.KeysReply(tuple(k[1:] for k in keys if k.startswith("/")))


def _ping(c: TorchClient, msg: Any, timeout: float) -> object:
    reply = c._ask(tw.Ping(c._nonce), timeout)
    if reply.nonce != c._nonce:
        raise c._lost("ping", f"the server echoed {reply.nonce}, not {c._nonce}")
    return m.OkReply()


def _multi_set(q: Any) -> object:
    return tw.MultiSet(
        _wires(q.keys), tuple(_value(v, k) for k, v in zip(q.keys, q.values, strict=True))
    )


def _simple(
    build: Callable[[Any], object], reply: Callable[[Any], object]
) -> Callable[[TorchClient, Any, float], object]:
    """A handler for a request that is one torch query and one reply (or none)."""
    return lambda c, msg, timeout: reply(c._ask(build(msg), timeout))


def _ok(_: object) -> object:
    return m.OkReply()


def _int(r: Any) -> object:
    return m.IntReply(r.value)


#: kvsync request type -> how it is carried out over torch's protocol.
_HANDLERS: dict[type, Callable[[TorchClient, Any, float], object]] = {
    m.Set: _simple(lambda q: tw.Set(_wire(q.key), _value(q.value, q.key)), _ok),
    m.Get: _get,
    m.Add: _simple(lambda q: tw.Add(_wire(q.key), q.amount), _int),
    m.CompareSet: _simple(
        lambda q: tw.CompareSet(_wire(q.key), _value(q.expected, q.key), _value(q.desired, q.key)),
        lambda r: m.ValueReply(r.value),
    ),
    m.Wait: _wait,
    m.Check: _simple(lambda q: tw.Check(_wires(q.keys)), lambda r: m.IntReply(int(r.ready))),
    m.DeleteKey: _simple(lambda q: tw.DeleteKey(_wire(q.key)), _int),
    m.NumKeys: _simple(lambda q: tw.NumKeys(), _int),
    m.MultiGet: _multi_get,
    m.MultiSet: _simple(_multi_set, _ok),
    m.Append: _simple(lambda q: tw.Append(_wire(q.key), _value(q.value, q.key)), _ok),
    m.ListKeys: _list_keys,
    m.QueuePush: _simple(lambda q: tw.QueuePush(_wire(q.key), _value(q.value, q.key)), _ok),
    m.QueuePop: _queue_pop,
    m.QueueLen: _simple(lambda q: tw.QueueLen(_wire(q.key)), _int),
    m.Ping: _ping,
}
