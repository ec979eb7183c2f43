"""Fixtures of the reliability suites: a fault-injection lab on the offline wheelhouse."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.lab import Lab


@pytest.fixture
def lab(tmp_path: Path, wheelhouse: Path, uv_cache: Path) -> Lab:
    """A lab in this test's temp dir, sharing the session's warm uv package cache."""
    return Lab(tmp_path / "lab", wheelhouse, uv_cache)
