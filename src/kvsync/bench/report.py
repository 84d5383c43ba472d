"""Tables, number formatting, progress lines and saved results of the benchmark scenarios.

A scenario prints its tables and also hands its rows (dataclasses) to :class:`Results`,
which ``kvsync bench ... --json FILE`` writes as JSON and ``--plot FILE`` draws as bar
charts (with matplotlib, the optional ``plot`` extra: ``pip install kvsync[plot]``).
:func:`progress` tells the terminal (stderr) what is being measured while it runs.

Example:
    >>> print(format_table(["op", "median"], [["get", "52.1 us"]]))
    op   median
    ---  -------
    get  52.1 us
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Results",
    "format_table",
    "human_bytes",
    "human_seconds",
    "progress",
    "results_of",
]

_START = time.monotonic()


def progress(message: str) -> None:
    """One ``[bench +12.3 s] message`` line on stderr: what is being measured now."""
    sys.stderr.write(f"[bench +{time.monotonic() - _START:.1f} s] {message}\n")
    sys.stderr.flush()


@dataclasses.dataclass
class _Table:
    title: str
    y: str  # the field charted
    label: tuple[str, ...]  # fields naming a bar
    rows: list[dict[str, Any]]


class Results:
    """The tables of one benchmark run, for ``--json`` and ``--plot``.

    Example:
        >>> @dataclasses.dataclass
        ... class Row:
        ...     op: str
        ...     seconds: float
        >>> r = Results()
        >>> r.add("latency", [Row("get", 5e-5)], y="seconds", label=("op",))
        >>> r.as_json()["tables"][0]["rows"]
        [{'op': 'get', 'seconds': 5e-05}]
    """

    def __init__(self) -> None:
        self.tables: list[_Table] = []

    def add(self, title: str, rows: Sequence[Any], *, y: str, label: Sequence[str]) -> None:
        """Record dataclass ``rows`` under ``title``; ``y`` is charted per ``label``."""
        self.tables.append(_Table(title, y, tuple(label), [dataclasses.asdict(r) for r in rows]))

    def as_json(self) -> dict[str, Any]:
        """Every table, as JSON-able data."""
        return {"tables": [dataclasses.asdict(t) for t in self.tables]}

    def write_json(self, path: Path) -> None:
        """Write :meth:`as_json` to ``path``."""
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")

    def plot(self, path: Path) -> bool:
        """Draw one bar chart per table into ``path`` (PNG, SVG, ... by its suffix).

        Returns:
            False (drawing nothing) when matplotlib is not installed.
        """
        try:
            import matplotlib  # type: ignore[import-not-found]  # the optional plot extra

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # type: ignore[import-not-found]
        except ImportError:
            return False
        tables = [t for t in self.tables if t.rows]
        fig, axes = plt.subplots(len(tables), 1, figsize=(9, 3.2 * max(len(tables), 1)),
                                 squeeze=False)
        for ax, table in zip(axes[:, 0], tables, strict=True):
            names = [" ".join(str(r[f]) for f in table.label) for r in table.rows]
            ax.barh(names, [float(r[table.y]) for r in table.rows])
            ax.set_title(table.title)
            ax.set_xlabel(table.y)
            ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return True


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


def results_of(args: argparse.Namespace) -> Results:
    """The :class:`Results` a scenario adds its tables to (a new one when run alone).

    Example:
        >>> ns = argparse.Namespace(); results_of(ns) is results_of(ns)
        True
    """
    results = getattr(args, "results", None)
    if results is None:
        results = args.results = Results()
    return results
