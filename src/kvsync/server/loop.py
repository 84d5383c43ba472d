"""The store server's event loop: one ``selectors`` thread moving bytes for every client.

Strategy: the loop owns no store logic. Each readable socket is drained with ``recv_into``
straight into its sans-IO :class:`~kvsync.protocol.Connection` (large payloads land in their
own buffer, zero copy); each decoded request goes to the pure ``logic`` (a
:class:`~kvsync.server.state.StoreState` or a :class:`~kvsync.server.router.Router`), and the
:class:`~kvsync.server.router.Outgoing` replies it returns are encoded by their message's
compiled encoder. The replies to the connection just read are sent once its requests are
handled, and a reply to another connection (a wake-up) as soon as it is made: a buffer with
nothing queued before it goes out with one ``send`` (several with one ``sendmsg``); what
the socket does not take stays queued on its connection, with ``EVENT_WRITE`` watched
until it drains.
Parked requests are expired through ``logic.expire`` with ``logic.next_deadline()`` as the
``select`` timeout. Per event the work is proportional to that event (dict lookups, no scans
over all connections), so the loop holds tens of thousands of connections.

A connection that breaks the protocol (garbage, bad magic/version, a frame over a cap)
gets an ``ErrorReply`` when its request id is known, then a half-close, then is dropped;
only that connection is affected. ``close()`` wakes the loop through a socketpair.

Both protocols on one port: a connection whose first byte is ``00`` (torch's VALIDATE;
kvsync frames start with ``K``) is a torch client and gets a
:class:`~kvsync.server.torch_session.TorchSession` in place of the kvsync ``Connection``
(``StoreServer._on_first_bytes``, which reads a connection's first bytes into one buffer
of the server's, with no ``MSG_PEEK`` and no protocol object for a peer that sent nothing
yet); its requests reach the same ``logic``, and its replies are encoded by the session
(torch's protocol has no error reply: a failed torch connection just closes).
A server with a shared secret refuses torch clients: torch's protocol cannot authenticate.

Limits (:class:`~kvsync.server.guard.ServerSettings`): a :class:`ConnectionGuard` holds the
handshake, half-received-frame and idle deadlines and is checked like a parked request's;
a connection past one gets an error reply and is closed. Connections beyond
``max_connections`` get an error reply at once. Big payloads reserve memory from one
:class:`~kvsync.protocol.framing.ReceiveBudget` as their bytes arrive. A failed or dropped
connection's protocol object is closed at once, so its buffers are freed then, not by the
cycle collector.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from kvsync import defaults, env
from kvsync.env import check_port
from kvsync.errors import (
    ErrorCode,
    KVSyncError,
    LimitExceededError,
    LocalProtocolError,
    StoreConnectionError,
)
from kvsync.progress import interval as progress_interval
from kvsync.protocol.codec import ENCODERS, Limits
from kvsync.protocol.connection import Connection, Event, Role, drain_events, encode_error
from kvsync.protocol.framing import NO_REPLY, ReceiveBudget
from kvsync.protocol.messages import ErrorReply, Identify, Inspect, OkReply, ValueReply
from kvsync.server.guard import ConnectionGuard, ServerSettings
from kvsync.server.router import Outgoing, ServerLogic
from kvsync.server.state import StoreState
from kvsync.server.torch_session import TorchSession

__all__ = ["StoreServer"]

logger = logging.getLogger(__name__)

_IOV_MAX = 512  # buffers per sendmsg (Linux allows 1024)
_RECVS_PER_EVENT = 16  # bounded fairness: recv calls per readable event
_ACCEPTS_PER_EVENT = 256
_HIGH_WATER = 64 << 20  # stop reading a client with this many reply bytes unsent
_STREAMING = 64 * 1024  # a receive buffer this big is a payload in flight: read on
_CLOSE_GRACE = 1.0
_SNIFF_BYTES = 4096  # a connection's first read: its Hello (or torch's VALIDATE) and more
_ACCEPT_PAUSE = 0.1  # seconds accepts pause when the process is out of descriptors
_OUT_OF_RESOURCES = {
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOBUFS,
    errno.ENOMEM,
}  # seconds a failed connection may take to read its error reply
_Buffer = bytes | bytearray | memoryview


class _Peer:
    """Per-connection state the loop keeps (the protocol state lives in ``proto``)."""

    __slots__ = (
        "addr", "closing", "conn_id", "encode", "events", "inflight", "outq", "pending", "proto",
        "rank", "ready", "sock",
    )  # fmt: skip

    def __init__(self, conn_id: int, sock: socket.socket, addr: str, proto: Any = None) -> None:
        self.conn_id = conn_id
        self.sock = sock
        self.addr = addr
        self.proto = proto  # a Connection or a TorchSession, set once the first byte is in
        self.encode: Callable[[int, object], list[_Buffer]] = _encode  # a reply's buffers
        self.outq: collections.deque[_Buffer] = collections.deque()
        self.pending = 0  # bytes queued in outq
        self.events = selectors.EVENT_READ  # what the selector watches for this socket
        self.closing: float | None = None  # monotonic deadline once the protocol failed
        self.ready = False  # handshake complete: no more handshake frames to send
        self.inflight = 0  # requests received and not answered yet (parked ones)
        self.rank: int | None = None  # what the client said (Identify)


def _frame_cap(max_key_bytes: int, max_value_bytes: int) -> int:
    return max(defaults.MAX_FRAME_BYTES, max_value_bytes + 2 * max_key_bytes + 4096)


class StoreServer:
    """A store server on one event-loop thread.

    Args:
        host: address to bind (numeric or a name), default loopback.
        port: port to bind; ``0`` picks a free one (see :attr:`port`).
        listen_fd: an already bound (listening or not) socket's file descriptor to take
            over instead of binding ``host:port``; the server owns it afterwards.
        logic: the request logic; default a new :class:`StoreState` with the caps below.
        max_key_bytes: longest key accepted (UTF-8 bytes).
        max_value_bytes: largest value accepted.
        secret: shared secret clients must prove they know (HMAC handshake), or ``None``.
        backlog: ``listen()`` backlog.
        settings: connection limits (deadlines, connection count, memory for
            half-received frames); default: :mod:`kvsync.defaults` with what the
            environment sets over them (``KVSYNC_HANDSHAKE_TIMEOUT`` ...).

    Raises:
        StoreConnectionError: the address cannot be resolved or bound (names host:port).

    Example:
        >>> from kvsync.client import Client
        >>> from kvsync.protocol.messages import Set, Get
        >>> with StoreServer(port=0).start() as server:
        ...     with Client("127.0.0.1", server.port, timeout=5) as client:
        ...         client.call(Set("k", b"v"))
        ...         bytes(client.call(Get("k", False, 0)).value)
        OkReply()
        b'v'
    """

    def __init__(
        self,
        host: str = defaults.DEFAULT_HOST,
        port: int = 0,
        *,
        listen_fd: int | None = None,
        logic: ServerLogic | None = None,
        max_key_bytes: int = defaults.MAX_KEY_BYTES,
        max_value_bytes: int = defaults.MAX_VALUE_BYTES,
        secret: str | bytes | None = None,
        backlog: int = defaults.LISTEN_BACKLOG,
        settings: ServerSettings | None = None,
    ) -> None:
        self.limits = Limits(
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
            max_frame_bytes=_frame_cap(max_key_bytes, max_value_bytes),
        )
        self.logic: ServerLogic = logic or StoreState(
            max_key_bytes=max_key_bytes,
            max_value_bytes=max_value_bytes,
            progress_seconds=progress_interval(),
        )
        self._secret = secret
        self.settings = settings or ServerSettings.from_environment(env.read())
        whole_value = max_value_bytes + 2 * max_key_bytes + 4096  # one value at its cap fits
        self.budget = ReceiveBudget(max(self.settings.max_pending_bytes, whole_value))
        self._guard = ConnectionGuard(self.settings)
        self._started = self._woke = time.monotonic()
        self._requests: collections.defaultdict[type, int] = collections.defaultdict(int)
        self._bytes_in = self._bytes_out = 0
        #: requests the loop answers itself (about connections, not the store)
        self._own: dict[type, Callable[[_Peer, Any, float], object]] = {
            Inspect: self._inspect,
            Identify: self._identify,
        }
        self._listener = _listen(host, port, listen_fd, backlog)
        self.host, self.port = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._sniff = bytearray(_SNIFF_BYTES)  # every connection's first read lands here
        self._peers: dict[int, _Peer] = {}
        self._closing: dict[int, _Peer] = {}
        self._next_id = 1
        self._accept_resume: float | None = None  # accepts paused (out of descriptors)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        logger.debug("store server listening on %s:%d", self.host, self.port)

    # --- lifetime -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """Number of client connections open right now."""
        return len(self._peers)

    def start(self) -> StoreServer:
        """Run :meth:`serve_forever` on a background daemon thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self.serve_forever, name=f"kvsync-server-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (from any thread or a signal handler)."""
        self._loop_ident = threading.get_ident()
        try:
            while not self._stop.is_set():
                self._turn()
        finally:
            self._shutdown()

    def close(self) -> None:
        """Stop the loop, close every connection and the listening socket. Idempotent."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._loop_ident is None:
            self._shutdown()
        elif self._loop_ident != threading.get_ident() and self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> StoreServer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._done.is_set() else f"{len(self._peers)} connections"
        return f"StoreServer({self.address}, {state})"

    def _shutdown(self) -> None:
        if self._done.is_set():
            return
        self._done.set()
        for peer in list(self._peers.values()):
            self._drop(peer, "server shutting down")
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()
        self._selector.close()
        logger.debug("store server %s:%d closed", self.host, self.port)

    # --- the loop -----------------------------------------------------------------------

    def _turn(self) -> None:
        deadline = self.logic.next_deadline()
        if self._closing:
            grace = min(p.closing or 0.0 for p in self._closing.values())
            deadline = grace if deadline is None else min(deadline, grace)
        if self._accept_resume is not None:
            resume = self._accept_resume
            deadline = resume if deadline is None else min(deadline, resume)
        guard = self._guard.next_deadline()
        if guard is not None:
            deadline = guard if deadline is None else min(deadline, guard)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = self._selector.select(timeout)
        self._woke = time.monotonic()  # the time of this turn's reads, for their deadlines
        for key, mask in ready:
            data = key.data
            if type(data) is _Peer:
                if mask & selectors.EVENT_WRITE:
                    self._flush(data)
                if mask & selectors.EVENT_READ and data.conn_id in self._peers:
                    self._on_readable(data)
            else:
                handler: Callable[[Any, int], None] = data
                handler(key.fileobj, mask)
        if deadline is None:  # nothing timed: no expiry, guard sweep, grace or paused accept
            return
        now = time.monotonic()
        if deadline <= now:  # (requests parked in this turn expire later: theirs is the next)
            self._deliver(self.logic.expire(now))
        if guard is not None and guard <= now:
            for conn_id, exc in self._guard.expired(now, self._busy):
                peer = self._peers.get(conn_id)
                if peer is not None and peer.closing is None:
                    self._fail(peer, exc)
        if self._closing:
            for peer in [p for p in self._closing.values() if (p.closing or 0.0) <= now]:
                self._drop(peer, "error reply grace period over")
        if self._accept_resume is not None and now >= self._accept_resume:
            self._accept_resume = None
            self._selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    def _busy(self, conn_id: int) -> bool:
        peer = self._peers.get(conn_id)
        return peer is not None and peer.inflight > 0

    def _on_wake(self, sock: socket.socket, mask: int) -> None:
        try:
            sock.recv(4096)
        except OSError:
            pass

    def _on_accept(self, listener: socket.socket, mask: int) -> None:
        for _ in range(_ACCEPTS_PER_EVENT):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:  # keep serving the connected clients
                    logger.warning(
                        "accept on %s failed: %s; pausing accepts for %g s (raise the open"
                        " files limit, ulimit -n, to serve more clients)",
                        self.address, exc, _ACCEPT_PAUSE,
                    )  # fmt: skip
                    self._selector.unregister(listener)
                    self._accept_resume = time.monotonic() + _ACCEPT_PAUSE
                    return
                logger.debug("accept on %s failed: %s", self.address, exc)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn_id, self._next_id = self._next_id, self._next_id + 1
            peer = _Peer(conn_id, sock, f"{addr[0]}:{addr[1]}")
            self._peers[conn_id] = peer
            self._selector.register(sock, selectors.EVENT_READ, peer)
            if len(self._peers) - len(self._closing) > self.settings.max_connections:
                self._fail(peer, LimitExceededError(
                    f"store server {self.address} already holds"
                    f" {self.settings.max_connections} connections (max_connections);"
                    " refusing this one"))  # fmt: skip
                continue
            self._guard.accepted(conn_id, self._woke)
            self._on_readable(peer)  # its Hello is often there already: saves a loop turn

    def _on_first_bytes(self, peer: _Peer) -> None:
        """Read ``peer``'s first bytes (into the server's one sniffing buffer: no protocol
        object is made for a peer that sent nothing yet) and give it the protocol object
        they call for, fed with them; then handle them as any read."""
        sniff = self._sniff
        try:
            n = peer.sock.recv_into(sniff)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(peer, f"receive failed: {exc}")
            return
        if n == 0:
            self._drop(peer, "client closed the connection")
            return
        proto: Connection | TorchSession
        if sniff[0] == 0 and self._secret is not None:
            logger.warning(
                "refusing a torch client from %s: this server requires a shared secret and"
                " torch's protocol cannot authenticate", peer.addr,
            )  # fmt: skip
            self._drop(peer, "torch client on a server with a shared secret")
            return
        if sniff[0] == 0:
            session = TorchSession(self.limits)
            peer.encode = session.encode
            proto = session
            logger.debug("connection %d from %s speaks torch's protocol", peer.conn_id, peer.addr)
        else:
            proto = Connection(
                Role.SERVER, limits=self.limits, secret=self._secret, budget=self.budget
            )
        peer.proto = proto
        with memoryview(sniff) as view:
            _feed(proto, view[:n])
        events, error = drain_events(peer.proto)  # (either protocol's events)
        self._bytes_in += n
        mid_frame = proto.mid_frame if type(proto) is Connection else False
        self._guard.received(peer.conn_id, self._woke, mid_frame)
        if self._process(peer, events, error) and n == len(sniff):  # more may be there
            self._on_readable(peer)

    def _on_readable(self, peer: _Peer) -> None:
        if peer.closing is not None:
            self._discard_input(peer)
            return
        if peer.proto is None:
            self._on_first_bytes(peer)
            return
        proto = peer.proto
        recv_into = peer.sock.recv_into
        for _ in range(_RECVS_PER_EVENT):
            try:
                buf = proto.receive_buffer()
                n = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop(peer, f"receive failed: {exc}")
                return
            if n == 0:
                self._drop(peer, "client closed the connection")
                return
            size = len(buf)  # (a byte buffer: its length is its byte count)
            del buf  # no view into the connection's buffer outlives the receive
            proto.advance(n)
            events, error = drain_events(proto)
            self._bytes_in += n
            mid_frame = proto.mid_frame if type(proto) is Connection else False
            self._guard.received(peer.conn_id, self._woke, mid_frame)
            if not self._process(peer, events, error) or (n < size and n < _STREAMING):
                return

    def _process(self, peer: _Peer, events: list[Event], error: KVSyncError | None) -> bool:
        """Handle ``peer``'s requests and send its replies (after any handshake answer),
        then fail it if ``error`` (its bytes after those requests were bad); False once it
        failed or was dropped."""
        proto = peer.proto
        conn_id = peer.conn_id
        mine: list[_Buffer] = []  # replies to this peer, sent when its requests are done
        others: list[Outgoing] = []
        if not peer.ready:  # handshake frames may have been answered
            mine += proto.data_to_send()
            peer.ready = proto.handshake_complete
            if peer.ready:
                self._guard.handshaken(conn_id)
        if events:
            peer.inflight += len(events)
            now = self._woke  # (this turn's time: one clock read per turn, not per request)
            handle = self.logic.handle
            encode = peer.encode
            requests, own = self._requests, self._own
            for request_id, msg in events:
                kind = type(msg)
                requests[kind] += 1
                try:
                    if kind in own:
                        reply = own[kind](peer, msg, now)
                        out = [Outgoing(conn_id, request_id, reply)]
                    else:
                        out = handle(conn_id, request_id, msg, now)
                except Exception as exc:  # a logic bug must not stop the server for everyone
                    logger.exception("server logic failed on %s", type(msg).__name__)
                    text = f"server failed on {type(msg).__name__}: {exc!r}"
                    out = [Outgoing(conn_id, request_id, ErrorReply(ErrorCode.SERVER, text))]
                for o in out:  # usually just its reply
                    if o[0] == conn_id:
                        mine += encode(o[1], o[2])
                        peer.inflight -= 1
                    else:
                        others.append(o)
            if others:  # wake-ups of other connections
                self._deliver(others)
            if error is None and type(proto) is TorchSession:  # it fails on a refused request
                error = proto.error
        if error is not None:  # a bad frame after the good ones: answer them, then fail
            if mine:
                self._queue(peer, mine)
            self._fail(peer, error)
            return False
        if mine:
            self._send(peer, mine)
            return conn_id in self._peers  # False when the send failed
        return True

    # --- requests about the server itself ----------------------------------------------

    def _identify(self, peer: _Peer, msg: Identify, now: float) -> object:
        peer.rank = msg.rank
        return OkReply()

    def _inspect(self, peer: _Peer, msg: Inspect, now: float) -> object:
        """What ``kvsync inspect`` shows: counters and parked requests, as JSON."""
        waiting = getattr(self.logic, "waiting", None)
        waiters: list[dict[str, Any]] = waiting(now) if waiting is not None else []
        for w in waiters:
            who = self._peers.get(w["conn"])
            w["peer"] = who.addr if who is not None else None
            w["rank"] = who.rank if who is not None else None
        report = {
            "server": self.address,
            "uptime_s": round(now - self._started, 3),
            "connections": len(self._peers) - len(self._closing),
            "requests": {k.__name__: n for k, n in self._requests.items()},
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
            "pending_bytes": self.budget.held,
            "pending_budget": self.budget.limit,
            "parked": len(waiters),
            "waiters": waiters,
        }
        return ValueReply(json.dumps(report).encode())

    def _send(self, peer: _Peer, buffers: list[_Buffer]) -> None:
        """Send ``buffers`` to ``peer`` now, after what is queued for it; what the socket
        does not take stays queued (and ``EVENT_WRITE`` is watched until it drains)."""
        if len(buffers) == 1 and not peer.outq:  # the usual small reply: one send
            data = buffers[0]
            try:
                sent = peer.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._drop(peer, f"send failed: {exc}")
                return
            self._bytes_out += sent
            if sent == len(data):
                return
            buffers = [memoryview(data)[sent:]]
        self._queue(peer, buffers)
        self._flush(peer)

    def _fail(self, peer: _Peer, exc: KVSyncError) -> None:
        logger.info("closing connection from %s: %s", peer.addr, exc)
        proto = peer.proto
        if proto is None:  # not a byte from it yet: a silent peer, or one over a limit
            proto = peer.proto = Connection(Role.SERVER, limits=self.limits)
        if type(proto) is Connection:  # torch's protocol has no error reply
            if not peer.ready:  # a HelloReply answered before the bad frame goes out first
                self._queue(peer, proto.data_to_send())
            self._queue(peer, encode_error(proto.last_request_id or 0, exc))
            proto.close()  # its buffers are freed now, whatever still refers to it
        self._guard.dropped(peer.conn_id)
        self._flush(peer)
        if peer.conn_id not in self._peers:
            return
        try:
            peer.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        peer.closing = time.monotonic() + _CLOSE_GRACE
        self._closing[peer.conn_id] = peer
        self.logic.drop_connection(peer.conn_id)

    def _discard_input(self, peer: _Peer) -> None:
        """Read and drop a failed peer's bytes until it closes (so it sees our error)."""
        try:
            data = peer.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(peer, "closed after a protocol error")

    # --- sending ------------------------------------------------------------------------

    def _deliver(self, outgoing: Iterable[Outgoing]) -> None:
        """Send replies to their connections (parked requests answered, or expired)."""
        now = self._woke
        peers, sent = self._peers, self._guard.sent
        for conn_id, request_id, reply in outgoing:
            peer = peers.get(conn_id)
            if peer is None or peer.closing is not None:
                continue  # the client went away while its request was parked
            peer.inflight -= 1
            sent(conn_id, now)
            buffers = peer.encode(request_id, reply)
            if buffers:
                self._send(peer, buffers)
            elif peer.proto.error is not None:  # a torch peer whose parked request failed
                self._fail(peer, peer.proto.error)

    def _queue(self, peer: _Peer, buffers: list[_Buffer]) -> None:
        """Queue ``buffers`` after what ``peer`` has queued (sent by :meth:`_flush`)."""
        # The codec's buffers are bytes-like with 1-byte items, so len() counts bytes.
        peer.outq.extend(buffers)
        peer.pending += sum(map(len, buffers))

    def _flush(self, peer: _Peer) -> None:
        outq = peer.outq
        while outq:
            try:
                if len(outq) == 1:  # the common case: one small reply
                    sent = peer.sock.send(outq[0])
                else:
                    sent = peer.sock.sendmsg([outq[i] for i in range(min(len(outq), _IOV_MAX))])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._drop(peer, f"send failed: {exc}")
                return
            peer.pending -= sent
            self._bytes_out += sent
            while sent:
                head = outq[0]
                if sent >= len(head):
                    sent -= len(head)
                    outq.popleft()
                else:
                    outq[0] = memoryview(head)[sent:]
                    sent = 0
        # Backpressure: a client that does not read its replies is not read from either.
        events = (selectors.EVENT_WRITE if outq else 0) | (
            selectors.EVENT_READ if peer.pending < _HIGH_WATER else 0
        )
        if events != peer.events and peer.conn_id in self._peers:
            self._selector.modify(peer.sock, events, self._selector.get_key(peer.sock).data)
            peer.events = events

    def _drop(self, peer: _Peer, why: str) -> None:
        if self._peers.pop(peer.conn_id, None) is None:
            return
        logger.debug("dropping connection %d from %s: %s", peer.conn_id, peer.addr, why)
        self._closing.pop(peer.conn_id, None)
        try:
            self._selector.unregister(peer.sock)
        except (KeyError, ValueError):
            pass
        peer.sock.close()
        peer.outq.clear()
        if type(peer.proto) is Connection:  # its buffers and budget are freed now, not by
            peer.proto.close()  # the cycle collector
        self._guard.dropped(peer.conn_id)
        self.logic.drop_connection(peer.conn_id)


