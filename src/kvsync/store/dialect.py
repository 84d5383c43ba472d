"""Which protocol a ``TCPStore`` client speaks: kvsync's own, or torch's.

A :class:`kvsync.TCPStore` that is not the master is a client of kvsync's server
(``"kvsync"``) or of a PyTorch store server such as torchrun's agent store (``"torch"``,
:class:`~kvsync.client.torch.TorchClient`). The first rule that applies decides:

1. the constructor keyword ``TCPStore(..., dialect=...)``;
2. the environment variable ``KVSYNC_STORE_DIALECT``;
3. the address is torchrun's agent store: ``TORCHELASTIC_USE_AGENT_STORE`` is true, no
   launcher-hosted kvsync store is announced (``KVSYNC_STORE_ADDR``/``KVSYNC_STORE_PORT``,
   which ``kvsync-run`` sets) and the address is ``MASTER_ADDR``:``MASTER_PORT``:
   ``"torch"``. So ``TCPStore()`` under torchrun, and any store opened explicitly on
   torchrun's ``MASTER_ADDR``/``MASTER_PORT`` (the dist KVStore's job registry), speak
   torch's protocol with no configuration;
4. otherwise ``"kvsync"``.

The dialect is decided, not detected: a kvsync handshake sent to torch's server gets no
answer at all (its libuv server ignores a first message that is not torch's VALIDATE), so
detection could only be a guess on a timer. The master hosts kvsync's server and always
talks to it in kvsync's protocol; ``dialect="torch"`` for a master is a ``ValueError``
(``KVSYNC_STORE_DIALECT`` only steers clients). torch's protocol has no authentication, so
``"torch"`` with a shared secret (``KVSYNC_SECRET``) is refused too.

Example:
    >>> from kvsync import env
    >>> torchrun = env.read({"TORCHELASTIC_USE_AGENT_STORE": "True",
    ...                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    >>> choose_dialect(None, torchrun, "127.0.0.1", 29500, is_master=False)
    'torch'
    >>> choose_dialect(None, torchrun, "127.0.0.1", 7000, is_master=False)
    'kvsync'
    >>> choose_dialect(None, env.read({"KVSYNC_STORE_DIALECT": "torch"}), "h", 1,
    ...                is_master=False)
    'torch'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvsync import env
from kvsync.client import Client

if TYPE_CHECKING:  # torch's codec is imported only by a store that speaks it
    from kvsync.client.torch import TorchClient

__all__ = ["DIALECTS", "choose_dialect", "open_client"]

#: The values of ``dialect=`` and ``KVSYNC_STORE_DIALECT``.
DIALECTS = env.DIALECT_CHOICES


def choose_dialect(
    keyword: str | None,
    environment: env.Environment,
    host: str,
    port: int,
    *,
    is_master: bool,
) -> str:
    """Apply the module's rules; one of :data:`DIALECTS`.

    Args:
        keyword: the constructor's ``dialect`` (``None``: not given).
        environment: the snapshot the variables are read from.
        host, port: the address the store dials.
        is_master: whether this store hosts kvsync's server.

    Raises:
        ValueError: an unknown ``dialect=``, or ``"torch"`` for a master (``env.read``
            already refused an unknown ``KVSYNC_STORE_DIALECT``).

    Example:
        >>> choose_dialect("torch", env.read({}), "127.0.0.1", 0, is_master=True)
        Traceback (most recent call last):
        ...
        ValueError: dialect='torch' is for clients of a torch server, not for a master
    """
    e = environment
    if keyword is not None and keyword not in DIALECTS:
        raise ValueError(f"dialect={keyword!r} is not one of {', '.join(DIALECTS)}")
    if is_master:
        if keyword == "torch":
            raise ValueError("dialect='torch' is for clients of a torch server, not for a master")
        return "kvsync"
    if keyword is not None:
        return keyword
    if e.store_dialect is not None:
        return e.store_dialect
    if not e.use_agent_store:  # (the usual: the address variables are not read at all)
        return "kvsync"
    launcher_store = e.store_addr is not None and e.store_port is not None
    agent_store = (host, port) == (e.master_addr, e.master_port)
    return "kvsync" if launcher_store or not agent_store else "torch"


def open_client(
    host: str,
    port: int,
    dialect: str,
    *,
    timeout: float,
    secret: str | None = None,
    timeout_hint: str = "",
) -> Client | TorchClient:
    """A connected client of ``host:port`` speaking ``dialect``.

    Raises:
        StoreConnectionError, StoreTimeoutError: as :class:`~kvsync.client.Client` and
            :class:`~kvsync.client.torch.TorchClient` raise them.
        ValueError: ``dialect="torch"`` with a ``secret`` (torch's protocol has no
            authentication).

    Example:
        >>> from kvsync.server import StoreServer
        >>> with StoreServer().start() as server:
        ...     with open_client("127.0.0.1", server.port, "kvsync", timeout=5) as client:
        ...         type(client).__name__
        'Client'
    """
    if dialect != "torch":
        return Client(host, port, timeout=timeout, secret=secret, timeout_hint=timeout_hint)
    if secret is not None:
        raise ValueError(
            f"{env.KVSYNC_SECRET} is set but the store at {host}:{port} speaks torch's "
            "protocol, which cannot authenticate; unset one of them"
        )
    from kvsync.client.torch import TorchClient

    return TorchClient(host, port, timeout=timeout, timeout_hint=timeout_hint)
