"""kvsync's wire protocol, sans-IO: bytes in, messages out, and messages back to buffers.

Nothing in this package opens a socket, starts a thread or reads a clock (a test checks its
imports). ``messages`` holds the message dataclasses, ``frame`` the fixed header, ``codec``
the field layouts derived from the message annotations, ``handshake`` the HMAC helpers and
``connection`` the h11-style :class:`Connection`. The byte layout is in ``docs/protocol.md``.

Example:
    >>> from kvsync.protocol import Connection, Role, NEED_DATA
    >>> Connection(Role.SERVER).next_event() is NEED_DATA
    True
"""

from __future__ import annotations

from kvsync.protocol import messages
from kvsync.protocol.codec import Decoder, Limits, encode_frame, fast_encoder
from kvsync.protocol.connection import NEED_DATA, Connection, Event, NeedData, Role, encode_error
from kvsync.protocol.frame import HEADER_SIZE, MAGIC, PROTOCOL_VERSION

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Connection",
    "Decoder",
    "Event",
    "Limits",
    "NeedData",
    "Role",
    "encode_error",
    "encode_frame",
    "fast_encoder",
    "messages",
]
