"""Frames: the fixed header every kvsync message starts with, and splitting a received byte
stream into frames, with a zero-copy path for big payloads.

Header layout (24 bytes, little endian; ``docs/protocol.md`` has the table)::

    offset  size  field
    0       4     magic            b"KVSY"
    4       1     version          PROTOCOL_VERSION
    5       1     opcode           kvsync.protocol.messages.Opcode
    6       2     flags            reserved, must be 0
    8       8     request id       unsigned, chosen by the client, echoed in the reply
    16      8     payload length   unsigned, bytes following the header

Strategy: bytes land in a small scratch buffer (``feed`` copies into it; ``receive_buffer``
and ``advance`` let a socket ``recv_into`` it directly). Once a frame header is complete it
is checked by :func:`check_header` before anything is allocated. A payload of at most
:data:`SMALL_FRAME` bytes is sliced out of the scratch buffer (one small copy); a larger
one gets a buffer of its own (see :func:`_fresh`) that ``receive_buffer`` then exposes, so a
big value goes from the kernel into its final buffer without a Python-level copy. Every
payload is its own buffer, so views into it stay valid.

Memory is reserved as data arrives, not as a header promises: a big payload's buffer is
mapped lazily by the kernel (pages become memory only when bytes land in them), and its
reservation from an optional :class:`ReceiveBudget` shared by every connection of a server
starts at :data:`GROW_STEP` bytes and doubles each time the bytes received reach it, up to
the frame's length (a frame that would overdraw the budget is refused). It is given back
when the frame completes or the buffer is discarded. Once the first :data:`PEEK_BYTES` of
a big payload are in, a ``check_prefix`` callback sees them, so a field over its cap is
refused from its length prefix, before the rest of the payload is read.

A caller expecting a big reply of known layout may register a *landing* for its request id
(:meth:`FrameBuffer.land`): the payload's expected leading bytes and a caller-owned buffer
for the rest. Such a frame's leading bytes are received first and compared; when they match,
the rest goes from the kernel straight into the caller's buffer and :meth:`next_frame` yields
a :class:`Landed` instead of a payload; otherwise the frame takes the ordinary path.

Example:
    >>> fb = FrameBuffer(opcodes={0x1F}, max_length=100)
    >>> fb.feed(pack_header(0x1F, 9, 2) + b"hi")
    >>> fb.next_frame()
    (31, 9, bytearray(b'hi'))
    >>> fb.next_frame() is None
    True
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Collection
from typing import Final, NamedTuple

from kvsync.errors import (
    LimitExceededError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)

__all__ = [
    "GROW_STEP",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "NO_REPLY",
    "PEEK_BYTES",
    "PROTOCOL_VERSION",
    "SMALL_FRAME",
    "Frame",
    "FrameBuffer",
    "Header",
    "Landed",
    "Landing",
    "Payload",
    "ReceiveBudget",
    "check_header",
    "pack_header",
    "unpack_header",
]

#: The four bytes that open every frame.
MAGIC: bytes = b"KVSY"
#: Bumped whenever the byte layout changes; peers of different versions refuse each other.
PROTOCOL_VERSION: int = 2
#: ``struct`` layout of the header (the only one: the codec appends field codes to it).
HEADER: struct.Struct = struct.Struct("<4sBBHQQ")
#: Bytes in a frame header.
HEADER_SIZE: int = HEADER.size
#: A request id with this bit set asks for no reply unless the request fails: the server
#: answers such a request only with an ``ErrorReply`` (kvsync's ``set``, like torch's
#: SET, does not wait for the server).
NO_REPLY: Final = 1 << 63
#: Payloads up to this size are cut out of the scratch buffer; larger ones get their own.
SMALL_FRAME: Final = 8 * 1024
_SCRATCH: Final = 4 * 1024  # initial size: 10,000 idle connections hold 40 MB
_MIN_FREE: Final = 1024
_LAZY: Final = 1 << 20  # payloads this big get memory that is not zeroed first
_MAGIC_SIZE: Final = len(MAGIC)
#: A big payload's first reservation from the budget; it doubles as data arrives.
GROW_STEP: Final = 16 << 20
#: A big payload's leading bytes handed to ``check_prefix`` (its field lengths are there).
PEEK_BYTES: Final = 64 * 1024

#: A received frame's payload: a ``bytearray``, or for a big one a writable byte
#: ``memoryview`` (see :func:`_fresh`). Decoders accept either.
Payload = bytearray | memoryview


class Header(NamedTuple):
    """A decoded frame header (checked by :func:`check_header` before it is used)."""

    magic: bytes
    version: int
    opcode: int
    flags: int
    request_id: int
    length: int


def pack_header(opcode: int, request_id: int, length: int) -> bytes:
    """The 24 header bytes of a frame of this protocol version.

    Raises:
        struct.error: a field is out of range.

    Example:
        >>> h = pack_header(0x10, 7, 3)
        >>> len(h), unpack_header(h)
        (24, Header(magic=b'KVSY', version=2, opcode=16, flags=0, request_id=7, length=3))
    """
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, opcode, 0, request_id, length)


def unpack_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Split the header at ``offset`` into its fields; :func:`check_header` checks them.

    Example:
        >>> unpack_header(pack_header(0x11, 2, 9)).request_id
        2
    """
    return Header._make(HEADER.unpack_from(data, offset))


