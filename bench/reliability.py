"""Reliability and security figures (issue 5): run every trial, write the JSON, render the page.

Runs the scenarios of ``tests/reliability/`` at the full counts of issue 5
(the code is ``tests/reliability/report.py``), writes
``bench/results/reliability.json`` and renders ``docs/reliability.md`` from
that file only.

Usage::

    uv run --locked python bench/reliability.py                  # everything (~10 min)
    uv run --locked python bench/reliability.py --only kill crash
    uv run --locked python bench/reliability.py --render-only     # page from the JSON
"""

from __future__ import annotations

import sys

import support  # noqa: F401 - puts tests/ on sys.path, where the report lives
from reliability.report import main

if __name__ == "__main__":
    sys.exit(main())
