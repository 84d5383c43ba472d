"""``python -m kvsync`` runs the ``kvsync`` command line."""

from __future__ import annotations

import sys

from kvsync.cli import main

sys.exit(main())
