"""Example tests: the hermetic ones see uv.lock's versions, whatever the host has."""

from __future__ import annotations

import pytest


@pytest.mark.hermetic
def test_runs_against_the_locked_packaging() -> None:
    """Inside the locked env, packaging is exactly the version uv.lock pins."""
    import packaging

    assert packaging.__version__ == "24.0"


@pytest.mark.hermetic
def test_project_is_installed_from_the_working_tree() -> None:
    """The project itself is importable inside the env, built from this checkout."""
    from quickstart import newest

    assert newest(["1.0", "1.10", "1.9"]) == "1.10"


def test_uv_env_fixture(uv_env) -> None:
    """The uv_env fixture reports the locked versions, not the host's."""
    assert uv_env.packages["packaging"] == "24.0"
