"""Top-level pytest configuration for pytest-uvbuild's own repository."""

from __future__ import annotations

import os

# The example project and benchmark fixtures are separate uv projects; they
# are run through their own commands, never collected as part of our suite.
collect_ignore = ["examples", "bench", "docs"]

# A test must never download an interpreter behind the developer's back.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
