"""Specification of rank-prefixed output forwarding."""

from __future__ import annotations

import io

from kvsync.launcher.output import CHUNK_BYTES, TAIL_LINES, OutputRouter


def _forward(stdout: bytes, stderr: bytes = b"") -> tuple[bytes, bytes, list[str]]:
    out, err = io.BytesIO(), io.BytesIO()
    child = OutputRouter(out, err).attach("worker", 5, io.BytesIO(stdout), io.BytesIO(stderr))
    assert child.join(5.0)
    return out.getvalue(), err.getvalue(), child.tail()


def test_a_last_line_without_newline_is_ended_and_prefixed() -> None:
    out, _, _ = _forward(b"one\ntwo")
    assert out == b"[worker 5] one\n[worker 5] two\n"


def test_a_line_longer_than_a_chunk_is_forwarded_in_prefixed_pieces() -> None:
    out, _, _ = _forward(b"x" * (CHUNK_BYTES + 10) + b"\n")
    lines = out.splitlines()
    assert [len(line) for line in lines] == [len(b"[worker 5] ") + CHUNK_BYTES,
                                             len(b"[worker 5] ") + 10]
    assert all(line.startswith(b"[worker 5] ") for line in lines)


def test_only_the_last_stderr_lines_are_kept_for_the_summary() -> None:
    stderr = b"".join(b"line %d\n" % i for i in range(TAIL_LINES + 5))
    _, err, tail = _forward(b"", stderr)
    assert tail == [f"line {i}" for i in range(5, TAIL_LINES + 5)]
    assert err.count(b"[worker 5] ") == TAIL_LINES + 5


def test_undecodable_bytes_are_forwarded_unchanged_and_replaced_in_the_tail() -> None:
    _, err, tail = _forward(b"", b"bad \xff byte\n")
    assert err == b"[worker 5] bad \xff byte\n"
    assert tail == ["bad \ufffd byte"]


class _Broken(io.BytesIO):
    def write(self, data: object) -> int:
        raise BrokenPipeError("reader went away")


def test_a_broken_destination_does_not_stop_draining_the_child() -> None:
    pipe = io.BytesIO(b"a\n" * 1000)
    child = OutputRouter(_Broken(), io.BytesIO()).attach("server", 0, pipe, None)
    assert child.join(5.0)
    assert pipe.closed
