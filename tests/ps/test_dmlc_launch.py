"""A job started the way MXNet's tools/launch.py starts one: every process runs the same
script, told its role by DMLC_ROLE, with no RANK (real processes on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvsync import env

pytestmark = pytest.mark.slow

SCRIPT = """
    import numpy as np
    import kvsync.kv

    kv = kvsync.kv.create("dist_sync", timeout=30)  # servers and the scheduler never return
    kv.init(3, np.zeros(2))
    kv.push(3, np.full(2, kv.rank + 1.0))
    print(f"rank {kv.rank} of {kv.num_workers} pulled {kv.pull(3)[0]:g}", flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(90)
def test_scheduler_servers_and_workers_by_dmlc_role_run_a_job_and_exit(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    base.update(
        {
            env.DMLC_PS_ROOT_URI: "127.0.0.1",
            env.DMLC_PS_ROOT_PORT: str(_free_port()),
            env.DMLC_NUM_WORKER: "2",
            env.DMLC_NUM_SERVER: "2",
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
    )
    roles = ["scheduler", "server", "server", "worker", "worker"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={**base, env.DMLC_ROLE: role},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in roles
    ]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for role, p, (out, err) in zip(roles, procs, outs, strict=True):
        assert p.returncode == 0, f"{role}: {err}"
        if role != "worker":
            assert out == "", f"{role} printed {out!r}: the script went on past kv.create"
    printed = sorted(
        out.strip() for (out, _), role in zip(outs, roles, strict=True) if role == "worker"
    )
    assert printed == ["rank 0 of 2 pulled 3", "rank 1 of 2 pulled 3"]


def test_a_serving_role_without_the_schedulers_address_is_refused() -> None:
    from kvsync.errors import InvalidArgumentError
    from kvsync.kv import dmlc

    with pytest.raises(InvalidArgumentError, match="DMLC_PS_ROOT_URI"):
        dmlc.run_role(env.read({env.DMLC_ROLE: "server"}), timeout=1)


def test_mxnet_tuning_variables_map_to_kvsyncs() -> None:
    e = env.read({env.MXNET_KVSTORE_BIGARRAY_BOUND: "10", env.PS_VERBOSE: "1"})
    assert (e.bigarray_bound, e.log_level) == (10, "INFO")
    e = env.read(
        {
            env.MXNET_KVSTORE_BIGARRAY_BOUND: "10",
            env.KVSYNC_BIGARRAY_BOUND: "7",
            env.PS_VERBOSE: "2",
            env.KVSYNC_LOG_LEVEL: "ERROR",
        }
    )
    assert (e.bigarray_bound, e.log_level) == (7, "ERROR")  # kvsync's own names win
