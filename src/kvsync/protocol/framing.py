"""Splitting a received byte stream into frames, with a zero-copy path for big payloads.

Strategy: bytes land in a small scratch buffer (``feed`` copies into it; ``receive_buffer``
and ``advance`` let a socket ``recv_into`` it directly). Once a frame header is complete it
is checked before anything is allocated: a header with the right magic and version, no
flags, a known opcode and a length within the cap passes a quick test; any other goes to a
``validate`` callback that says why it is refused. A payload of at most
:data:`SMALL_FRAME` bytes is sliced out of the scratch buffer (one small copy); a larger
one gets a fresh buffer of exactly its size (see :func:`_fresh`) that ``receive_buffer``
then exposes, so a big value goes from the kernel into its final buffer without a
Python-level copy. Every payload is its own buffer, so views into it stay valid.

A caller expecting a big reply of known layout may register a *landing* for its request id
(:meth:`FrameBuffer.land`): the payload's expected leading bytes and a caller-owned buffer
for the rest. Such a frame's leading bytes are received first and compared; when they match,
the rest goes from the kernel straight into the caller's buffer and :meth:`next_frame` yields
a :class:`Landed` instead of a payload; otherwise the frame takes the ordinary path.

Example:
    >>> from kvsync.protocol.frame import pack_header
    >>> fb = FrameBuffer(lambda header: None)
    >>> fb.feed(pack_header(0x1F, 9, 2) + b"hi")
    >>> header, payload = fb.next_frame()
    >>> header.request_id, payload
    (9, bytearray(b'hi'))
    >>> fb.next_frame() is None
    True
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Collection
from typing import Final, NamedTuple

import numpy as np

from kvsync.errors import LocalProtocolError
from kvsync.protocol.fields import Payload
from kvsync.protocol.frame import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    Header,
)

__all__ = ["SMALL_FRAME", "FrameBuffer", "Landed", "Landing"]

#: Payloads up to this size are cut out of the scratch buffer; larger ones get their own.
SMALL_FRAME: Final = 8 * 1024
_SCRATCH: Final = 4 * 1024  # initial size: 10,000 idle connections hold 40 MB
_MIN_FREE: Final = 1024
_LAZY: Final = 1 << 20  # payloads this big get memory that is not zeroed first
_HEADER_INT: Final = struct.Struct("<IBBHQQ")  # HEADER with the magic as an int (no bytes made)
_MAGIC_INT: Final = int.from_bytes(MAGIC, "little")
_MAGIC_SIZE: Final = len(MAGIC)


def _fresh(size: int) -> Payload:
    """A writable buffer for a payload of ``size`` bytes, about to be overwritten.

    ``bytearray(size)`` zeroes every page first: for 64 MiB that costs about as much as
    receiving it. A big payload gets numpy's uninitialised memory instead (mapped lazily,
    with huge pages where the kernel offers them), exposed as a plain byte memoryview.
    """
    if size < _LAZY:
        return bytearray(size)
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


class FrameBuffer:
    """Received bytes -> ``(header, payload)`` frames.

    Args:
        validate: called with each header that fails the quick test (and with a header whose
            magic is the first four bytes of a frame that cannot be kvsync, as soon as they
            arrive); raises to refuse.
        opcodes: the opcodes the quick test accepts; ``None`` sends every header to
            ``validate``.
        max_length: the longest payload the quick test accepts.

    Attributes:
        last_request_id: the request id of the last header checked (``0`` for a frame that
            cannot be kvsync), ``None`` before the first.
    """

    def __init__(
        self,
        validate: Callable[[Header], None],
        opcodes: Collection[int] | None = None,
        max_length: int = 0,
    ) -> None:
        self._validate = validate
        self._opcodes: Collection[int] = () if opcodes is None else opcodes
        self._max_length = max_length
        self.last_request_id: int | None = None
        self._scratch = bytearray(_SCRATCH)
        self._start = self._end = 0
        self._header: Header | None = None
        self._payload: Payload | None = None
        self._filled = 0
        self._ready: deque[tuple[Header, Payload | Landed]] = deque()  # complete big frames
        self._landings: dict[int, Landing] = {}  # request id -> where its reply lands
        self._landing: Landing | None = None  # of the payload being received

    def land(self, request_id: int, landing: Landing | None) -> None:
        """Register (or with ``None`` forget) where the big reply to ``request_id`` lands."""
        if landing is None:
            self._landings.pop(request_id, None)
        else:
            self._landings[request_id] = landing

    def receive_buffer(self) -> memoryview:
        """A writable view to ``recv_into``; then call :meth:`advance` with the count."""
        if self._payload is not None:
            if self._landing is not None and self._filled >= len(self._payload):
                return self._landing.target[self._filled - len(self._payload) :]
            return memoryview(self._payload)[self._filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._scratch) - self._end < _MIN_FREE and self._start:
            n = self._end - self._start
            self._scratch[:n] = self._scratch[self._start : self._end]
            self._start, self._end = 0, n
        if self._end == len(self._scratch):
            self._scratch += bytes(len(self._scratch))
        return memoryview(self._scratch)[self._end :]

    def receive_from(self, recv_into: Callable[[memoryview | bytearray], int]) -> tuple[int, int]:
        """Call ``recv_into`` once on the receive buffer and record what it wrote.

        Equivalent to :meth:`receive_buffer`, ``recv_into`` and :meth:`advance` (the usual
        case, an empty scratch buffer, is filled from its start with no view made).
        Returns the byte count written and the size of the buffer offered; whatever
        ``recv_into`` raises propagates with nothing recorded.
        """
        if self._payload is None and self._start == self._end:
            self._start = self._end = 0
            self._end = n = recv_into(self._scratch)
            return n, len(self._scratch)
        with self.receive_buffer() as buf:
            n = recv_into(buf)
            size = buf.nbytes
        self.advance(n)
        return n, size

    def receive_frames(
        self, recv_into: Callable[[memoryview | bytearray], int]
    ) -> tuple[list[tuple[int, int, Payload | Landed]], Exception | None, int, int]:
        """:meth:`receive_from`, then every frame now complete as ``(opcode, request id,
        payload)``: returns ``(frames, error, byte count, buffer size)``, where ``error`` is
        what ``validate`` raised for a header after those frames (``None`` if all was
        well; :meth:`next_frame` raises it again). The usual case, one small frame received
        whole into an empty buffer, is handled without further calls.

        Raises:
            Whatever ``recv_into`` raises (nothing recorded).
        """
        if (
            self._start == self._end
            and self._header is None
            and self._payload is None
            and not self._ready
        ):  # nothing pending: receive into the empty scratch buffer
            scratch = self._scratch
            self._start = self._end = 0  # (if recv_into raises, the buffer stays empty)
            self._end = n = recv_into(scratch)
            if n >= HEADER_SIZE:
                magic, version, opcode, flags, request_id, length = _HEADER_INT.unpack_from(scratch)
                if (
                    n == HEADER_SIZE + length
                    and length <= SMALL_FRAME
                    and magic == _MAGIC_INT
                    and version == PROTOCOL_VERSION
                    and not flags
                    and opcode in self._opcodes
                    and length <= self._max_length
                ):  # one whole frame, and a good header: cut it out, the buffer is empty again
                    self.last_request_id = request_id
                    self._end = 0
                    if self._landings:
                        self._landings.pop(request_id, None)
                    return [(opcode, request_id, scratch[HEADER_SIZE:n])], None, n, len(scratch)
            size = len(scratch)
        else:
            n, size = self.receive_from(recv_into)
        frames: list[tuple[int, int, Payload | Landed]] = []
        for _ in range(1 << 40):
            try:
                frame = self.next_frame()
            except Exception as exc:  # validate refused a header: the frames before it count
                return frames, exc, n, size
            if frame is None:
                break
            header, payload = frame
            frames.append((header.opcode, header.request_id, payload))
        return frames, None, n, size

    def advance(self, n: int) -> None:
        """Record that ``n`` bytes were written into the last :meth:`receive_buffer`.

        Raises:
            LocalProtocolError: ``n`` is negative or larger than that buffer.
        """
        if self._payload is not None:
            room = len(self._payload) - self._filled
            if self._landing is not None and room <= 0:  # the rest goes to the target
                room += self._landing.target.nbytes
        else:
            room = len(self._scratch) - self._end
        if not 0 <= n <= room:
            raise LocalProtocolError(f"advance({n}) outside the receive buffer of {room} bytes")
        if self._payload is not None:
            self._filled += n
            self._complete_payload()
        else:
            self._end += n

    def _complete_payload(self) -> None:
        """Queue a fully received big payload, so the next bytes go to the scratch buffer."""
        if self._payload is None or self._filled < len(self._payload):
            return
        assert self._header is not None
        landing = self._landing
        if landing is not None and self._filled == len(self._payload):  # leading bytes in
            if bytes(self._payload) != landing.prefix:  # not the expected layout: ordinary path
                payload = _fresh(self._header.length)
                payload[: self._filled] = self._payload
                self._payload, self._landing = payload, None
                return
        if landing is not None and self._filled < len(self._payload) + landing.target.nbytes:
            return
        self._ready.append((self._header, Landed(landing.value) if landing else self._payload))
        self._header, self._payload, self._landing = None, None, None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Copy received bytes in (any split of the stream gives the same frames)."""
        view = memoryview(data).cast("B")
        while view.nbytes:
            with self.receive_buffer() as buf:
                n = min(buf.nbytes, view.nbytes)
                buf[:n] = view[:n]
            self.advance(n)
            view = view[n:]

    def _parse_header(self) -> None:
        """Refuse a partial header that cannot be kvsync; move a large payload (its header
        checked by :meth:`next_frame`) into its own buffer."""
        if self._header is None and self._payload is None:
            start = self._start
            magic = bytes(self._scratch[start : min(start + _MAGIC_SIZE, self._end)])
            if len(magic) == _MAGIC_SIZE and magic != MAGIC:
                self.last_request_id = 0
                self._validate(Header(magic, PROTOCOL_VERSION, 0, 0, 0, 0))
            return
        h = self._header
        if h is not None and self._payload is None and h.length > SMALL_FRAME:
            landing = self._landings.pop(h.request_id, None) if self._landings else None
            if landing is not None and (
                h.opcode != landing.opcode
                or h.length != len(landing.prefix) + landing.target.nbytes
            ):
                landing = None
            self._landing = landing
            self._payload = bytearray(len(landing.prefix)) if landing else _fresh(h.length)
            self._filled = 0
            n = min(h.length, self._end - self._start)
            if landing is None:
                self._payload[:n] = self._scratch[self._start : self._start + n]
                self._filled = n
                self._start += n
                self._complete_payload()
            else:  # through receive_buffer: the leading bytes are checked first
                data = bytes(self._scratch[self._start : self._start + n])
                self._start += n
                self.feed(data)

    def next_frame(self) -> tuple[Header, Payload | Landed] | None:
        """The next complete frame, or ``None`` until more bytes arrive.

        Raises:
            Whatever ``validate`` raises for a refused header.
        """
        if self._ready:
            return self._ready.popleft()
        start = self._start
        if self._header is None and self._payload is None:
            avail = self._end - start
            if avail < _MAGIC_SIZE:  # nothing to look at yet (the usual end of a batch)
                return None
            if avail >= HEADER_SIZE:  # a header is complete: check it (the quick test)
                fields = HEADER.unpack_from(self._scratch, start)
                magic, version, opcode, flags, request_id, length = fields
                self.last_request_id = request_id
                header = tuple.__new__(Header, fields)
                if (
                    magic != MAGIC
                    or version != PROTOCOL_VERSION
                    or flags
                    or opcode not in self._opcodes
                    or length > self._max_length
                ):
                    self._validate(header)
                begin = start + HEADER_SIZE
                end = begin + length
                if length <= SMALL_FRAME and end <= self._end:  # small and all here: cut out
                    self._start = end
                    if self._landings:
                        self._landings.pop(request_id, None)
                    return header, self._scratch[begin:end]
                self._header, self._start = header, begin
        self._parse_header()
        if self._ready:
            return self._ready.popleft()
        h = self._header
        if h is None or self._payload is not None or self._end - self._start < h.length:
            return None
        payload = self._scratch[self._start : self._start + h.length]
        self._start += h.length
        self._header = None
        if self._landings:
            self._landings.pop(h.request_id, None)
        return h, payload
