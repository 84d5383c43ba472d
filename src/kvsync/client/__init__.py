"""The client side of kvsync's protocol: a blocking, thread-safe, pipelining connection.

:mod:`kvsync.client.connect` dials (address resolution, connect retries with jittered
backoff); :class:`Client` runs the handshake and matches replies to requests by id.

Example:
    >>> from kvsync.client import Backoff
    >>> Backoff().lo > 0
    True
"""

from __future__ import annotations

from kvsync.client.client import Client
from kvsync.client.connect import Backoff, connect, is_loopback, resolve

__all__ = ["Backoff", "Client", "connect", "is_loopback", "resolve"]