def check_header(
    magic: bytes, version: int, opcode: int, flags: int, length: int,
    opcodes: Collection[int], max_length: int, cap_name: str = "max_frame_bytes",
) -> None:  # fmt: skip
    """Refuse a header this side cannot accept (the fields of :class:`Header`, but the
    request id), naming what is wrong with it (``cap_name``: what the message calls
    ``max_length``).

    Raises:
        VersionMismatchError: the magic is not kvsync's, or the version differs.
        RemoteProtocolError: unknown flags or opcode.
        LimitExceededError: the payload is longer than ``max_length``.

    Example:
        >>> check_header(MAGIC, PROTOCOL_VERSION, 0x11, 0, 9, {0x11}, 9)
        >>> check_header(MAGIC, PROTOCOL_VERSION, 0x11, 0, 9, {0x10}, 9)
        Traceback (most recent call last):
        ...
        kvsync.errors.RemoteProtocolError: unknown opcode 0x11
    """
    if (
        magic == MAGIC
        and version == PROTOCOL_VERSION
        and not flags
        and opcode in opcodes
        and length <= max_length
    ):
        return
    if magic != MAGIC:
        raise VersionMismatchError(
            f"peer is not speaking the kvsync protocol: its frame starts with {magic!r},"
            f" expected {MAGIC!r} (protocol version {PROTOCOL_VERSION})"
        )
    if version != PROTOCOL_VERSION:
        raise VersionMismatchError(
            f"peer speaks kvsync protocol version {version}, this side speaks"
            f" version {PROTOCOL_VERSION}"
        )
    if flags:
        raise RemoteProtocolError(f"frame has unknown flags 0x{flags:04x}")
    if opcode not in opcodes:
        raise RemoteProtocolError(f"unknown opcode 0x{opcode:02x}")
    raise LimitExceededError(
        f"frame payload of {length} bytes is over the limit of {max_length} bytes ({cap_name})"
    )


def _fresh(size: int) -> Payload:
    """A writable buffer for a payload of ``size`` bytes, about to be overwritten.

    ``bytearray(size)`` zeroes every page first: for 64 MiB that costs about as much as
    receiving it. A big payload gets numpy's uninitialised memory instead (mapped lazily,
    with huge pages where the kernel offers them), exposed as a plain byte memoryview.
    """
    if size < _LAZY:
        return bytearray(size)
    import numpy as np  # on first use: a store that moves no big value never imports it

    return np.empty(size, dtype=np.uint8).data


