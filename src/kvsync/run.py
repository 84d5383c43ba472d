"""``python -m kvsync.run``: the ``kvsync-run`` launcher (see :mod:`kvsync.launcher.run`)."""

from __future__ import annotations

import sys

from kvsync.launcher.run import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main())
