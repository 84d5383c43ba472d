"""``kv.create`` of a dist type from the environment: its timeout and MXNet's type names."""

from __future__ import annotations

import time

import pytest

from kvsync import TCPStore, kv
from kvsync.errors import StoreTimeoutError


@pytest.mark.timeout(20)
def test_create_waits_for_the_servers_no_longer_than_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=10) as store:
        for name, value in {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(store.port),
            "RANK": "0",
            "WORLD_SIZE": "1",
            "DMLC_NUM_SERVER": "1",
        }.items():
            monkeypatch.setenv(name, value)
        start = time.monotonic()
        with pytest.raises(StoreTimeoutError, match="kvsync/ps/server/0"):
            kv.create("dist_sync", timeout=0.5)
        assert time.monotonic() - start < 8
