"""Imported first by each parameter server of the multi-host tests: records its pid."""

from __future__ import annotations

import os
from pathlib import Path

_dir = os.environ.get("KVSYNC_TEST_PID_DIR")
if _dir:
    Path(_dir, f"server{os.environ['RANK']}.pid").write_text(f"{os.getpid()}\n")
