"""The connection handshake: version check and optional HMAC-SHA256 challenge-response.

Sequence (``docs/protocol.md`` has the frames)::

    client                                   server
    Hello(version, nonce)           ---->
                                    <----    HelloReply(version, caps, challenge, proof)
    Auth(HMAC(secret, "client" + challenge))   (only when the server has a secret)
                                    <----    OkReply, or ErrorReply(AUTHENTICATION) + close

``proof`` is ``HMAC(secret, "server" + nonce)``: a client holding the secret also checks the
server, so neither side talks to a peer that does not know it. Digests are compared with
:func:`hmac.compare_digest`.

Example:
    >>> sign(b"s3cret", CLIENT_LABEL, b"abc") == sign(b"s3cret", CLIENT_LABEL, b"abc")
    True
    >>> verify(b"s3cret", SERVER_LABEL, b"abc", sign(b"other", SERVER_LABEL, b"abc"))
    False
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["CLIENT_LABEL", "NONCE_BYTES", "SERVER_LABEL", "secret_bytes", "sign", "verify"]

#: Domain separation between the two directions' MACs.
CLIENT_LABEL: bytes = b"kvsync-client-auth:"
SERVER_LABEL: bytes = b"kvsync-server-auth:"
#: Random bytes in a nonce or challenge.
NONCE_BYTES: int = 32


def secret_bytes(secret: str | bytes | None) -> bytes | None:
    """The secret as bytes (``str`` is UTF-8 encoded); ``None`` or empty means none.

    Example:
        >>> secret_bytes("k"), secret_bytes("")
        (b'k', None)
    """
    if secret is None:
        return None
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    return raw or None


def sign(secret: bytes, label: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """HMAC-SHA256 of ``label + data`` under ``secret``.

    Example:
        >>> len(sign(b"k", CLIENT_LABEL, b"x"))
        32
    """
    return hmac.new(secret, label + bytes(data), hashlib.sha256).digest()


def verify(
    secret: bytes,
    label: bytes,
    data: bytes | bytearray | memoryview,
    proof: bytes | bytearray | memoryview,
) -> bool:
    """Whether ``proof`` is :func:`sign` of ``data``, compared in constant time.

    Example:
        >>> verify(b"k", CLIENT_LABEL, b"x", sign(b"k", CLIENT_LABEL, b"x"))
        True
    """
    return hmac.compare_digest(sign(secret, label, data), bytes(proof))
