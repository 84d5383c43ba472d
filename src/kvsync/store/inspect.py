"""``kvsync inspect``: what a running store holds and does, for diagnosing a hung job.

``kvsync inspect [keys|stats|waiters|rounds] [--json]``:

- ``keys`` (the default) lists the keys (under ``--prefix``), with ``--values`` each one's
  size and a short preview (queues show their length);
- ``stats`` the server's counters: connections, requests by type, bytes in and out,
  uptime, memory held by half-received frames (an ``Inspect`` request);
- ``waiters`` its parked requests: which connection (peer, and rank when the client said
  it) waits for which keys, barrier or queue, for how long;
- ``rounds`` for a dist KVStore job, each parameter server's open rounds: which ranks have
  pushed which key and who is missing, who is in the barrier, what is parked.

With no ``--host``/``--port`` it reads the address ``kvsync-run`` exports
(``KVSYNC_STORE_ADDR``/``KVSYNC_STORE_PORT``), else ``MASTER_ADDR``/``MASTER_PORT``;
``KVSYNC_SECRET`` authenticates. Nothing in the store is changed. A bad secret or an
unreachable server is one line on stderr and exit status 1.

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
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kvsync import env
from kvsync.errors import KVSyncError
from kvsync.options import port, seconds
from kvsync.protocol.messages import Inspect, ValueReply
from kvsync.protocol.ps_messages import PSStats
from kvsync.store.base import Store

__all__ = [
    "add_arguments",
    "address",
    "describe",
    "format_rounds",
    "format_stats",
    "format_waiters",
    "key_rows",
    "run",
]

#: Characters of a value shown by ``--values``.
PREVIEW_CHARS = 48
#: Where parameter servers register their address in the job's store (kvsync.kv.dist_connect).
_PS_KEY = "kvsync/ps/server/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kvsync inspect``."""
    parser.add_argument("what", nargs="?", default="keys",
                        choices=("keys", "stats", "waiters", "rounds"),
                        help="what to show (default: keys)")  # fmt: skip
    parser.add_argument("--host", help="store server address (default: $KVSYNC_STORE_ADDR, "
                        "else $MASTER_ADDR)")  # fmt: skip
    parser.add_argument("--port", type=port, help="store server port (default: "
                        "$KVSYNC_STORE_PORT, else $MASTER_PORT)")  # fmt: skip
    parser.add_argument("--prefix", default="", help="keys: only keys starting with PREFIX/")
    parser.add_argument("--values", action="store_true", help="keys: show sizes and previews")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=seconds, default=5.0, help="seconds (default 5)")


def address(host: str | None, port: int | None, e: env.Environment) -> tuple[str, int]:
    """The store to inspect: ``host``/``port`` when given, else kvsync-run's variables,
    else ``MASTER_ADDR``/``MASTER_PORT``.

    Raises:
        ValueError: no port given or found (the message says what to set).

    Example:
        >>> address(None, None, env.read({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}))
        ('10.0.0.1', 29500)
        >>> address("h", 5, env.read({"KVSYNC_STORE_ADDR": "x", "KVSYNC_STORE_PORT": "1"}))
        ('h', 5)
    """
    if port is None:
        port = e.store_port if e.store_port is not None else e.master_port
    if host is None:
        host = e.store_addr or e.master_addr or "127.0.0.1"
    if port is None:
        raise ValueError("no store address: pass --host/--port or set MASTER_ADDR/MASTER_PORT")
    return host, port


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


def key_rows(store: Store, *, prefix: str = "", values: bool = False) -> list[dict[str, Any]]:
    """The keys of ``store`` under ``prefix`` (sorted); with ``values`` each one's kind
    (a key with a non-zero ``queue_len`` is a queue), size and preview.

    Example:
        >>> from kvsync.store import HashStore
        >>> s = HashStore(); s.set("a", "xy")
        >>> key_rows(s, values=True)
        [{'key': 'a', 'kind': 'value', 'size': 2, 'preview': "'xy'"}]
    """
    lead = f"{prefix}/" if prefix else ""
    keys = sorted(k for k in store.list_keys() if k.startswith(lead))
    if not values:
        return [{"key": k} for k in keys]
    rows: list[dict[str, Any]] = []
    for key in keys:
        items = store.queue_len(key)
        if items:
            preview = f"({items} item{'s' if items > 1 else ''})"
            rows.append({"key": key, "kind": "queue", "size": items, "preview": preview})
        else:
            value = store.get(key)
            rows.append(
                {"key": key, "kind": "value", "size": len(value), "preview": _preview(value)}
            )
    return rows


