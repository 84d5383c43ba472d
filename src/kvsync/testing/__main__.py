"""``python -m kvsync.testing ARGS``: one process-mode rank of ``spawn_ranks``.

The rank program is :func:`kvsync.testing.child.main`; it runs from here, not as ``python
-m kvsync.testing.child``, so ``kvsync.testing.child`` is imported once, under its own name
(running a module of a package as ``__main__`` makes runpy warn, an error under ``-W
error``), and a rank's ``StoreAddress`` is the class the test imports.
"""

from __future__ import annotations

import sys

from kvsync.testing.child import main

sys.exit(main(sys.argv[1:]))
