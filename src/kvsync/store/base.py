"""The Store API, implemented once over a single abstract request method.

:class:`Store` checks arguments, turns ``str`` into UTF-8 bytes, converts timeouts, builds
the request messages of :mod:`kvsync.protocol.messages` and interprets the replies; a
concrete store only implements ``_call(msg, timeout) -> reply`` (in process for
:class:`~kvsync.store.HashStore`, over a socket for ``TCPStore``). Error replies become the
:mod:`kvsync.errors` class of their code, through :func:`kvsync.errors.error_from_code`.

Example:
    >>> from kvsync.store import HashStore
    >>> store = HashStore()
    >>> store.set("first_key", "first_value")
    >>> store.get("first_key")
    b'first_value'
    >>> store.get("missing")
    b''
    >>> store.add("counter", 2), store.add("counter", 3)
    (2, 5)
    >>> store.delete_key("first_key")
    True
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

from kvsync import defaults
from kvsync.errors import RemoteProtocolError, StoreConnectionError, error_from_code
from kvsync.progress import in_slices
from kvsync.progress import interval as progress_interval
from kvsync.protocol import messages as m
from kvsync.store.arguments import (
    REPLY_GRACE_SECONDS,
    Timeout,
    Value,
    check_key,
    check_keys,
    check_world_size,
    reply_timeout,
    to_buffer,
    to_ms,
    to_seconds,
)
from kvsync.store.sync import barrier as sync_barrier

__all__ = ["REPLY_GRACE_SECONDS", "Store", "Timeout", "Value", "to_seconds"]

_R = TypeVar("_R")
_S = TypeVar("_S", bound="Store")


class Store(abc.ABC):
    """A key-value store for rendezvous and coordination (PyTorch's ``Store`` API).

    Keys are ``str``; values ``str`` or bytes-like, always returned as ``bytes``. Every
    blocking call takes ``timeout`` (seconds or ``timedelta``; default: the store's).

    Args:
        timeout: default deadline of every operation, seconds or ``timedelta``.

    Raises:
        TypeError, ValueError: ``timeout`` is not a non-negative number or ``timedelta``.

    Example:
        >>> from kvsync.store import HashStore
        >>> with HashStore(timeout=timedelta(seconds=30)) as store:
        ...     store.timeout
        datetime.timedelta(seconds=30)
    """

    #: ``False``: a missing key reads as ``b""`` (the reference document); ``True``: ``get``
    #: and ``multi_get`` wait for the key until the timeout (PyTorch).
    _blocking_get: bool = False
    #: ``True``: :meth:`barrier` is one server request; ``False`` (a client of a torch
    #: server, which has no such request): :func:`kvsync.store.sync.barrier`'s add/set/wait.
    _server_barrier: bool = True
    #: The caller's rank that :meth:`barrier` sends (``RANK`` for a :class:`TCPStore`), so
    #: the server can name the ranks still missing; ``-1``: unknown.
    _rank: int = -1

    def __init__(self, timeout: Timeout = defaults.DEFAULT_TIMEOUT) -> None:
        self._closed = False
        self._use_timeout(to_seconds(timeout))

    def _use_timeout(self, seconds: float) -> None:
        """Make ``seconds`` the default timeout (with its :meth:`_deadline`, made once)."""
        self._timeout = seconds
        self._default_deadline = (to_ms(seconds), reply_timeout(seconds))

    # --- the one method a concrete store implements ---------------------------------------

    @abc.abstractmethod
    def _call(self, msg: object, timeout: float) -> object:
        """Send one request and return its reply message.

        Args:
            msg: a request of :mod:`kvsync.protocol.messages`.
            timeout: seconds to wait for the reply. For requests the server may park
                (their ``timeout_ms``) it is :func:`~kvsync.store.arguments.reply_timeout`.

        Returns:
            The reply message; an :class:`~kvsync.protocol.messages.ErrorReply` may be
            returned or already raised as its :mod:`kvsync.errors` class.
        """

    def _post(self, msg: object) -> None:
        """Send a request whose only answer is ``OkReply`` (a ``Set``); a store whose
        ``set`` does not wait (the torch flavour of a remote one) sends it without waiting
        for the server, which answers only a failure, raised by a later request. Here: a
        call."""
        self._request(msg, m.OkReply)

    # --- plumbing -------------------------------------------------------------------------

    def _request(self, msg: object, reply_type: type[_R], timeout: float | None = None) -> _R:
        if self._closed:
            raise StoreConnectionError(f"{self!r} is closed")
        reply = self._call(msg, self._timeout if timeout is None else timeout)
        if type(reply) is reply_type:  # the usual case, decided without isinstance
            return reply
        if isinstance(reply, m.ErrorReply):
            raise error_from_code(reply.code, reply.message)
        if not isinstance(reply, reply_type):
            raise RemoteProtocolError(
                f"expected {reply_type.__name__} in reply to {type(msg).__name__}, "
                f"got {type(reply).__name__}"
            )
        return reply

    def _deadline(self, timeout: Timeout | None) -> tuple[int, float]:
        """(server-side timeout_ms, client-side reply timeout) for a blocking request."""
        if timeout is None:
            return self._default_deadline
        seconds = to_seconds(timeout)
        return to_ms(seconds), reply_timeout(seconds)

    # --- the Store API --------------------------------------------------------------------

    def set(self, key: str, value: Value) -> None:
        """Store ``value`` under ``key``, overwriting any previous value.

        Returns once the server has stored it; except in the torch flavour
        (:class:`kvsync.compat.torch.TCPStore`, whose ``get`` waits for its key), which
        returns once the request is sent, as torch's does: the server handles one
        connection's requests in order, so every later request of this store sees the
        value, a failure the server reports is raised by the next request, and
        ``close()`` returns once the server has every value set before it.

        Raises:
            TypeError: ``key`` is not ``str`` or ``value`` is not ``str``/bytes-like.
            LimitExceededError: the key or value is over the store's cap.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.set("k", b"v"); s.get("k")
            b'v'
        """
        if type(key) is not str:
            key = check_key(key)
        if type(value) is not bytes:
            value = to_buffer(value, key)
        if self._closed:
            raise StoreConnectionError(f"{self!r} is closed")
        self._post(m.Set(key, value))

    def get(self, key: str) -> bytes:
        """The value under ``key``; ``b""`` if missing (the torch flavour waits instead).

        Raises:
            TypeError: ``key`` is not ``str``.
            StoreTimeoutError: torch flavour only: the key did not appear in time.

        Example:
            >>> from kvsync.store import HashStore
            >>> HashStore().get("nothing")
            b''
        """
        if type(key) is not str:
            key = check_key(key)
        timeout_ms, reply_timeout = self._default_deadline
        msg = m.Get(key, self._blocking_get, timeout_ms)
        return bytes(self._request(msg, m.ValueReply, reply_timeout).value)

    def add(self, key: str, amount: int) -> int:
        """Add ``amount`` to the integer under ``key`` (missing counts as 0); the new value.

        Raises:
            TypeError: ``key`` is not ``str`` or ``amount`` not an ``int``.
            ServerError: the value under ``key`` is not a decimal integer.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.add("n", 1); s.add("n", 41); s.get("n")
            1
            42
            b'42'
        """
        if type(key) is not str:
            key = check_key(key)
        if type(amount) is not int:
            if not isinstance(amount, int):
                raise TypeError(
                    f"add to key {key!r}: amount must be int, got {type(amount).__name__}"
                )
            amount = int(amount)
        return self._request(m.Add(key, amount), m.IntReply).value

    def compare_set(self, key: str, expected: Value, desired: Value) -> bytes:
        """Set ``key`` to ``desired`` if it holds ``expected``; returns the value now held.

        A missing key matches an empty ``expected``; a missing key with a non-empty
        ``expected`` is left alone and ``expected`` is returned (as PyTorch does).

        Raises:
            TypeError: bad key or value types.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore()
            >>> s.compare_set("k", "", "first"), s.compare_set("k", "other", "x")
            (b'first', b'first')
        """
        key = check_key(key)
        msg = m.CompareSet(key, to_buffer(expected, key), to_buffer(desired, key))
        return bytes(self._request(msg, m.ValueReply).value)

    def wait(self, keys: str | Sequence[str], timeout: Timeout | None = None) -> None:
        """Block until every key exists.

        Args:
            keys: a list of keys (or one key).
            timeout: seconds or ``timedelta``; default: the store's timeout.

        Raises:
            StoreTimeoutError: naming the keys still missing and the time waited.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.set("a", "1"); s.wait(["a"])
            >>> s.wait(["a", "b"], timeout=0.01)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            kvsync.errors.StoreTimeoutError: wait for keys ['a', 'b'] timed out after ...
        """
        key_tuple = check_keys(keys, "wait")
        total = self._timeout if timeout is None else to_seconds(timeout)

        def attempt(seconds: float) -> None:
            timeout_ms, reply_timeout = self._deadline(seconds)
            self._request(m.Wait(key_tuple, timeout_ms), m.OkReply, reply_timeout)

        # a long wait logs what is still missing every progress.interval() seconds
        in_slices(attempt, total=total, every=progress_interval(), what="wait")

    def check(self, keys: str | Sequence[str]) -> bool:
        """Whether every key exists, without waiting.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.set("a", "1"); s.check(["a"]), s.check(["a", "b"])
            (True, False)
        """
        return bool(self._request(m.Check(check_keys(keys, "check")), m.IntReply).value)

    def delete_key(self, key: str) -> bool:
        """Delete ``key`` (a value or a queue); whether it existed.

        Raises:
            TypeError: ``key`` is not ``str``.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.set("k", "v"); s.delete_key("k"), s.delete_key("k")
            (True, False)
        """
        return bool(self._request(m.DeleteKey(check_key(key)), m.IntReply).value)

    def num_keys(self) -> int:
        """How many keys the store holds (queues included).

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.set("a", "1"); s.queue_push("q", "x"); s.num_keys()
            2
        """
        return self._request(m.NumKeys(), m.IntReply).value

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """The values of several keys, in order (missing keys as :meth:`get` treats them).

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.multi_set(["a", "b"], ["1", b"2"]); s.multi_get(["a", "b"])
            [b'1', b'2']
        """
        key_tuple = check_keys(keys, "multi_get")
        timeout_ms, reply_timeout = self._deadline(None)
        msg = m.MultiGet(key_tuple, self._blocking_get, timeout_ms)
        return [bytes(v) for v in self._request(msg, m.ValuesReply, reply_timeout).values]

    def multi_set(self, keys: Sequence[str], values: Sequence[Value]) -> None:
        """Set several keys at once (atomically).

        Raises:
            ValueError: ``keys`` and ``values`` differ in length.

        Example:
            >>> from kvsync.store import HashStore
            >>> HashStore().multi_set(["a"], ["1", "2"])
            Traceback (most recent call last):
            ...
            ValueError: multi_set got 1 keys but 2 values
        """
        key_tuple = check_keys(keys, "multi_set")
        value_list = list(values)
        if len(key_tuple) != len(value_list):
            raise ValueError(f"multi_set got {len(key_tuple)} keys but {len(value_list)} values")
        buffers = tuple(to_buffer(v, k) for k, v in zip(key_tuple, value_list, strict=True))
        self._request(m.MultiSet(key_tuple, buffers), m.OkReply)

    def append(self, key: str, value: Value) -> None:
        """Append ``value`` to the bytes under ``key`` (creating it if missing).

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.append("k", "ab"); s.append("k", b"c"); s.get("k")
            b'abc'
        """
        key = check_key(key)
        self._request(m.Append(key, to_buffer(value, key)), m.OkReply)

    def list_keys(self) -> list[str]:
        """Every key the store holds.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.set("b", "1"); s.set("a", "2"); sorted(s.list_keys())
            ['a', 'b']
        """
        return list(self._request(m.ListKeys(), m.KeysReply).keys)

    def queue_push(self, key: str, value: Value) -> None:
        """Push ``value`` at the tail of the queue ``key``.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.queue_push("q", "a"); s.queue_push("q", "b"); s.queue_len("q")
            2
        """
        key = check_key(key)
        self._request(m.QueuePush(key, to_buffer(value, key)), m.OkReply)

    def queue_pop(self, key: str, block: bool = True, timeout: Timeout | None = None) -> bytes:
        """Pop the head of the queue ``key``, waiting for an item if ``block``.

        Raises:
            StoreTimeoutError: ``block`` and no item arrived in time.
            ServerError: not ``block`` and the queue is empty.

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.queue_push("q", "a"); s.queue_pop("q")
            b'a'
            >>> s.queue_pop("q", timeout=0.01)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            kvsync.errors.StoreTimeoutError: queue_pop of 'q' timed out after ...
        """
        key = check_key(key)
        timeout_ms, reply_timeout = self._deadline(timeout)
        msg = m.QueuePop(key, bool(block), timeout_ms)
        return bytes(self._request(msg, m.ValueReply, reply_timeout).value)

    def queue_len(self, key: str) -> int:
        """Number of items in the queue ``key`` (0 if missing).

        Example:
            >>> from kvsync.store import HashStore
            >>> HashStore().queue_len("q")
            0
        """
        return self._request(m.QueueLen(check_key(key)), m.IntReply).value

    def barrier(self, key: str, world_size: int, timeout: Timeout | None = None) -> None:
        """Block until ``world_size`` callers reached the barrier ``key``; reusable.

        One request: the server counts the arrival and answers every caller of a
        generation when its last one arrives. The keys it leaves (``<key>/arrived`` and
        ``<key>/done/<generation>``) are those of :func:`kvsync.store.sync.barrier`, which
        builds the same barrier from ``add``/``set``/``wait``, so callers of either meet.
        A client of a torch store server (which has no such request) runs that function.

        Raises:
            TypeError: ``key`` is not ``str`` or ``world_size`` not an ``int``.
            ValueError: ``world_size`` < 1.
            StoreTimeoutError: naming how many ranks arrived and, when every arrival
                said its rank, which are missing, e.g. "6/8 ranks reached barrier 'b'
                after 2.00 s; missing ranks 3, 5" (else "...; ranks unknown").

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore()
            >>> s.barrier("start", world_size=1); s.get("start/arrived")
            b'1'
        """
        if not self._server_barrier:
            return sync_barrier(self, key, world_size, timeout)
        if type(key) is not str:
            key = check_key(key)
        if type(world_size) is not int or world_size < 1:
            check_world_size(world_size)
        timeout_ms, reply_timeout = self._deadline(timeout)
        msg = m.Barrier(key, world_size, timeout_ms, self._rank)
        self._request(msg, m.OkReply, reply_timeout)

    # --- timeouts and lifetime ------------------------------------------------------------

    def set_timeout(self, timeout: Timeout) -> None:
        """Change the default timeout (seconds or ``timedelta``).

        Example:
            >>> from kvsync.store import HashStore
            >>> s = HashStore(); s.set_timeout(5); s.timeout.total_seconds()
            5.0
        """
        self._use_timeout(to_seconds(timeout))

    @property
    def timeout(self) -> timedelta:
        """The default timeout, as a ``timedelta`` (as PyTorch's ``Store.timeout``)."""
        return timedelta(seconds=self._timeout)

    def close(self) -> None:
        """Release the store's resources; later calls raise ``StoreConnectionError``."""
        self._closed = True

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _repr_fields(self) -> str:
        """``name=value, `` pairs a subclass shows in its repr before the timeout."""
        return ""

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"{type(self).__name__}({self._repr_fields()}timeout={self._timeout:g}{state})"
