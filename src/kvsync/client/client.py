"""A blocking, thread-safe client connection to a kvsync server, with pipelining.

Strategy: one TCP socket and one sans-IO :class:`~kvsync.protocol.Connection`. Senders take
a lock only while writing one frame (``sendmsg`` of the codec's buffer list, so big values
go out uncopied). Replies are matched to requests by request id: whichever waiting thread
finds no reader becomes the reader (leader/followers), reads the socket with its own
deadline, files every reply it decodes and wakes the others; so several requests can be
in flight from several threads without a background thread. A :meth:`Client.call` that
finds nothing else in flight takes the reader role at once and reads its own reply (filing
any reply to a request another thread sent meanwhile), the cheap common case. End of stream
while waiting means the server is gone: every waiter gets :class:`StoreConnectionError`
naming the address at once, not after its timeout. A reply that arrives after its caller
gave up is dropped, so the client keeps working after a timeout.

The socket stays in blocking mode with kernel send/receive timeouts (``SO_SNDTIMEO``,
``SO_RCVTIMEO``), so a request costs one ``send`` and one ``recv_into`` and no ``poll``:
the reader blocks in ``recv_into`` for at most :data:`_READ_SLICE` seconds at a time (or
what is left of its deadline) and only changes the kernel timeout when that value changes;
both timeouts are set right after connecting, so a first request makes no extra calls.

Without a secret the constructor sends the ``Hello`` and does not wait: the first request
reads the ``HelloReply`` (usually there by then) before it goes out, as it is checked
against the server's caps that the reply carries; so a version mismatch, a server that
wants a secret or a silent peer is raised by the first request. With a secret the
constructor waits for the challenge and answers it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from kvsync.client.connect import Backoff, connect
from kvsync.client.lifetime import ConnectionLifetime
from kvsync.errors import (
    KVSyncError,
    StoreConnectionError,
    StoreTimeoutError,
    error_from_code,
)
from kvsync.protocol.codec import encode_frame
from kvsync.protocol.connection import NEED_DATA, Connection, Event, Role, drain_events
from kvsync.protocol.framing import HEADER_SIZE, NO_REPLY, SMALL_FRAME, Landing
from kvsync.protocol.handshake import secret_bytes
from kvsync.protocol.messages import ErrorReply, Opcode, Ping

if TYPE_CHECKING:  # a store client never imports numpy; arrays come from its callers
    import numpy as np

__all__ = ["Client"]

logger = logging.getLogger(__name__)
#: Longest single blocking ``recv_into``; a reader re-checks its deadline at least this often.
_READ_SLICE = 1.0
#: Reads after the first one of a turn must not block (``0`` where the flag is missing).
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_TIMEVAL = struct.Struct("@ll")  # struct timeval for SO_RCVTIMEO / SO_SNDTIMEO
_NO_REPLY = object()
_HELLO = 0  # the request id the Hello carries
#: Longest wait in :meth:`Client.close` for the server to confirm the posts before it.
_FLUSH_TIMEOUT = 5.0


def _unwrap(reply: object) -> object:
    """The reply itself, or the error it carries raised as its :mod:`kvsync.errors` class."""
    if isinstance(reply, ErrorReply):
        raise error_from_code(reply.code, reply.message)
    return reply


def array_landing(out: np.ndarray) -> Landing | None:
    """Where a :class:`PSValuesReply` of one array of ``out``'s dtype and shape lands:
    straight in ``out`` (the reply's array is then ``out`` itself). ``None`` when ``out`` is
    not a C-contiguous, writable array bigger than :data:`SMALL_FRAME` (smaller replies
    are cut from the scratch buffer anyway)."""
    if not (out.flags.c_contiguous and out.flags.writeable) or out.nbytes <= SMALL_FRAME:
        return None
    from kvsync.protocol.ps_messages import PSValuesReply  # (a store client never loads it)

    value = PSValuesReply(values=(out,))
    parts = encode_frame(0, value)  # the reply's bytes: its leading ones, then out's data
    if len(parts) < 2 or memoryview(parts[-1]).nbytes != out.nbytes:
        return None
    prefix = b"".join(bytes(p) for p in parts[:-1])[HEADER_SIZE:]
    return Landing(int(Opcode.PS_VALUES), prefix, out.reshape(-1).view("u1").data, value)


def _describe(msg: object) -> str:
    """A request named for a timeout error: its type and the key(s) it names.

    Example:
        >>> from kvsync.protocol.messages import Wait
        >>> _describe(Wait(("a", "b"), 5000))
        "Wait of keys ['a', 'b']"
    """
    name = type(msg).__name__
    keys = getattr(msg, "keys", None)
    if isinstance(keys, tuple):
        shown = list(keys[:8])
        return f"{name} of keys {shown}{' ...' if len(keys) > 8 else ''}"
    key = getattr(msg, "key", None)
    return name if key is None else f"{name} of key {key!r}"


def _set_kernel_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    """Set ``SO_RCVTIMEO``/``SO_SNDTIMEO`` (at least 1 ms: zero would mean "forever")."""
    usec = max(1000, min(int(seconds * 1e6), 1 << 40))
    sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(usec // 1_000_000, usec % 1_000_000))


class Client(ConnectionLifetime):
    """A connection to a kvsync server.

    Args:
        host: server address (a numeric address is used literally, never looked up).
        port: server port.
        timeout: default seconds to wait for a reply (and to connect, unless
            ``connect_timeout`` is given).
        secret: shared secret for the HMAC handshake, or ``None``.
        timeout_hint: text appended to reply-timeout errors (e.g. which variable to raise).
        connect_timeout: seconds to keep retrying the connection (a server started later
            is waited for), and for the handshake with a secret; default ``timeout``.
        retry_log_level: the logging level of each failed connection attempt.
        peer_name: what errors call the server (``"parameter server"`` for a KVStore's).

    Raises:
        StoreConnectionError: unresolvable host or non-retryable connect error.
        StoreTimeoutError: the server did not accept the connection (or, with a secret,
            finish the handshake) in time.
        VersionMismatchError, AuthenticationError: the handshake failed (without a secret,
            raised by the first request, which reads the server's HelloReply; so is a
            StoreTimeoutError when that reply does not come within ``timeout``).

    Example:
        >>> from kvsync.server import StoreServer
        >>> from kvsync.protocol.messages import Add
        >>> with StoreServer().start() as server, Client("127.0.0.1", server.port, timeout=5) as c:
        ...     rids = [c.submit(Add("n", 1)) for _ in range(3)]
        ...     [c.result(r).value for r in rids]
        [1, 2, 3]
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        secret: str | bytes | None = None,
        timeout_hint: str = "",
        connect_timeout: float | None = None,
        retry_log_level: int = logging.DEBUG,
        peer_name: str = "store server",
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.timeout_hint = timeout_hint
        self.address = f"{host}:{port}"
        self.peer = f"{peer_name} {self.address}"  # how errors name the server
        connect_timeout = timeout if connect_timeout is None else connect_timeout
        deadline = time.monotonic() + connect_timeout
        self._sock = connect(host, port, connect_timeout, Backoff(), retry_log_level, peer_name)
        self._proto = Connection(Role.CLIENT, secret=secret)
        # Blocking, with kernel timeouts bounding every call; both set now, so that a first
        # request pays no extra system calls.
        self._recv_timeout = min(timeout, _READ_SLICE)  # the SO_RCVTIMEO last set
        self._send_timeout = timeout  # the SO_SNDTIMEO last set
        #: The HelloReply is still to be read (by the first request): see _await_hello.
        self._hello_pending = secret_bytes(secret) is None
        try:
            if self._hello_pending:  # the Hello goes now; its reply is read later
                self._sock.settimeout(None)
                self._set_timeouts()
                try:
                    self._sock.sendall(b"".join(self._proto.data_to_send()))
                except OSError as exc:
                    raise StoreConnectionError(
                        f"cannot send the Hello to {self.peer}: {exc}"
                    ) from exc
            else:  # with a secret: the challenge is answered now
                self._handshake(deadline)
                self._sock.settimeout(None)
                self._set_timeouts()
        except BaseException:
            self._sock.close()
            raise
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the fields below; not re-entrant
        self._cond = threading.Condition(self._lock)
        self._reading = False
        self._results: dict[int, object] = {}
        # (while the HelloReply is pending, its place: so call() goes through submit())
        self._waiting: set[int] = {_HELLO} if self._hello_pending else set()
        self._error: KVSyncError | None = None
        self._posted_error: KVSyncError | None = None  # a posted request's, not raised yet
        self._pid = os.getpid()  # a forked copy must not touch the parent's connection
        self._last_posted = 0  # request id (sans NO_REPLY) of the last post
        self._last_replied = 0  # of the last call answered: every request before it is done

    # --- connection set-up ----------------------------------------------------------------

    def _handshake(self, deadline: float) -> None:
        proto, sock = self._proto, self._sock
        for _ in range(10_000):
            out = proto.data_to_send()
            if out:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(b"".join(out))
            if proto.handshake_complete:
                return
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                n = sock.recv_into(proto.receive_buffer())
            except TimeoutError as exc:
                raise StoreTimeoutError(
                    f"{self.peer} did not complete the handshake in time"
                    " (a torch store server stays silent: use TCPStore(..., dialect='torch'))"
                ) from exc
            except OSError as exc:
                raise StoreConnectionError(
                    f"connection to {self.peer} failed during the handshake: {exc}"
                ) from exc
            if n == 0:
                raise StoreConnectionError(
                    f"{self.peer} closed the connection during the handshake"
                )
            proto.advance(n)
            proto.next_event()
        raise StoreConnectionError(f"handshake with {self.address} did not finish")

    def _set_timeouts(self) -> None:
        _set_kernel_timeout(self._sock, socket.SO_RCVTIMEO, self._recv_timeout)
        _set_kernel_timeout(self._sock, socket.SO_SNDTIMEO, self._send_timeout)

    def _await_hello(self, timeout: float) -> None:
        """Read the HelloReply that the constructor did not wait for, waiting at most
        ``timeout`` seconds (the send lock is held: nothing else is in flight before it).
        A request is checked against the server's caps, which it carries, before it is
        sent.

        Raises:
            StoreTimeoutError: no HelloReply in time (the client stays usable, as after
                any timeout: the next request waits for it again).
            KVSyncError: the handshake failed (the client fails with it too).
        """
        self._raise_if_failed()
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            if self._proto.handshake_complete:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreTimeoutError(
                    f"{self.peer} did not complete the handshake within {timeout:g} s"
                    " (a torch store server stays silent: use TCPStore(...,"
                    f" dialect='torch')){self.timeout_hint}"
                )
            try:
                if self._read(remaining):  # nothing was sent: no reply can come
                    raise StoreConnectionError(f"{self.peer} answered before the handshake")
            except KVSyncError as exc:
                raise self._failed_read(exc)  # noqa: B904 (exc is, or caused, the error)
        else:
            raise self._failed_read(
                StoreConnectionError(f"handshake with {self.address} did not finish")
            )
        self._hello_pending = False
        with self._cond:
            self._waiting.discard(_HELLO)

    def _first_call(self, msg: object, timeout: float) -> object:
        """:meth:`call` while the HelloReply is unread: it is read first (within
        ``timeout``), then the request goes as usual."""
        with self._send_lock:
            if self._hello_pending:
                self._await_hello(timeout)
        return self.call(msg, timeout)

    # --- requests -----------------------------------------------------------------------

    def call(self, msg: object, timeout: float | None = None) -> object:
        """Send ``msg`` and wait for its reply; error replies are raised as their class.

        Raises:
            StoreConnectionError: the server is gone (names the address).
            StoreTimeoutError: no reply within ``timeout`` (default: the client's).
            KVSyncError subclasses: the error the server answered with.
        """
        if timeout is None:
            timeout = self.timeout
        if self._posted_error is not None:
            self._raise_posted()
        # (the locks are taken with acquire/release: in this hot path ``with`` costs more)
        lock = self._lock
        lock.acquire()
        alone = not self._reading and not self._waiting and self._error is None
        if alone:  # nothing else in flight: this call reads its own reply directly
            self._reading = True
        lock.release()
        if not alone:
            if self._hello_pending:
                return self._first_call(msg, timeout)
            return self.result(self.submit(msg), timeout)
        try:  # holding the reader role with nothing else in flight: send, read until ours
            deadline = time.monotonic() + timeout
            send_lock = self._send_lock
            send_lock.acquire()
            try:
                request_id = next(self._ids)
                self._send_all(self._proto.send(request_id, msg))
            finally:
                send_lock.release()
            events: list[Event] = []
            if timeout > _READ_SLICE == self._recv_timeout:  # the usual: one receive, ours
                try:
                    events, _, _ = self._receive(self._sock.recv_into, request_id)
                except KVSyncError as exc:
                    raise self._failed_read(exc)  # noqa: B904 (exc is, or caused, the error)
                if len(events) == 1 and events[0].request_id == request_id:  # ours, alone
                    self._last_replied = request_id
                    reply = events[0].message
                    if type(reply) is ErrorReply:
                        raise error_from_code(reply.code, reply.message)
                    return reply
            return self._read_reply(request_id, deadline, timeout, events, msg)
        finally:
            lock.acquire()
            try:
                self._reading = False
                if self._waiting:  # requests sent meanwhile: one of them reads next
                    self._cond.notify_all()
            finally:
                lock.release()

    def _read_reply(
        self, request_id: int, deadline: float, timeout: float, events: list[Event], msg: object
    ) -> object:
        """The general end of :meth:`call` (the reader role held): file ``events`` and any
        other replies read, until the reply to ``request_id`` is there or the deadline."""
        while True:
            reply = _NO_REPLY
            for ev in events:
                if ev.request_id == request_id:
                    reply = ev.message
            if events:
                with self._cond:
                    self._file_locked(events)
                    self._cond.notify_all()
            if reply is not _NO_REPLY:
                return _unwrap(reply)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._no_reply(request_id, timeout, msg)
            try:
                events = self._read(remaining)
            except KVSyncError as exc:
                raise self._failed_read(exc)  # noqa: B904 (exc is, or caused, the error)

    def _failed_read(self, exc: KVSyncError) -> KVSyncError:
        """Fail the client after the read error ``exc``; the error to raise (the first
        failure, when there was one already)."""
        self._fail(exc)
        err = self._error
        return type(err)(str(err)) if err is not None and err is not exc else exc

    def _read_error(self, exc: OSError | None) -> StoreConnectionError:
        """The error for a failed receive (``None``: the server closed the connection)."""
        posted = self._posted_error
        if exc is None and posted is not None:  # the server closes after a refused frame
            return StoreConnectionError(f"{self.peer} closed the connection: {posted}")
        if exc is None:
            return StoreConnectionError(f"{self.peer} closed the connection (server gone?)")
        return StoreConnectionError(f"lost the connection to {self.peer}: {exc}")

    def post(self, msg: object) -> None:
        """Send ``msg`` and do not wait for its reply: the server answers it only if it
        fails (:data:`~kvsync.protocol.framing.NO_REPLY`), and that error is raised by the
        first :meth:`call`, :meth:`submit` or :meth:`post` that starts after it arrived.
        For requests whose only answer is ``OkReply``: the torch flavour's ``Set`` (as
        torch's SET) and a ``TCPStore``'s ``Identify``.

        Raises:
            LimitExceededError: a key or value is over the server's caps (nothing sent).
            StoreConnectionError: the connection is lost or closed.
            KVSyncError subclasses: an earlier posted request's error (nothing sent).
        """
        if self._posted_error is not None:
            self._raise_posted()
        if self._error is not None:
            self._raise_if_failed()
        send_lock = self._send_lock
        send_lock.acquire()
        try:
            if self._hello_pending:
                self._await_hello(self.timeout)
            request_id = next(self._ids)
            self._send_all(self._proto.send(request_id | NO_REPLY, msg))
            self._last_posted = request_id
        finally:
            send_lock.release()

    def close(self) -> None:
        """Close the connection; later calls raise :class:`StoreConnectionError`.

        Posts not yet followed by an answered call are confirmed first (a ``Ping``, for
        at most :data:`_FLUSH_TIMEOUT` seconds), so that a value set just before
        ``close()`` is on the server when it returns, for every other client to read.
        In a process forked after the client was made, only this process's descriptor is
        closed: the connection stays the parent's.
        """
        if os.getpid() != self._pid:  # a forked copy: close this process's descriptor only
            self._error = StoreConnectionError(f"client of {self.peer} is closed")
            self._sock.close()  # (no Ping, no shutdown: the connection is the parent's)
            return
        if self._last_posted > self._last_replied and self._error is None:
            with contextlib.suppress(KVSyncError):
                self.call(Ping(), min(self.timeout, _FLUSH_TIMEOUT))
        super().close()

    def _raise_posted(self) -> None:
        """Raise (once) the error the server answered a posted request with."""
        with self._lock:
            err, self._posted_error = self._posted_error, None
        if err is not None:
            raise err

    def submit(self, msg: object, into: np.ndarray | None = None) -> int:
        """Send ``msg`` without waiting; returns the request id to pass to :meth:`result`.

        With ``into``, a reply that is a PSValuesReply of one array of ``into``'s dtype and
        shape is received straight into ``into`` (the reply then holds ``into`` itself);
        any other reply arrives as usual.

        Raises:
            LimitExceededError: a key or value is over the server's caps (nothing sent).
            StoreConnectionError: the connection is lost or closed.
        """
        if self._posted_error is not None:
            self._raise_posted()
        self._raise_if_failed()
        with self._send_lock:
            if self._hello_pending:
                self._await_hello(self.timeout)
            request_id = next(self._ids)
            parts = self._proto.send(request_id, msg)
            with self._cond:
                self._waiting.add(request_id)
                if into is not None:
                    self._proto.register_landing(request_id, array_landing(into))
            self._send_all(parts)
        return request_id

    def result(self, request_id: int, timeout: float | None = None) -> object:
        """Wait for the reply to ``request_id`` (see :meth:`call` for the errors)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if request_id in self._results:
                    self._waiting.discard(request_id)
                    return _unwrap(self._results.pop(request_id))
                self._raise_if_failed()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._waiting.discard(request_id)
                    self._proto.register_landing(request_id, None)
                    raise self._no_reply(request_id, timeout)
                if self._reading:
                    self._cond.wait(remaining)
                    continue
                self._reading = True
                self._cond.release()
                try:
                    events, error = self._read(remaining), None
                except KVSyncError as exc:
                    events, error = [], exc
                finally:
                    self._cond.acquire()
                    self._reading = False
                self._file_locked(events)
                if error is not None:
                    self._fail_locked(error)
                if len(self._waiting) > 1 or error is not None:  # others may wait for these
                    self._cond.notify_all()

    def _file_locked(self, events: list[Event]) -> None:
        """Keep the replies someone still waits for (the lock is held); drop the others."""
        for ev in events:
            if ev.request_id in self._waiting:
                self._results[ev.request_id] = ev.message

    def _no_reply(self, request_id: int, timeout: float, msg: object = None) -> StoreTimeoutError:
        what = "" if msg is None else f" ({_describe(msg)})"
        return StoreTimeoutError(
            f"no reply from {self.peer} to request {request_id} within {timeout:g} s{what}"
            f"{self.timeout_hint}"
        )

    def _read(self, timeout: float) -> list[Event]:
        """Block up to ``timeout`` (at most :data:`_READ_SLICE`) for replies; decode them."""
        wanted = timeout if timeout < _READ_SLICE else _READ_SLICE
        if wanted != self._recv_timeout:
            _set_kernel_timeout(self._sock, socket.SO_RCVTIMEO, wanted)
            self._recv_timeout = wanted
        recv_into = self._sock.recv_into
        events: list[Event] = []
        for _ in range(64):
            got, n, size = self._receive(recv_into)
            if n < 0:  # the kernel timeout, or drained
                break
            if n < size and n < 65536:  # all there is (else a big payload streams in)
                if not events:
                    return got  # the usual: one receive
                events += got
                break
            events += got
            recv_into = partial(self._sock.recv_into, flags=_DONTWAIT)
        return events

    def _receive(
        self, recv_into: Callable[[memoryview | bytearray], int], request_id: int = -1
    ) -> tuple[list[Event], int, int]:
        """One ``recv_into`` and the replies it completed: ``(events, byte count, buffer
        size)``, or ``([], -1, 0)`` when the kernel timeout expired (or nothing was there).
        (``request_id``: the reply :meth:`call` waits for, which usually comes alone.)

        Raises:
            StoreConnectionError: the connection is lost or the server closed it.
            KVSyncError: the server sent bad bytes (even after good replies), or its error
                reply for the whole connection (request id 0), as its class.
        """
        proto = self._proto
        buf = proto.receive_buffer()
        try:
            n = recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return [], -1, 0
        except OSError as exc:
            raise self._read_error(exc) from exc
        size = len(buf)  # (a byte buffer: its length is its byte count)
        del buf  # no view into the connection's buffer outlives the receive
        if n == 0:
            raise self._read_error(None)
        proto.advance(n)
        # The reply alone, the usual, is a single next_event and the one that says the
        # buffer is empty: drain_events would build a list and an error tuple around them,
        # a tenth of a get's client CPU.
        event = proto.next_event()
        if type(event) is Event and event.request_id == request_id:
            more = proto.next_event()
            if more is NEED_DATA:
                return [event], n, size
            events, error = drain_events(proto)
            events[:0] = (event, more)  # type: ignore[assignment]
        else:
            events, error = drain_events(proto)
            if type(event) is Event:
                events.insert(0, event)
        for ev in events:
            if ev.request_id == 0 and type(ev.message) is ErrorReply:  # the server's reason
                raise error_from_code(  # for closing this connection
                    ev.message.code,
                    f"{self.peer} closed this connection: {ev.message.message}",
                )
            if ev.request_id >= NO_REPLY:  # a posted request failed: the next one raises it
                self._posted(ev.message)
        if error is not None:  # bad bytes, even after good replies: fail anyway
            raise error
        return events, n, size

    def _posted(self, reply: object) -> None:
        """Keep the first error a posted request was answered with (other replies to
        posted requests, from a server that answers them anyway, are dropped)."""
        if type(reply) is ErrorReply:
            text = f"a request sent without waiting (a set, the Identify) failed: {reply.message}"
            err = error_from_code(reply.code, text)
            with self._lock:
                if self._posted_error is None:
                    self._posted_error = err

    def _send_all(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Send one frame's buffers whole; a failure fails the client and is raised as
        :class:`StoreConnectionError`."""
        if self.timeout != self._send_timeout:
            _set_kernel_timeout(self._sock, socket.SO_SNDTIMEO, self.timeout)
            self._send_timeout = self.timeout
        try:
            if len(parts) == 1:  # a small request: header and fields in one buffer
                self._sock.sendall(parts[0])
                return
            buffers = [memoryview(b).cast("B") for b in parts]
            while buffers:
                sent = self._sock.sendmsg(buffers[:512])
                while sent and buffers:
                    if sent >= buffers[0].nbytes:
                        sent -= buffers.pop(0).nbytes
                    else:
                        buffers[0] = buffers[0][sent:]
                        sent = 0
        except OSError as exc:
            if isinstance(exc, BlockingIOError):  # SO_SNDTIMEO: no progress for that long
                error = StoreConnectionError(
                    f"{self.peer} did not accept data for {self.timeout:g} s"
                )
            else:
                error = StoreConnectionError(f"lost the connection to {self.peer}: {exc}")
            self._fail(error)
            raise error from exc

    # --- failure and lifetime -------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        err = self._error
        if err is not None:
            raise type(err)(str(err))

    def _fail(self, exc: KVSyncError) -> None:
        with self._cond:
            self._fail_locked(exc)
            self._cond.notify_all()

    def _fail_locked(self, exc: KVSyncError) -> None:
        if self._error is None:
            self._error = exc
            logger.debug("client of %s failed: %s", self.address, exc)
            if os.getpid() == self._pid:  # (a forked copy's would cut the parent's too)
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv
                except OSError:
                    pass
            self._sock.close()
