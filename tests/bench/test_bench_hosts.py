"""Smoke test of ``kvsync bench kvstore --type dist_sync --hosts 2`` (two namespaces)."""

from __future__ import annotations

import pytest

from kvsync import cli
from kvsync.bench import kvstore_hosts
from kvsync.testing.hosts import unavailable_reason


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_host_bench_prints_round_time_and_bandwidth_over_the_veth_link(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the two-host bench needs network namespaces: {reason}")
    # gloo's half (torch in 2 more processes) is what the manual run measures; here: ours
    monkeypatch.setattr(kvstore_hosts, "_gloo", lambda *args: None)
    code = cli.main(
        [
            "bench",
            "kvstore",
            "--type",
            "dist_sync",
            "--hosts",
            "2",
            "--sizes",
            "1M",
            "--repeat",
            "2",
            "--small-keys",
            "20",
            "--servers",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert (
        "2 hosts (network namespaces, veth 10.77.0.1 - 10.77.0.2) x 1 workers and 1 servers" in out
    )
    lines = out.splitlines()
    header = lines[1].split()
    assert header == ["elements", "bytes", "round", "GB/s"]
    row = lines[3].split()
    assert row[0] == "1,048,576" and float(row[-1]) > 0
    # the big array was split over the servers on both hosts
    sizes = lines[-1].split()
    assert sizes[0] == "1,048,576" and all(s != "0" for s in sizes[1::2])
