"""The ``kvsync-run`` launcher: start a job's store, servers and workers, and watch them.

``kvsync-run --nproc-per-node N script.py`` (also ``python -m kvsync.run``) is torchrun's
command line for kvsync jobs. The launcher of node rank 0 hosts the job's
:class:`~kvsync.server.StoreServer` itself, so no worker is special and the store outlives a
crashing rank; every launcher starts its node's parameter servers (``--num-servers``) and
workers with the environment a training script expects (``MASTER_ADDR``, ``RANK``,
``WORLD_SIZE``, ``DMLC_*``, ...), prefixes every line they print with their role and rank,
and when one of them fails stops the others and exits with that child's code.

Modules: :mod:`~kvsync.launcher.run` (command line), :mod:`~kvsync.launcher.agent` (spawn
and supervise), :mod:`~kvsync.launcher.coordinator` and :mod:`~kvsync.launcher.job_store`
(how the nodes of a job agree it is done, failed or restarting), :mod:`~kvsync.launcher.output`
(prefixed output); the processes that only
serve: :mod:`~kvsync.launcher.serve` (``kvsync serve``) and
:mod:`~kvsync.launcher.ps_server` (a parameter server). Finding kvsync's store
under ``torchrun`` is part of the store: :mod:`kvsync.store.address`.
"""

from __future__ import annotations

__all__: list[str] = []