def describe(store: Store, *, prefix: str = "", values: bool = False) -> str:
    """A table of :func:`key_rows`.

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
    return _keys_table(key_rows(store, prefix=prefix, values=values), values)


def _keys_table(rows: list[dict[str, Any]], values: bool) -> str:
    if not values:
        return _table(["key"], [[r["key"]] for r in rows])
    return _table(
        ["key", "kind", "size", "preview"],
        [[r["key"], r["kind"], _size(r), r["preview"]] for r in rows],
    )


def _size(row: dict[str, Any]) -> str:
    return f"{row['size']:,} B" if row["kind"] == "value" else str(row["size"])


def format_stats(report: dict[str, Any]) -> str:
    """The counters of an ``Inspect`` report as two tables (server, then requests).

    Example:
        >>> print(format_stats({"server": "h:1", "uptime_s": 2.5, "connections": 3,
        ...     "parked": 1, "bytes_in": 10, "bytes_out": 20, "pending_bytes": 0,
        ...     "pending_budget": 64, "requests": {"Set": 2}}))
        field                 value
        --------------------  -----------
        server                h:1
        uptime                2.5 s
        connections           3
        parked requests       1
        bytes in              10
        bytes out             20
        half-received frames  0 B of 64 B
        <BLANKLINE>
        request  count
        -------  -----
        Set      2
    """
    rows = [
        ["server", report["server"]],
        ["uptime", f"{report['uptime_s']:g} s"],
        ["connections", report["connections"]],
        ["parked requests", report["parked"]],
        ["bytes in", f"{report['bytes_in']:,}"],
        ["bytes out", f"{report['bytes_out']:,}"],
        [
            "half-received frames",
            f"{report['pending_bytes']:,} B of {report['pending_budget']:,} B",
        ],
    ]
    requests = sorted(report["requests"].items(), key=lambda kv: (-kv[1], kv[0]))
    return _table(["field", "value"], rows) + "\n\n" + _table(["request", "count"], requests)


def _barrier_note(waiter: dict[str, Any]) -> str:
    """`` (of 4; missing ranks 0, 2)`` for a parked barrier, ``""`` for anything else."""
    if "world_size" not in waiter:
        return ""
    missing = waiter.get("missing_ranks")
    who = "ranks unknown" if missing is None else "missing ranks " + ", ".join(map(str, missing))
    return f" (of {waiter['world_size']}; {who})"


def format_waiters(report: dict[str, Any]) -> str:
    """The parked requests of an ``Inspect`` report, longest waiting first.

    Example:
        >>> print(format_waiters({"waiters": [{"conn": 4, "peer": "h:9", "rank": 1,
        ...     "op": "wait", "keys": ["a"], "waited_s": 2.0, "timeout_s": 300.0}]}))
        conn  peer  rank  op    waits for  waited  timeout
        ----  ----  ----  ----  ---------  ------  -------
        4     h:9   1     wait  a          2 s     300 s
        >>> format_waiters({"waiters": [{"conn": 7, "peer": "h:8", "rank": 3,
        ...     "op": "barrier", "keys": ["sync"], "world_size": 4, "missing_ranks": [0, 2],
        ...     "waited_s": 41.2, "timeout_s": 300.0}]}).splitlines()[-1]
        '7     h:8   3     barrier  sync (of 4; missing ranks 0, 2)  41.2 s  300 s'
    """
    waiters = report["waiters"]
    if not waiters:
        return "no parked requests"
    rows = [
        [w["conn"], w["peer"] or "-", "-" if w["rank"] is None else w["rank"], w["op"],
         ", ".join(w["keys"]) + _barrier_note(w), f"{w['waited_s']:g} s", f"{w['timeout_s']:g} s"]
        for w in waiters
    ]  # fmt: skip
    return _table(["conn", "peer", "rank", "op", "waits for", "waited", "timeout"], rows)


def format_rounds(servers: list[dict[str, Any]]) -> str:
    """The open rounds and parked requests of each parameter server's stats.

    Example:
        >>> print(format_rounds([{"server": 0, "num_workers": 2, "barrier": [],
        ...     "rounds": [{"key": "3", "round": 7, "pushed": [0], "partial": [],
        ...                 "missing": [1]}], "parked": [{"kind": "pull", "rank": 0,
        ...                 "keys": ["3"]}]}]))
        server  key  round  pushed  missing  parked
        ------  ---  -----  ------  -------  -------------
        0       3    7      0       1        rank 0 (pull)
    """
    rows: list[list[object]] = []
    for s in servers:
        parked: dict[str, list[str]] = {}
        for p in s["parked"]:
            for key in p["keys"] or ["-"]:
                parked.setdefault(key, []).append(f"rank {p['rank']} ({p['kind']})")
        for r in s["rounds"]:
            pushed = ", ".join(map(str, r["pushed"] + [f"{x}…" for x in r["partial"]]))
            rows.append([s["server"], r["key"], r["round"], pushed or "-",
                         ", ".join(map(str, r["missing"])) or "-",
                         "; ".join(parked.pop(r["key"], [])) or "-"])  # fmt: skip
        for key, who in parked.items():
            rows.append([s["server"], key, "-", "-", "-", "; ".join(who)])
    if not rows:
        return "no open rounds and nothing parked on the parameter servers"
    return _table(["server", "key", "round", "pushed", "missing", "parked"], rows)


def _json_reply(reply: object) -> Any:
    if not isinstance(reply, ValueReply):
        raise KVSyncError(f"expected a ValueReply, got {type(reply).__name__}")
    return json.loads(bytes(reply.value))


def _server_report(host: str, port: int, args: argparse.Namespace, secret: str | None) -> Any:
    from kvsync.client import Client

    with Client(host, port, timeout=args.timeout, secret=secret) as client:
        return _json_reply(client.call(Inspect()))


def _ps_reports(host: str, port: int, args: argparse.Namespace, secret: str | None) -> Any:
    from kvsync.client import Client
    from kvsync.store.tcp import TCPStore

    with TCPStore(host, port, is_master=False, timeout=args.timeout) as store:
        keys = [k for k in store.list_keys() if k.startswith(_PS_KEY)]
        keys.sort(key=lambda k: int(k[len(_PS_KEY) :]) if k[len(_PS_KEY) :].isdigit() else -1)
        addresses = [bytes(a).decode() for a in store.multi_get(keys)] if keys else []
    if not addresses:
        raise KVSyncError(f"no parameter servers are registered in the store at {host}:{port}")
    reports = []
    for where in addresses:
        ps_host, _, ps_port = where.rpartition(":")
        with Client(ps_host, int(ps_port), timeout=args.timeout, secret=secret,
                    peer_name="parameter server") as client:  # fmt: skip
            reports.append(_json_reply(client.call(PSStats())))
    return reports


def _keys(host: str, port: int, args: argparse.Namespace, secret: str | None) -> Any:
    from kvsync.store.tcp import TCPStore

    with TCPStore(host, port, is_master=False, timeout=args.timeout) as store:
        return key_rows(store, prefix=args.prefix, values=args.values)


_Show = tuple[
    Callable[[str, int, argparse.Namespace, "str | None"], Any],  # fetch the data
    Callable[[Any, argparse.Namespace], str],  # the table
    Callable[[Any], Any],  # what --json prints
]
#: what -> how to fetch, show and print it as JSON
_SHOW: dict[str, _Show] = {
    "keys": (_keys, lambda rows, args: _keys_table(rows, args.values), lambda rows: rows),
    "stats": (_server_report, lambda r, _: format_stats(r), lambda r: r),
    "waiters": (_server_report, lambda r, _: format_waiters(r), lambda r: r["waiters"]),
    "rounds": (_ps_reports, lambda s, _: format_rounds(s), lambda s: s),
}


def run(args: argparse.Namespace) -> int:
    """Show ``args.what`` of the store; returns the exit code (1, with one line on stderr,
    when it cannot be reached or refuses us)."""
    e = env.read()
    try:
        host, port = address(args.host, args.port, e)
    except ValueError as exc:
        sys.stderr.write(f"kvsync inspect: error: {exc}\n")
        return 1
    fetch, table, as_json = _SHOW[args.what]
    try:
        data = fetch(host, port, args, e.secret)
    except (KVSyncError, OSError, ValueError) as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"kvsync inspect: error: cannot inspect {host}:{port}: {line}\n")
        return 1
    text = json.dumps(as_json(data), indent=2) if args.json else table(data, args)
    sys.stdout.write(text + "\n")
    return 0