class Landing(NamedTuple):
    """Where a big reply of one request id lands (see the module docstring)."""

    opcode: int
    prefix: bytes  # the payload's expected first bytes
    target: memoryview  # writable, unsigned bytes: receives the rest of the payload
    value: object  # what :class:`Landed` carries when the payload landed


class Landed(NamedTuple):
    """A payload received straight into a landing's target; ``value`` is the landing's."""

    value: object


class ReceiveBudget:
    """Bytes that half-received frames may hold, shared by every connection of a server.

    Frame buffers :meth:`take` memory before growing and :meth:`give` it back when the
    frame completes or the connection goes; a frame that would overdraw the budget is
    refused with :class:`~kvsync.errors.LimitExceededError`.

    Example:
        >>> b = ReceiveBudget(100); b.take(60); b.held
        60
        >>> b.take(50)
        Traceback (most recent call last):
        ...
        kvsync.errors.LimitExceededError: receiving this frame needs 50 more bytes, over the \
server's budget for half-received frames (60 of 100 bytes held; max_pending_bytes)
        >>> b.give(60); b.held
        0
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        """Reserve ``n`` bytes.

        Raises:
            LimitExceededError: that would hold more than :attr:`limit` bytes.
        """
        if self.held + n > self.limit:
            raise LimitExceededError(
                f"receiving this frame needs {n} more bytes, over the server's budget for"
                f" half-received frames ({self.held} of {self.limit} bytes held;"
                " max_pending_bytes)"
            )
        self.held += n

    def give(self, n: int) -> None:
        """Return ``n`` reserved bytes."""
        self.held -= n


#: A complete frame: ``(opcode, request id, payload)``.
Frame = tuple[int, int, "Payload | Landed"]


class FrameBuffer:
    """Received bytes -> ``(opcode, request id, payload)`` frames.

    Args:
        opcodes: the opcodes accepted (:func:`check_header`).
        max_length: the longest payload accepted.
        check_prefix: called with the opcode and the first :data:`PEEK_BYTES` (a copy) of
            each longer payload once they are in; raises to refuse the frame.
        budget: where big payload buffers reserve their memory, or ``None``.

    Attributes:
        max_length: the longest payload accepted (may change, e.g. once a handshake
            completes), and ``cap_name`` what errors call it.
        last_request_id: the request id of the last header checked (``0`` for a frame that
            cannot be kvsync), ``None`` before the first.
    """

    def __init__(
        self,
        opcodes: Collection[int],
        max_length: int,
        *,
        check_prefix: Callable[[int, bytes], None] | None = None,
        budget: ReceiveBudget | None = None,
    ) -> None:
        self._opcodes = opcodes
        self.max_length = max_length
        self.cap_name = "max_frame_bytes"
        self._check_prefix = check_prefix
        self._budget = budget
        self._reserved = 0  # bytes taken from the budget for the payload being received
        self._refused: Exception | None = None  # what check_prefix or the budget refused
        self.last_request_id: int | None = None
        self._scratch = bytearray(_SCRATCH)
        self._start = self._end = 0
        self._header: Header | None = None
        self._payload: Payload | None = None
        self._filled = 0
        self._ready: deque[Frame] = deque()  # complete big frames
        self._landings: dict[int, Landing] = {}  # request id -> where its reply lands
        self._landing: Landing | None = None  # of the payload being received

    def land(self, request_id: int, landing: Landing | None) -> None:
        """Register (or with ``None`` forget) where the big reply to ``request_id`` lands."""
        if landing is None:
            self._landings.pop(request_id, None)
        else:
            self._landings[request_id] = landing

    @property
    def held(self) -> int:
        """Bytes reserved for the payload being received (``0`` between big frames)."""
        return self._reserved

    @property
    def mid_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
        return self._payload is not None or self._header is not None or self._start != self._end

    def discard(self) -> None:
        """Drop every received byte and give the budget back (the connection is gone)."""
        self._release()
        self._header = self._payload = self._landing = None
        self._scratch = bytearray()
        self._start = self._end = 0
        self._ready.clear()
        self._landings.clear()

    def _reserve(self, n: int) -> None:
        if self._budget is not None:
            self._budget.take(n)
        self._reserved += n

    def _release(self) -> None:
        if self._budget is not None:
            self._budget.give(self._reserved)
        self._reserved = 0

    def _allocate(self, length: int) -> None:
        """Give the payload being received its own buffer, reserving its first step."""
        self._reserve(min(length, GROW_STEP))
        self._payload = _fresh(length)

    def _grow(self) -> None:
        """Double a payload's reservation once the bytes received reach it (up to its
        length); a budget refusal fails the frame."""
        h = self._header
        if self._payload is None or h is None or self._landing is not None:
            return
        if self._filled < self._reserved or self._reserved >= h.length:
            return
        try:
            self._reserve(min(h.length, 2 * self._reserved) - self._reserved)
        except LimitExceededError as exc:
            self._refused = exc.with_traceback(None)

    def _peek(self, before: int) -> None:
        """Show ``check_prefix`` a big payload's leading bytes once they are all in."""
        h, payload = self._header, self._payload
        if (
            self._check_prefix is None
            or payload is None
            or h is None
            or self._landing is not None
            or not before < PEEK_BYTES <= self._filled
            or h.length <= PEEK_BYTES
        ):
            return
        try:
            self._check_prefix(h.opcode, bytes(payload[:PEEK_BYTES]))
        except Exception as exc:  # refused: the frame fails here, its rest is never read
            self._refused = exc.with_traceback(None)

    def receive_buffer(self) -> memoryview | bytearray:
        """A writable buffer to ``recv_into``; then call :meth:`advance` with the count.

        While nothing is pending this is the empty scratch buffer itself (no view made).

        Raises:
            Exception: the frame being received was refused (what :meth:`next_frame`
                raises).
        """
        if self._payload is not None:
            if self._refused is not None:
                raise self._refused
            if self._landing is not None:
                if self._filled >= len(self._payload):
                    return self._landing.target[self._filled - len(self._payload) :]
                return memoryview(self._payload)[self._filled :]
            return memoryview(self._payload)[self._filled : self._reserved]
        if self._start == self._end:
            self._start = self._end = 0
            return self._scratch
        if len(self._scratch) - self._end < _MIN_FREE and self._start:
            n = self._end - self._start
            self._scratch[:n] = self._scratch[self._start : self._end]
            self._start, self._end = 0, n
        if self._end == len(self._scratch):
            self._scratch += bytes(len(self._scratch))
        return memoryview(self._scratch)[self._end :]

    def advance(self, n: int) -> None:
        """Record that ``n`` bytes were written into the last :meth:`receive_buffer`.

        Raises:
            LocalProtocolError: ``n`` is negative or larger than that buffer.
        """
        if self._payload is not None:
            if self._landing is None:
                room = self._reserved - self._filled
            else:
                room = len(self._payload) - self._filled
                if room <= 0:  # the rest goes to the target
                    room += self._landing.target.nbytes
        else:
            room = len(self._scratch) - self._end
        if not 0 <= n <= room:
            raise LocalProtocolError(f"advance({n}) outside the receive buffer of {room} bytes")
        if self._payload is not None:
            before = self._filled
            self._filled += n
            self._peek(before)
            self._complete_payload()
            self._grow()
        else:
            self._end += n

    def _complete_payload(self) -> None:
        """Queue a fully received big payload, so the next bytes go to the scratch buffer."""
        h, payload, landing = self._header, self._payload, self._landing
        if payload is None or h is None or self._refused is not None:
            return
        if landing is None:
            if self._filled < h.length:
                return
            done: Payload | Landed = payload
        else:
            if self._filled < len(payload):
                return
            if self._filled == len(payload) and bytes(payload) != landing.prefix:
                self._landing = None  # not the expected layout: the ordinary path
                self._allocate(h.length)
                assert self._payload is not None
                self._payload[: self._filled] = payload
                self._complete_payload()
                return
            if self._filled < len(payload) + landing.target.nbytes:
                return
            done = Landed(landing.value)
        self._release()
        self._ready.append((h.opcode, h.request_id, done))
        self._header, self._payload, self._landing = None, None, None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy received bytes in (any split of the stream gives the same frames)."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            buf = self.receive_buffer()
            n = min(len(buf), view.nbytes)
            buf[:n] = view[:n]
            del buf  # a live view would stop the scratch buffer from growing
            self.advance(n)
            view = view[n:]

    def _start_big_payload(self, h: Header) -> None:
        """Move the start of a payload over :data:`SMALL_FRAME` into its own buffer (or,
        for a registered landing, receive its leading bytes first)."""
        landing = self._landings.pop(h.request_id, None) if self._landings else None
        if landing is not None and (
            h.opcode != landing.opcode or h.length != len(landing.prefix) + landing.target.nbytes
        ):
            landing = None
        self._landing = landing
        self._filled = 0
        if landing is not None:
            self._payload = bytearray(len(landing.prefix))
        else:
            try:
                self._allocate(h.length)
            except LimitExceededError as exc:
                self._refused = exc.with_traceback(None)
                return
        n = min(h.length, self._end - self._start)
        if landing is None:
            assert self._payload is not None
            self._payload[:n] = self._scratch[self._start : self._start + n]
            self._filled = n
            self._start += n
            self._peek(0)
            self._complete_payload()
            self._grow()
        else:  # through receive_buffer: the leading bytes are checked first
            data = bytes(self._scratch[self._start : self._start + n])
            self._start += n
            self.feed(data)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive.

        Raises:
            VersionMismatchError, RemoteProtocolError, LimitExceededError: a refused header
                (see :func:`check_header`); bytes that cannot be kvsync are refused as soon
                as their first four arrive.
        """
        if self._ready:
            return self._ready.popleft()
        if self._refused is not None:
            raise self._refused
        h = self._header
        if h is None:
            if self._payload is not None:
                return None  # a big payload is streaming in
            start = self._start
            avail = self._end - start
            if avail < HEADER_SIZE:
                if avail >= _MAGIC_SIZE:  # refused before the rest of its header arrives
                    magic = bytes(self._scratch[start : start + _MAGIC_SIZE])
                    if magic != MAGIC:
                        self.last_request_id = 0
                        check_header(magic, 0, 0, 0, 0, (), 0)
                return None
            magic, version, opcode, flags, request_id, length = HEADER.unpack_from(
                self._scratch, start
            )
            self.last_request_id = request_id if magic == MAGIC else 0  # else it means nothing
            check_header(
                magic, version, opcode, flags, length, self._opcodes, self.max_length,
                self.cap_name,
            )  # fmt: skip
            begin = self._start = start + HEADER_SIZE
            end = begin + length
            if length <= SMALL_FRAME and end <= self._end:  # the usual: all here, cut it out
                self._start = end
                if self._landings:
                    self._landings.pop(request_id, None)
                return opcode, request_id, self._scratch[begin:end]
            h = self._header = Header(magic, version, opcode, flags, request_id, length)
            if length > SMALL_FRAME:
                self._start_big_payload(h)
                if self._refused is not None:
                    raise self._refused
                return self._ready.popleft() if self._ready else None
        elif self._payload is not None:
            return None  # a big payload is streaming in
        if self._end - self._start < h.length:
            return None
        begin = self._start
        self._start = end = begin + h.length
        self._header = None
        if self._landings:
            self._landings.pop(h.request_id, None)
        return h.opcode, h.request_id, self._scratch[begin:end]
