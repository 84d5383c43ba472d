"""Store base class: argument checks, timeout conversion, reply interpretation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kvsync.errors import (
    ErrorCode,
    LimitExceededError,
    RemoteProtocolError,
    StoreConnectionError,
    StoreTimeoutError,
)
from kvsync.protocol import messages as m
from kvsync.store import HashStore, Store
from kvsync.store.arguments import reply_timeout
from kvsync.store.base import to_seconds


class Scripted(Store):
    """A store answering every request with a scripted reply; records what it was sent."""

    def __init__(self, reply: object, timeout: float = 300) -> None:
        super().__init__(timeout)
        self.reply = reply
        self.sent: list[tuple[object, float]] = []

    def _call(self, msg: object, timeout: float) -> object:
        self.sent.append((msg, timeout))
        return self.reply


@pytest.mark.parametrize("key", [1, b"k", None, ("a",)])
def test_non_str_key_raises_type_error(key: object) -> None:
    s = HashStore()
    for call in (
        lambda: s.set(key, "v"),  # type: ignore[arg-type]
        lambda: s.get(key),  # type: ignore[arg-type]
        lambda: s.add(key, 1),  # type: ignore[arg-type]
        lambda: s.delete_key(key),  # type: ignore[arg-type]
        lambda: s.queue_push(key, "v"),  # type: ignore[arg-type]
        lambda: s.wait([key]),  # type: ignore[list-item]
    ):
        with pytest.raises(TypeError, match="key must be str"):
            call()


@pytest.mark.parametrize("value", [1, 1.5, None, ["a"]])
def test_bad_value_type_raises_type_error_naming_key(value: object) -> None:
    with pytest.raises(TypeError, match="value for key 'k'"):
        HashStore().set("k", value)  # type: ignore[arg-type]


def test_values_of_every_buffer_type_are_stored_and_returned_as_bytes() -> None:
    s = HashStore()
    buf = bytearray(b"ba")
    s.multi_set(["s", "b", "ba", "mv"], ["é", b"b", buf, memoryview(b"mv")])
    buf[0] = ord("X")  # the store copied it
    assert s.multi_get(["s", "b", "ba", "mv"]) == ["é".encode(), b"b", b"ba", b"mv"]
    s.set("ints", memoryview(bytearray(8)).cast("i"))
    assert s.get("ints") == bytes(8)


def test_add_requires_an_int_amount() -> None:
    with pytest.raises(TypeError, match="amount must be int"):
        HashStore().add("k", 1.5)  # type: ignore[arg-type]


def test_timeouts_accept_seconds_and_timedelta() -> None:
    assert to_seconds(timedelta(milliseconds=1500)) == 1.5
    s = Scripted(m.OkReply(), timeout=2)
    s.wait("k", timeout=timedelta(seconds=3))
    s.wait(["k"])
    (w1, t1), (w2, t2) = s.sent
    assert w1 == m.Wait(("k",), 3000) and t1 == reply_timeout(3) <= 3 * 1.05
    assert w2 == m.Wait(("k",), 2000) and t2 == reply_timeout(2) <= 2 * 1.05
    s.set_timeout(timedelta(seconds=7))
    assert s.timeout == timedelta(seconds=7)


@pytest.mark.parametrize(("bad", "exc"), [(-1, ValueError), ("1", TypeError), (True, TypeError)])
def test_bad_timeouts_are_refused(bad: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="timeout"):
        HashStore(timeout=bad)  # type: ignore[arg-type]


def test_error_replies_become_their_errors_class_by_code() -> None:
    s = Scripted(m.ErrorReply(ErrorCode.LIMIT_EXCEEDED, "key 'k' is too big"))
    with pytest.raises(LimitExceededError, match="key 'k' is too big"):
        s.set("k", "v")
    s.reply = m.ErrorReply(ErrorCode.TIMEOUT, "late")
    with pytest.raises(StoreTimeoutError, match="late"):
        s.wait(["k"])


def test_a_reply_of_the_wrong_type_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="expected ValueReply in reply to Get"):
        Scripted(m.OkReply()).get("k")


def test_blocking_get_flag_selects_the_request() -> None:
    class Torchy(Scripted):
        _blocking_get = True

    s = Torchy(m.ValueReply(b"v"), timeout=1)
    s.get("k")
    s.reply = m.ValuesReply((b"v",))
    s.multi_get(["k"])
    assert s.sent[0][0] == m.Get("k", True, 1000)
    assert s.sent[1][0] == m.MultiGet(("k",), True, 1000)


def test_multi_set_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        HashStore().multi_set(["a", "b"], ["1"])


def test_closed_store_refuses_calls_and_repr_says_so() -> None:
    with HashStore(timeout=5) as s:
        assert repr(s) == "HashStore(timeout=5)"
    assert repr(s) == "HashStore(timeout=5, closed)"
    with pytest.raises(StoreConnectionError, match="closed"):
        s.get("k")
