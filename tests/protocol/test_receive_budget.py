"""A server connection reserves memory for a big payload as its bytes arrive, from a shared
budget, refuses a field over its cap from the payload's first bytes, and frees everything
when closed."""

from __future__ import annotations

import gc
import struct
import weakref

import pytest

from kvsync.errors import LimitExceededError
from kvsync.protocol.codec import Limits, encode_frame
from kvsync.protocol.connection import NEED_DATA, Connection, Role
from kvsync.protocol.framing import GROW_STEP, PEEK_BYTES, ReceiveBudget, pack_header
from kvsync.protocol.messages import Opcode, Set

MiB = 1 << 20


def _ready(budget: ReceiveBudget | None = None, limits: Limits | None = None) -> Connection:
    server = Connection(Role.SERVER, budget=budget, limits=limits)
    client = Connection(Role.CLIENT)
    server.receive_data(b"".join(bytes(b) for b in client.data_to_send()))
    assert server.next_event() is NEED_DATA and server.handshake_complete
    return server


def _feed(conn: Connection, data: bytes) -> object:
    conn.receive_data(data)
    return conn.next_event()


def _set_prefix(key: bytes, value_len: int) -> bytes:
    fields = struct.pack("<I", len(key)) + key + struct.pack("<Q", value_len)
    return pack_header(Opcode.SET, 1, len(fields) + value_len) + fields


def test_a_big_payload_reserves_a_first_step_then_doubles_as_bytes_arrive() -> None:
    budget = ReceiveBudget(1 << 30)
    conn = _ready(budget)
    assert _feed(conn, _set_prefix(b"k", 40 * MiB)) is NEED_DATA
    assert budget.held == conn.held == GROW_STEP  # not the 40 MiB the header promises
    assert _feed(conn, bytes(GROW_STEP)) is NEED_DATA
    assert budget.held == 2 * GROW_STEP
    assert _feed(conn, bytes(GROW_STEP)) is NEED_DATA
    assert budget.held == 40 * MiB + 13  # capped at the frame's length
    event = _feed(conn, bytes(40 * MiB - 2 * GROW_STEP))
    assert event.message.key == "k" and len(event.message.value) == 40 * MiB  # type: ignore[union-attr]
    assert budget.held == 0  # a complete frame is no longer half received


def test_a_frame_that_would_overdraw_the_budget_is_refused() -> None:
    budget = ReceiveBudget(GROW_STEP + GROW_STEP // 2)
    first, second = _ready(budget), _ready(budget)
    assert _feed(first, _set_prefix(b"a", 64 * MiB)) is NEED_DATA
    with pytest.raises(LimitExceededError, match="max_pending_bytes"):
        _feed(second, _set_prefix(b"b", 64 * MiB))
    assert budget.held == GROW_STEP
    first.close()
    assert budget.held == 0


def test_a_value_over_its_cap_is_refused_from_the_first_bytes_of_its_payload() -> None:
    conn = _ready(limits=Limits(max_value_bytes=MiB, max_frame_bytes=1 << 30))
    assert _feed(conn, _set_prefix(b"k", 512 * MiB)) is NEED_DATA
    with pytest.raises(LimitExceededError, match=f"over the limit of {MiB} bytes"):
        _feed(conn, bytes(PEEK_BYTES))


def test_a_closed_connection_is_freed_by_reference_counting_alone() -> None:
    gc.disable()
    try:
        conn = _ready(ReceiveBudget(1 << 30))
        assert _feed(conn, _set_prefix(b"k", 4 * MiB) + bytes(MiB)) is NEED_DATA
        assert conn.held == 4 * MiB + 13
        ref = weakref.ref(conn)
        del conn
        assert ref() is None  # no reference cycle keeps it (and its buffer) alive
    finally:
        gc.enable()


def test_small_frames_take_nothing_from_the_budget() -> None:
    conn = _ready(ReceiveBudget(1))
    event = _feed(conn, b"".join(bytes(b) for b in encode_frame(5, Set("k", b"v" * 5_000))))
    assert event.message == Set("k", b"v" * 5_000)  # type: ignore[attr-defined]


def test_before_the_handshake_only_small_frames_are_read() -> None:
    budget = ReceiveBudget(1 << 30)
    conn = Connection(Role.SERVER, budget=budget)  # no Hello yet
    with pytest.raises(LimitExceededError, match="before the handshake completes"):
        _feed(conn, _set_prefix(b"k", 100_000))
    assert budget.held == 0  # refused from the header: nothing reserved
