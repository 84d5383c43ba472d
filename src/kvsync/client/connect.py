"""Dialling the store server: address resolution and connect retries with backoff.

Strategy (after redis-py's retry object): a :class:`Backoff` policy with full jitter and a
deadline is passed to :func:`connect`, which retries only the errors that mean "the server
is not up yet" (refused, reset, unreachable, timed out) so a client started before its
master still joins, while an unresolvable host fails at once naming host and port. Numeric
hosts are never sent to DNS: ``getaddrinfo`` is tried with ``AI_NUMERICHOST`` first.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from kvsync import defaults
from kvsync.env import check_port
from kvsync.errors import StoreConnectionError, StoreTimeoutError

__all__ = ["RETRYABLE", "Backoff", "connect", "is_loopback", "local_address_to", "resolve"]

logger = logging.getLogger(__name__)

#: Errors that mean "not listening yet": retried until the deadline.
RETRYABLE: tuple[type[OSError], ...] = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    TimeoutError,
    InterruptedError,
)
_RETRYABLE_ERRNO = {101, 111, 113, 104, 110}  # ENETUNREACH ECONNREFUSED EHOSTUNREACH ...

_AddrInfo = tuple[Any, ...]
#: Families whose plain numeric addresses skip getaddrinfo, with their address tails.
_NUMERIC: tuple[tuple[socket.AddressFamily, tuple[int, ...]], ...] = (
    (socket.AF_INET, ()),
    (socket.AF_INET6, (0, 0)),  # flowinfo, scope id
)
_RNG = random.Random()  # shared by Backoff objects: one is made per connection


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt ``k`` sleeps ``U(0, min(hi, lo*2**k))``.

    Example:
        >>> b = Backoff(lo=0.01, hi=1.0, rng=random.Random(0))
        >>> all(0 <= b.next_delay() <= 1.0 for _ in range(20))
        True
    """

    lo: float = defaults.CONNECT_BACKOFF_MIN
    hi: float = defaults.CONNECT_BACKOFF_MAX
    rng: random.Random = field(default_factory=lambda: _RNG)  # seeding one costs ~10 us
    attempt: int = 0

    def next_delay(self) -> float:
        """The next sleep, in seconds."""
        cap = min(self.hi, self.lo * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self.rng.uniform(0.0, cap)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (``localhost``, ``127.x``, ``::1``),
    decided from the text alone (no lookup).

    Example:
        >>> is_loopback("127.0.0.2"), is_loopback("::1"), is_loopback("10.0.0.1")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_address_to(host: str) -> str:
    """This machine's address on the route to ``host``: the one ``host`` can dial back.

    The kernel picks it as the source address of a UDP socket "connected" to ``host``;
    no packet is sent, and a numeric ``host`` is not looked up in DNS.

    Raises:
        StoreConnectionError: ``host`` cannot be resolved, or no route leads to it.

    Example:
        >>> local_address_to("127.0.0.1")
        '127.0.0.1'
    """
    family, _, _, _, addr = resolve(host, 9)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(addr)
        except OSError as exc:
            raise StoreConnectionError(f"no route from this host to {host}: {exc}") from exc
        return str(sock.getsockname()[0])


def resolve(host: str, port: int) -> list[_AddrInfo]:
    """Addresses for ``host:port``; a numeric host is used literally (no DNS).

    Raises:
        StoreConnectionError: the host cannot be resolved (names host:port).
        InvalidPortError: ``port`` is outside 0-65535.

    Example:
        >>> resolve("127.0.0.1", 80)[0][4], resolve("::1", 80)[0][4]
        (('127.0.0.1', 80), ('::1', 80, 0, 0))
    """
    check_port(port)
    for family, addr in _NUMERIC:  # the usual: an address in its plain form, no lookup
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, *addr))]
    try:  # a numeric form inet_pton does not take (a scope id, a short IPv4 form)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise StoreConnectionError(f"cannot resolve store address {host}:{port}: {exc}") from exc


def _retryable(exc: OSError) -> bool:
    return isinstance(exc, RETRYABLE) or exc.errno in _RETRYABLE_ERRNO


def connect(
    host: str,
    port: int,
    timeout: float,
    backoff: Backoff | None = None,
    retry_log_level: int = logging.DEBUG,
    peer_name: str = "store server",
) -> socket.socket:
    """A connected TCP socket (``TCP_NODELAY``, blocking) to ``host:port``, retrying
    refused/unreachable attempts with jittered backoff until ``timeout`` seconds pass.
    Each failed attempt is logged at ``retry_log_level``; ``peer_name`` names the server
    in errors.

    Raises:
        StoreConnectionError: unresolvable host, or a non-retryable socket error.
        StoreTimeoutError: nothing accepted the connection in time (names host:port).
    """
    infos = resolve(host, port)
    backoff = backoff or Backoff()
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    for attempt in range(1_000_000):
        for family, kind, proto, _, addr in infos:
            remaining = deadline - time.monotonic()
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(max(remaining, 0.001))
                sock.connect(addr)
            except OSError as exc:
                sock.close()
                if not _retryable(exc):
                    raise StoreConnectionError(
                        f"cannot connect to {peer_name} {host}:{port}: {exc}"
                    ) from exc
                last = exc
                logger.log(
                    retry_log_level,
                    "connect to %s:%d (attempt %d, %.1f s left): %s",
                    host,
                    port,
                    attempt + 1,
                    max(remaining, 0.0),
                    exc,
                )
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if attempt:
                logger.debug("connected to %s:%d after %d retries", host, port, attempt)
            return sock
        left = deadline - time.monotonic()
        delay = min(backoff.next_delay(), left)
        if delay <= 0:
            break
        logger.info(
            "connecting to store server %s:%d: attempt %d failed (%s); retrying for %.1f s more",
            host,
            port,
            attempt + 1,
            last,
            left,
        )
        time.sleep(delay)
    raise StoreTimeoutError(
        f"could not connect to {peer_name} {host}:{port} within {timeout:g} s (last error: {last})"
    )
