"""ConnectionGuard and ServerSettings: deadlines decided without sockets or a clock."""

from __future__ import annotations

import pytest

from kvsync import defaults, env
from kvsync.errors import StoreTimeoutError
from kvsync.server.guard import ConnectionGuard, ServerSettings


def _never_busy(conn_id: int) -> bool:
    return False


def test_settings_take_the_environment_over_the_defaults() -> None:
    e = env.read({"KVSYNC_HANDSHAKE_TIMEOUT": "2.5", "KVSYNC_MAX_CONNECTIONS": "10",
                  "KVSYNC_IDLE_TIMEOUT": "", "KVSYNC_MAX_PENDING_BYTES": "1048576"})  # fmt: skip
    s = ServerSettings.from_environment(e)
    assert (s.handshake_timeout, s.max_connections, s.max_pending_bytes) == (2.5, 10, 1 << 20)
    assert s.idle_timeout == defaults.IDLE_TIMEOUT_SECONDS  # blank counts as unset
    assert s.frame_timeout == defaults.FRAME_TIMEOUT_SECONDS


@pytest.mark.parametrize(
    "bad", [{"handshake_timeout": -1.0}, {"max_connections": 0}, {"max_pending_bytes": 0}]
)
def test_settings_refuse_out_of_range_limits(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ServerSettings(**bad)  # type: ignore[arg-type]


def test_a_bad_number_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ValueError, match="KVSYNC_FRAME_TIMEOUT"):
        ServerSettings.from_environment(env.read({"KVSYNC_FRAME_TIMEOUT": "soon"}))


def test_handshake_deadline_runs_from_accept_and_ends_with_the_handshake() -> None:
    g = ConnectionGuard(ServerSettings(handshake_timeout=1.0))
    g.accepted(1, now=0.0)
    g.accepted(2, now=0.0)
    g.handshaken(2)
    assert g.expired(0.9, _never_busy) == []
    [(conn, exc)] = g.expired(1.0, _never_busy)
    assert conn == 1 and isinstance(exc, StoreTimeoutError) and "handshake_timeout" in str(exc)
    assert g.next_deadline() is None  # nothing left to watch


def test_a_half_received_frame_must_keep_receiving_bytes() -> None:
    g = ConnectionGuard(ServerSettings(handshake_timeout=0, frame_timeout=1.0))
    g.accepted(1, now=0.0)
    g.received(1, now=0.5, mid_frame=True)
    g.received(1, now=1.2, mid_frame=True)  # progress moves the deadline
    assert g.expired(2.0, _never_busy) == []
    g.received(1, now=2.1, mid_frame=False)  # the frame completed: no deadline
    assert g.expired(9.0, _never_busy) == []


def test_idle_limit_spares_connections_with_parked_requests_and_recent_traffic() -> None:
    g = ConnectionGuard(ServerSettings(handshake_timeout=0, idle_timeout=10.0))
    for conn in (1, 2, 3):
        g.accepted(conn, now=0.0)
    g.sent(3, now=5.0)  # a parked request answered at 5 s
    dropped = g.expired(10.0, busy=lambda conn: conn == 2)
    assert [c for c, _ in dropped] == [1]
    assert "idle_timeout" in str(dropped[0][1])


def test_without_an_idle_limit_idle_connections_are_not_even_tracked() -> None:
    g = ConnectionGuard(ServerSettings(handshake_timeout=0, idle_timeout=0))
    g.accepted(1, now=0.0)
    assert g.next_deadline() is None and g.expired(1e9, _never_busy) == []


def test_deadlines_are_checked_at_most_every_sweep_interval() -> None:
    g = ConnectionGuard(ServerSettings(handshake_timeout=1.0))
    g.accepted(1, now=0.0)
    assert g.expired(0.5, _never_busy) == []  # a sweep at 0.5 s
    assert g.next_deadline() == pytest.approx(0.6)  # a tenth of the shortest limit later
    assert g.expired(1.05, _never_busy) != []
