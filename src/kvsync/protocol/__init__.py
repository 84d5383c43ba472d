"""kvsync's wire protocol, sans-IO: bytes in, messages out, and messages back to buffers.

Nothing in this package opens a socket, starts a thread or reads a clock.
"""

from __future__ import annotations

from kvsync.protocol import messages

__all__ = ["messages"]
