"""The fixed frame header every kvsync message starts with.

Layout (24 bytes, little endian; ``docs/protocol.md`` has the table)::

    offset  size  field
    0       4     magic            b"KVSY"
    4       1     version          PROTOCOL_VERSION
    5       1     opcode           kvsync.protocol.messages.Opcode
    6       2     flags            reserved, must be 0
    8       8     request id       unsigned, chosen by the client, echoed in the reply
    16      8     payload length   unsigned, bytes following the header

Example:
    >>> h = pack_header(0x10, 7, 3)
    >>> len(h), unpack_header(h)
    (24, Header(magic=b'KVSY', version=1, opcode=16, flags=0, request_id=7, length=3))
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "PROTOCOL_VERSION",
    "Header",
    "pack_header",
    "unpack_header",
]

#: The four bytes that open every frame.
MAGIC: bytes = b"KVSY"
#: Bumped whenever the byte layout changes; peers of different versions refuse each other.
PROTOCOL_VERSION: int = 1
#: ``struct`` layout of the header.
HEADER: struct.Struct = struct.Struct("<4sBBHQQ")
#: Bytes in a frame header.
HEADER_SIZE: int = HEADER.size


class Header(NamedTuple):
    """A decoded frame header (not yet validated)."""

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
        >>> pack_header(0x80, 1, 0)[:4]
        b'KVSY'
    """
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, opcode, 0, request_id, length)


def unpack_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """Split the header at ``offset`` into its fields; the caller validates them.

    Example:
        >>> unpack_header(pack_header(0x11, 2, 9)).request_id
        2
    """
    return Header._make(HEADER.unpack_from(data, offset))
