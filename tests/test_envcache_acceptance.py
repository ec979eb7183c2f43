"""Acceptance tests for ``--uv-build`` and the ``uv_env`` fixture, run as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cold_then_warm_session(uv_pytester: pytest.Pytester, tmp_path: Path) -> None:
    """A first --uv-build session builds the env, the second reuses it without uv."""
    uv_pytester.makepyfile(
        test_pkg="""
        def test_env(uv_env):
            assert uv_env.packages["toyalpha"] == "1.0"
            out = uv_env.run(["python", "-c", "import toyalpha; print(toyalpha.__version__)"],
                             capture_output=True, text=True)
            assert out.stdout.strip() == "1.0"
        """
    )
    cache = tmp_path / "cache"
    first = uv_pytester.runpytest_subprocess("--uv-build", f"--uv-cache-dir={cache}")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(
        ["uv-build: building env * no cached env for this key*", "*env * miss (*"]
    )
    second = uv_pytester.runpytest_subprocess("--uv-build", f"--uv-cache-dir={cache}")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["*env * hit in *"])
    assert "building env" not in second.stdout.str()
