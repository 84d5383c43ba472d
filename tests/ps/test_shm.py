"""Shared-memory segments: only kvsync segments of another process can be attached."""

from __future__ import annotations

import os
import tempfile

import pytest

from kvsync.kv.shm import SharedSegments, shm_supported

pytestmark = pytest.mark.skipif(not shm_supported(), reason="needs /dev/shm and /proc")


def test_attach_maps_another_segment_and_sees_its_writes() -> None:
    owner, peer = SharedSegments(), SharedSegments()
    try:
        path, buf = owner.create(8)
        view = peer.attach(path, 8)
        buf[:3] = [1, 2, 3]
        assert list(view[:3]) == [1, 2, 3]
    finally:
        peer.close()
        owner.close()


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/fd/../../../etc/passwd", ""])
def test_attach_refuses_paths_that_are_not_descriptor_paths(path: str) -> None:
    with pytest.raises(PermissionError):
        SharedSegments().attach(path, 1)


def test_attach_refuses_a_descriptor_of_an_ordinary_file() -> None:
    # Regression: a peer could name /proc/<pid>/fd/<n> of any open file and have the
    # parameter server open it read-write and map it.
    with tempfile.TemporaryFile() as f:
        f.write(b"secret")
        f.flush()
        with pytest.raises(PermissionError, match="not a kvsync shared-memory segment"):
            SharedSegments().attach(f"/proc/{os.getpid()}/fd/{f.fileno()}", 1)
