"""TorchClient against a scripted torch server (torch's protocol through kvsync's own codec):
the cases a real torch server cannot be made to produce on demand. No torch needed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kvsync.client.torch import TorchClient
from kvsync.errors import StoreConnectionError, StoreTimeoutError, UnsupportedOperationError
from kvsync.protocol import messages as m
from kvsync.protocol import torch_wire as tw
from kvsync.protocol.connection import NEED_DATA, Role
from kvsync.protocol.torch_connection import TorchConnection

pytestmark = pytest.mark.timeout(30)

#: request -> the replies to send after a pause in seconds (``None``: close the connection)
Script = Callable[[object], tuple[float | None, list[object]]]


def _serve(listener: socket.socket, script: Script, stop: threading.Event) -> None:
    conn, _ = listener.accept()
    proto = TorchConnection(Role.SERVER)
    conn.settimeout(0.1)
    with conn:
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            proto.receive_data(data)
            for _ in range(100):
                request = proto.next_event()
                if request is NEED_DATA:
                    break
                if isinstance(request, tw.Ping):
                    pause, replies = 0.0, [tw.PingReply(request.nonce)]
                elif isinstance(request, tw.Validate):
                    continue
                else:
                    pause, replies = script(request)
                if pause is None or stop.wait(pause):
                    return
                for reply in replies:
                    for part in proto.send(reply):
                        conn.sendall(part)


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], TorchClient]]:
    stops: list[threading.Event] = []
    threads: list[threading.Thread] = []
    clients: list[TorchClient] = []

    def start(script: Script) -> TorchClient:
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()
        thread = threading.Thread(target=_serve, args=(listener, script, stop), daemon=True)
        thread.start()
        stops.append(stop)
        threads.append(thread)
        clients.append(TorchClient("127.0.0.1", listener.getsockname()[1], timeout=5))
        listener.close()
        return clients[-1]

    yield start
    for c in clients:
        c.close()
    for s in stops:
        s.set()
    for t in threads:
        t.join(5)


def test_a_reply_that_comes_too_late_closes_the_connection_rather_than_answer_the_next_request(
    scripted: Callable[[Script], TorchClient],
) -> None:
    client = scripted(lambda req: (0.5, [tw.ValueReply(b"late")]))
    with pytest.raises(StoreTimeoutError, match="connection closed"):
        client.call(m.Get("a", False, 0), timeout=0.1)
    with pytest.raises(StoreTimeoutError):  # the first error again, never b"late"
        client.call(m.Get("b", False, 0), timeout=1)
    assert client.closed


def test_a_wait_released_while_its_cancel_travels_counts_as_released(
    scripted: Callable[[Script], TorchClient],
) -> None:
    def script(req: object) -> tuple[float | None, list[object]]:
        if isinstance(req, tw.CancelWait):  # the keys arrived just before the cancel
            return 0.0, [tw.StopWaiting(), tw.WaitCanceled()]
        return 0.0, []  # the wait itself: nothing yet

    client = scripted(script)
    assert client.call(m.Wait(("k",), 100), timeout=1) == m.OkReply()
    assert not client.closed


def test_a_cancelled_wait_names_the_missing_keys_and_keeps_the_connection(
    scripted: Callable[[Script], TorchClient],
) -> None:
    def script(req: object) -> tuple[float | None, list[object]]:
        if isinstance(req, tw.CancelWait):
            return 0.0, [tw.WaitCanceled()]
        if isinstance(req, tw.Check):
            return 0.0, [tw.CheckReply(req.keys == ("/here",))]
        if isinstance(req, tw.Add):
            return 0.0, [tw.IntReply(7)]
        return 0.0, []

    client = scripted(script)
    start = time.monotonic()
    with pytest.raises(StoreTimeoutError, match=r"still missing: \['gone'\]"):
        client.call(m.Wait(("here", "gone"), 200), timeout=1)
    assert time.monotonic() - start < 3
    assert client.call(m.Add("n", 1)) == m.IntReply(7)


def test_what_torchs_protocol_cannot_express_is_a_typed_error_naming_it(
    scripted: Callable[[Script], TorchClient],
) -> None:
    client = scripted(lambda req: (0.0, []))
    with pytest.raises(UnsupportedOperationError, match="Barrier cannot be expressed"):
        client.call(m.Barrier("b", 2, 1000))
    assert isinstance(UnsupportedOperationError("x"), NotImplementedError)


def test_a_server_that_closes_mid_request_names_the_request(
    scripted: Callable[[Script], TorchClient],
) -> None:
    client = scripted(lambda req: (None, []))
    with pytest.raises(StoreConnectionError, match="during add of 'word'"):
        client.call(m.Add("word", 1))


def test_naming_the_missing_keys_waits_for_the_checks_as_long_as_any_request(
    scripted: Callable[[Script], TorchClient],
) -> None:
    def script(req: object) -> tuple[float | None, list[object]]:
        if isinstance(req, tw.CancelWait):
            return 0.0, [tw.WaitCanceled()]
        if isinstance(req, tw.Check):  # slower than the wait's own 0.1 s
            return 0.3, [tw.CheckReply(False)]
        return 0.0, []

    client = scripted(script)
    with pytest.raises(StoreTimeoutError, match=r"still missing: \['k'\]"):
        client.call(m.Wait(("k",), 100), timeout=1)
    assert not client.closed