def _feed(proto: Connection | TorchSession, data: memoryview) -> None:
    """Copy ``data`` into ``proto``'s receive buffers (through ``receive_buffer``)."""
    while data.nbytes:
        buf = proto.receive_buffer()
        n = min(len(buf), data.nbytes)
        buf[:n] = data[:n]
        del buf  # no view into the protocol's buffer outlives the copy
        proto.advance(n)
        data = data[n:]


def _encode(request_id: int, reply: object) -> list[_Buffer]:
    """The buffers of one reply (an error reply if the logic produced an unencodable one);
    none for a request that asked for no reply (:data:`NO_REPLY`) and did not fail."""
    if request_id >= NO_REPLY and type(reply) is not ErrorReply:
        return []
    encoder = ENCODERS.get(type(reply))
    try:
        if encoder is None:
            raise LocalProtocolError(f"{type(reply).__name__} is not a protocol message")
        return encoder(request_id, reply, None)
    except KVSyncError as exc:  # a logic bug: answer with an error, keep serving
        logger.exception("cannot encode reply %r", reply)
        return encode_error(request_id, exc)


def _listen(host: str, port: int, listen_fd: int | None, backlog: int) -> socket.socket:
    """The listening socket: taken over from ``listen_fd`` or bound to ``host:port``."""
    if listen_fd is not None:
        sock = socket.socket(fileno=listen_fd)
        sock.listen(backlog)
        sock.setblocking(False)
        return sock
    check_port(port)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE
        )
    except socket.gaierror:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise StoreConnectionError(f"cannot resolve {host}:{port} to listen on: {exc}") from exc
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StoreConnectionError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    return sock
