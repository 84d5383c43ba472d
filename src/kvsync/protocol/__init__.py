"""kvsync's wire protocol, sans-IO: bytes in, messages out, and messages back to buffers.

Nothing in this package opens a socket, starts a thread or reads a clock (a test checks its
imports). ``messages`` holds the store's message dataclasses and ``ps_messages`` the
parameter server's, ``framing`` the fixed header and the frame splitter, ``fields`` the
field layouts, ``codec`` the encoder and decoder compiled per message class from its
annotations, ``handshake`` the HMAC helpers and ``connection`` the h11-style
:class:`Connection`. The byte layout is in ``docs/protocol.md``.

Example:
    >>> from kvsync.protocol import Connection, Role, NEED_DATA
    >>> Connection(Role.SERVER).next_event() is NEED_DATA
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvsync.protocol import messages
from kvsync.protocol.codec import Limits, decode, encode_frame
from kvsync.protocol.connection import (
    NEED_DATA,
    Connection,
    Event,
    NeedData,
    Role,
    drain_events,
    encode_error,
)
from kvsync.protocol.framing import HEADER_SIZE, MAGIC, NO_REPLY, PROTOCOL_VERSION, Landing

if TYPE_CHECKING:
    from kvsync.protocol import ps_messages

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "NEED_DATA",
    "NO_REPLY",
    "PROTOCOL_VERSION",
    "Connection",
    "Event",
    "Landing",
    "Limits",
    "NeedData",
    "Role",
    "decode",
    "drain_events",
    "encode_error",
    "encode_frame",
    "messages",
    "ps_messages",
]


def __getattr__(name: str) -> Any:
    # ``ps_messages`` is imported on first use: a store client never compiles its codecs
    if name == "ps_messages":
        return importlib.import_module("kvsync.protocol.ps_messages")
    raise AttributeError(f"module 'kvsync.protocol' has no attribute {name!r}")
