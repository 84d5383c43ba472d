"""No silent long waits: connect retries, waits and joins log what they wait for."""

from __future__ import annotations

import logging
import socket

import pytest

from kvsync import progress
from kvsync.errors import StoreTimeoutError
from kvsync.store.tcp import TCPStore


@pytest.fixture
def fast_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "_interval", [0.2])


def _messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.mark.timeout(20)
def test_a_long_wait_logs_the_missing_keys_and_its_error_gives_the_whole_time(
    fast_progress: None, caplog: pytest.LogCaptureFixture
) -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=10) as store:
        store.set("here", "1")
        with caplog.at_level(logging.INFO, logger="kvsync.progress"):
            with pytest.raises(StoreTimeoutError, match=r"still missing: \['gone'\].*in all"):
                store.wait(["here", "gone"], timeout=0.7)
    lines = _messages(caplog, "kvsync.progress")
    assert 1 <= len(lines) <= 4, lines  # slices of 0.2 s in 0.7 s (fewer on a busy machine)
    assert all("still missing: ['gone']" in line for line in lines)
    assert lines[0].startswith("wait: still waiting after 0 s of 0.7 s")


@pytest.mark.timeout(20)
def test_a_wait_goes_on_after_a_logged_slice_and_returns_when_the_key_comes(
    fast_progress: None,
) -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, timeout=10) as store:

        class SetOnProgress(logging.Handler):  # runs between two slices of the wait
            def emit(self, record: logging.LogRecord) -> None:
                self.lines.append(record.getMessage())
                store.set("late", "1")

        handler = SetOnProgress()
        handler.lines = []  # type: ignore[attr-defined]
        logger = logging.getLogger("kvsync.progress")
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)
        try:
            store.wait(["late"], timeout=5)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    assert len(handler.lines) == 1  # type: ignore[attr-defined]
    assert "still missing: ['late']" in handler.lines[0]  # type: ignore[attr-defined]


@pytest.mark.timeout(20)
def test_the_master_logs_how_many_clients_joined(
    fast_progress: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kvsync.store.tcp"):
        with pytest.raises(StoreTimeoutError, match="0/2 clients joined"):
            TCPStore("127.0.0.1", 0, world_size=3, is_master=True, timeout=0.8)
    assert any("0/2 clients joined after" in m for m in _messages(caplog, "kvsync.store.tcp"))


@pytest.mark.timeout(20)
def test_connect_retries_log_each_attempt_with_the_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with caplog.at_level(logging.INFO, logger="kvsync.client.connect"):
            with pytest.raises(StoreTimeoutError):
                TCPStore("127.0.0.1", port, timeout=0.5)
    lines = _messages(caplog, "kvsync.client.connect")
    assert lines and all(f"store server 127.0.0.1:{port}: attempt" in m for m in lines)
    assert "retrying for" in lines[0]
