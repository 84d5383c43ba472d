"""``kvsync serve``: a standalone store server in the foreground.

Prints ``kvsync store server listening on HOST:PORT`` (flushed, so a parent process can
read the bound port when it passed ``--port 0``), serves until SIGTERM or Ctrl-C and then
exits with status 0. ``KVSYNC_SECRET`` in the environment enables the HMAC handshake.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_arguments(p)
    >>> args = p.parse_args(["--port", "0", "--max-value-bytes", "1024"])
    >>> args.host, args.port, args.max_value_bytes
    ('127.0.0.1', 0, 1024)
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from kvsync import defaults, env
from kvsync.errors import StoreConnectionError
from kvsync.launcher import ps_server
from kvsync.options import port
from kvsync.server import StoreServer
from kvsync.server.guard import ServerSettings

__all__ = ["add_arguments", "run", "settings_of"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``kvsync serve``'s options to ``parser``."""
    parser.add_argument(
        "--host",
        default=defaults.DEFAULT_HOST,
        help="address to bind (default %(default)s; 0.0.0.0 for all)",
    )
    parser.add_argument(
        "--port",
        type=port,
        default=0,
        help="port to bind (default 0: a free port, printed at start)",
    )
    parser.add_argument(
        "--max-key-bytes",
        type=int,
        default=defaults.MAX_KEY_BYTES,
        help="longest key accepted, in bytes (default %(default)s)",
    )
    parser.add_argument(
        "--max-value-bytes",
        type=int,
        default=defaults.MAX_VALUE_BYTES,
        help="largest value accepted, in bytes (default %(default)s)",
    )
    parser.add_argument("--backlog", type=int, default=defaults.LISTEN_BACKLOG,
                        help="listen() backlog (default %(default)s)")  # fmt: skip
    _add_limit_arguments(parser)
    parser.add_argument("--role", choices=("store", "server"), default="store",
                        help="store: a standalone store; server: a parameter server of the "
                        "job in MASTER_ADDR/MASTER_PORT (see kvsync.launcher.ps_server)")
    ps_server.add_arguments(parser)


#: flag -> (ServerSettings field, type, help); each default is the KVSYNC_* variable's
#: value when set, else kvsync.defaults'.
_LIMITS: dict[str, tuple[str, type, str]] = {
    "--handshake-timeout": ("handshake_timeout", float,
                            "seconds a new connection has to finish the handshake"),
    "--frame-timeout": ("frame_timeout", float,
                        "seconds a half-received frame may go without a byte arriving"),
    "--idle-timeout": ("idle_timeout", float,
                       "seconds a connection with nothing parked may stay silent (0: forever)"),
    "--max-connections": ("max_connections", int, "connections held at most"),
    "--max-pending-bytes": ("max_pending_bytes", int,
                            "bytes reserved at most for half-received frames, all connections"),
}  # fmt: skip


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    settings = ServerSettings.from_environment(env.read())
    for flag, (field, kind, text) in _LIMITS.items():
        variable = "KVSYNC_" + field.upper()
        parser.add_argument(flag, type=kind, default=getattr(settings, field),
                            help=f"{text} (default %(default)s; env {variable})")  # fmt: skip


def settings_of(args: argparse.Namespace) -> ServerSettings:
    """The :class:`ServerSettings` that ``kvsync serve``'s limit flags give.

    Raises:
        ValueError: a limit is out of range.

    Example:
        >>> p = argparse.ArgumentParser(); add_arguments(p)
        >>> settings_of(p.parse_args(["--idle-timeout", "60"])).idle_timeout
        60.0
    """
    return ServerSettings(**{field: getattr(args, field) for field, _, _ in _LIMITS.values()})


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code (0 on a clean stop, 1 when the
    address cannot be bound, with the reason naming host:port on stderr)."""
    if getattr(args, "role", "store") == "server":
        return ps_server.run(args)
    try:
        server = StoreServer(
            args.host,
            args.port,
            max_key_bytes=args.max_key_bytes,
            max_value_bytes=args.max_value_bytes,
            secret=env.read().secret,
            backlog=args.backlog,
            settings=settings_of(args),
        )
    except (StoreConnectionError, ValueError) as exc:
        print(f"kvsync serve: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        server.close()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"kvsync store server listening on {server.host}:{server.port}", flush=True)
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("kvsync store server stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - ``python -m kvsync.launcher.serve``
    _parser = argparse.ArgumentParser(prog="kvsync serve", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
