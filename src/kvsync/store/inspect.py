"""``kvsync inspect``: show the keys (and optionally values) held by a running store.

It connects as an ordinary ``TCPStore`` client, lists the keys (only those under
``--prefix`` if given), and with ``--values`` reads each one to show its size and a short
preview; queues show their length instead. Nothing in the store is changed.

Example:
    >>> from kvsync.store import HashStore
    >>> s = HashStore(); s.set("addr", "10.0.0.1:29500"); s.queue_push("jobs", "a")
    >>> print(describe(s, values=True))
    key   kind   size  preview
    ----  -----  ----  ----------------
    addr  value  14 B  '10.0.0.1:29500'
    jobs  queue  1     (1 item)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kvsync import defaults
from kvsync.options import port
from kvsync.store.base import Store

__all__ = ["add_arguments", "describe", "run"]

#: Characters of a value shown by ``--values``.
PREVIEW_CHARS = 48


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvsync inspect``."""
    parser.add_argument("--host", default=defaults.DEFAULT_HOST, help="store server address")
    parser.add_argument("--port", type=port, required=True, help="store server port")
    parser.add_argument("--prefix", default="", help="only keys starting with PREFIX/")
    parser.add_argument("--values", action="store_true", help="show sizes and previews")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _preview(value: bytes) -> str:
    try:
        text = repr(value.decode())
    except UnicodeDecodeError:
        text = repr(value)
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def describe(store: Store, *, prefix: str = "", values: bool = False) -> str:
    """A table of the keys of ``store`` under ``prefix`` (sorted), with sizes if ``values``.

    A key with a non-zero ``queue_len`` is a queue (the store never keeps empty queues).

    Raises:
        StoreConnectionError, StoreTimeoutError: the store cannot be reached in time.

    Example:
        >>> from kvsync.store import HashStore
        >>> s = HashStore(); s.set("job/a", "1"); s.set("other", "2")
        >>> print(describe(s, prefix="job"))
        key
        -----
        job/a
    """
    lead = f"{prefix}/" if prefix else ""
    keys = sorted(k for k in store.list_keys() if k.startswith(lead))
    if not values:
        return _table(["key"], [[k] for k in keys])
    rows: list[list[object]] = []
    for key in keys:
        items = store.queue_len(key)
        if items:
            rows.append([key, "queue", items, f"({items} item{'s' if items > 1 else ''})"])
        else:
            value = store.get(key)
            rows.append([key, "value", f"{len(value):,} B", _preview(value)])
    return _table(["key", "kind", "size", "preview"], rows)


def run(args: argparse.Namespace) -> int:
    """Connect to ``--host``:``--port`` and print the table; returns the exit code."""
    from kvsync.store.tcp import TCPStore

    try:
        store = TCPStore(args.host, args.port, is_master=False, timeout=args.timeout)
    except (ConnectionError, TimeoutError) as exc:
        sys.stderr.write(f"kvsync inspect: cannot reach {args.host}:{args.port}: {exc}\n")
        return 1
    with store:
        table = describe(store, prefix=args.prefix, values=args.values)
    sys.stdout.write(table + "\n")
    return 0
