"""The dist KVStore's requests to every server: optimizer, updater, compression, optimizer
states, counters, shutdown (a mixin of :class:`kvsync.kv.dist.DistKVStore`).

Example:
    >>> ServerControl.__name__
    'ServerControl'
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from kvsync import defaults
from kvsync.errors import InvalidArgumentError, KVStoreError, error_from_code
from kvsync.kv.comm import Link
from kvsync.kv.compression import GradientCompression, create_compression
from kvsync.protocol.messages import ErrorReply
from kvsync.protocol.ps_messages import (
    PSLoadStates,
    PSSaveStates,
    PSSetCompression,
    PSSetOptimizer,
    PSSetUpdater,
    PSShutdown,
    PSStats,
)

__all__ = ["ServerControl"]


class ServerControl:
    """Requests a worker sends to every parameter server and waits for."""

    _links: list[Link]
    _gc: GradientCompression | None
    timeout: float

    def wait(self) -> None:
        """Wait for this worker's queued pushes (the store class provides it)."""
        raise NotImplementedError

    # --- optimizer, compression, states -----------------------------------------------------
    def set_optimizer(self, optimizer: Any) -> None:
        """Send ``optimizer``'s JSON config to every server (its name must be registered
        there; custom ones via the server's setup module).

        Raises:
            UnknownNameError: a server does not know the optimizer; lists the known ones.
        """
        config = json.dumps(optimizer.to_config())
        self.wait()
        self._call_all([PSSetOptimizer(config=config)] * len(self._links))

    def set_server_updater(self, name: str, **params: Any) -> None:
        """Run the updater registered as ``name`` in the server processes
        (:func:`kvsync.launcher.ps_server.register_updater`), built with ``params`` (JSON-able).

        Raises:
            UnknownNameError: a server has no updater of that name; lists the known ones.
        """
        self.wait()
        self._call_all([PSSetUpdater(name=name, params=json.dumps(params))] * len(self._links))

    def _set_updater(self, updater: Any) -> None:
        raise InvalidArgumentError(
            "dist KVStores run the update on the servers and never ship code: use "
            "set_optimizer(), or register an updater in the server process "
            "(kvsync.launcher.ps_server.register_updater, --server-setup) and call "
            "set_server_updater()"
        )

    def set_gradient_compression(self, compression_params: dict[str, Any]) -> None:
        """Compress pushed gradients on this worker; the servers decompress.

        Raises:
            UnknownNameError, InvalidArgumentError: bad parameters.
        """
        gc = create_compression(compression_params)
        self.wait()
        params = json.dumps(gc.to_params() if gc is not None else {"type": "none"})
        self._call_all([PSSetCompression(params=params)] * len(self._links))
        self._gc = gc

    def save_optimizer_states(self, fname: str, dump_optimizer: bool = False) -> None:
        """Gather every server's optimizer state into one npz file (``server_<i>`` blobs,
        each npz + JSON, and a JSON ``meta`` entry).

        Raises:
            ServerError: no optimizer is set on the servers.
        """
        self.wait()
        replies = self._call_all([PSSaveStates(dump_optimizer=dump_optimizer)] * len(self._links))
        blobs = {
            f"server_{i}": np.frombuffer(bytes(r.value), np.uint8) for i, r in enumerate(replies)
        }
        meta = json.dumps({"format": "kvsync-ps-states", "num_servers": len(self._links)})
        buf = io.BytesIO()
        savez: Any = np.savez  # numpy's stub types **kwds as its allow_pickle flag
        savez(buf, meta=np.frombuffer(meta.encode(), np.uint8), **blobs)
        with open(fname, "wb") as f:
            f.write(buf.getvalue())

    def load_optimizer_states(self, fname: str) -> None:
        """Restore what :meth:`save_optimizer_states` wrote (same number of servers).

        Raises:
            KVStoreError: the file is not a kvsync states file or has another server count.
        """
        self.wait()
        with np.load(fname, allow_pickle=False) as z:
            try:
                meta = json.loads(bytes(z["meta"]).decode())
                blobs = [bytes(z[f"server_{i}"]) for i in range(meta["num_servers"])]
            except (KeyError, ValueError) as exc:
                raise KVStoreError(f"{fname} is not a kvsync states file: {exc}") from None
        if len(blobs) != len(self._links):
            raise KVStoreError(
                f"{fname} holds states of {len(blobs)} servers, the job has {len(self._links)}"
            )
        self._call_all([PSLoadStates(data=b) for b in blobs])

    def server_stats(self) -> list[dict[str, Any]]:
        """Per-server counters (``bytes_in``, ``bytes_out``, ``keys``, ``updates`` ...)."""
        replies = self._call_all([PSStats()] * len(self._links))
        return [json.loads(bytes(r.value)) for r in replies]

    def shutdown_servers(self) -> None:
        """Ask every server process to exit (rank 0 does this at the end of a job)."""
        self.wait()
        self._call_all([PSShutdown()] * len(self._links))

    # --- helpers ----------------------------------------------------------------------------
    @property
    def _timeout_ms(self) -> int:
        return int(self.timeout * 1000)

    @property
    def _reply_wait(self) -> float:
        """Seconds to wait for a server's reply: the timeout the server enforces itself,
        plus :data:`kvsync.defaults.PS_REPLY_GRACE_SECONDS` for a reply that never comes."""
        return self.timeout + defaults.PS_REPLY_GRACE_SECONDS

    def _call_all(self, msgs: Sequence[object | None]) -> list[Any]:
        """Send one message per server (None: skip), all at once; return the replies."""
        rids = [
            None if m is None else link.submit(m) for link, m in zip(self._links, msgs, strict=True)
        ]
        replies: list[Any] = []
        first: BaseException | None = None
        for link, rid in zip(self._links, rids, strict=True):
            if rid is None:
                replies.append(None)
                continue
            try:
                reply = link.result(rid, timeout=self._reply_wait)
                if isinstance(reply, ErrorReply):
                    raise error_from_code(reply.code, reply.message)
                replies.append(reply)
            except Exception as exc:
                first = first or exc
                replies.append(None)
        if first is not None:
            raise first
        return replies
