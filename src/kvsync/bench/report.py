"""Plain-text tables and number formatting shared by every benchmark scenario.

Example:
    >>> print(format_table(["op", "median"], [["get", "52.1 us"]]))
    op   median
    ---  -------
    get  52.1 us
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table", "human_bytes", "human_seconds"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, with a dashed rule under the header."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human_seconds(seconds: float) -> str:
    """``1.5e-5`` -> ``'15.0 us'``.

    Example:
        >>> human_seconds(0.000015), human_seconds(0.25), human_seconds(3)
        ('15.0 us', '250.0 ms', '3.00 s')
    """
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def human_bytes(n: float) -> str:
    """``64 * 2**20`` -> ``'64 MiB'``.

    Example:
        >>> human_bytes(16), human_bytes(1 << 20), human_bytes(64 << 20)
        ('16 B', '1 MiB', '64 MiB')
    """
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n:g} B"
