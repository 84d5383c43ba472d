"""Sphinx configuration for kvsync's documentation (``sphinx-build docs docs/_build``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

project = "kvsync"
author = "kvsync developers"
copyright = "2026, kvsync developers"  # noqa: A001
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
html_theme = "alabaster"
suppress_warnings = ["ref.python"]
# anchors for "## headings", so [text](#heading) links resolve with every myst-parser version
# (myst-parser 4, the newest for Python 3.10, needs this setting)
myst_heading_anchors = 3
