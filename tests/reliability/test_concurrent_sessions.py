"""Suite 2: sessions racing on one cold cache, with and without xdist; prune and rebuild races."""

from __future__ import annotations

import pytest

from reliability.lab import Lab
from reliability.scenarios import (
    XDIST_TEST,
    concurrent_rounds,
    prune_during_sessions,
    rebuild_while_in_use,
    summarize,
)

pytestmark = pytest.mark.reliability


def test_sessions_started_together_build_each_key_once(lab: Lab) -> None:
    """Six sessions on a cold cache (two keys) all pass; each key gets exactly one `uv sync`."""
    trials = concurrent_rounds(lab, lab.project(), sessions=6, rounds=1)
    assert all(t.ok for t in trials), summarize(trials)


def test_xdist_sessions_started_together_build_each_key_once(lab: Lab) -> None:
    """Two `-n 4` sessions on a cold cache: every worker gets a whole env, each key synced once."""
    pytest.importorskip("xdist")
    project = lab.project()
    (project / "test_many.py").write_text(XDIST_TEST)
    trials = concurrent_rounds(lab, project, sessions=2, rounds=1, xdist=4)
    assert all(t.ok for t in trials), summarize(trials)


def test_prune_never_removes_an_env_in_use(lab: Lab) -> None:
    """`cache prune --all` during sessions removes only unused envs, and never a layer mid-build."""
    trial = prune_during_sessions(lab, lab.project(), sessions=2)
    assert trial.ok, trial.detail
    wheels = [a for _e, a in lab.calls("uv", "build") if "--wheel" in a]
    assert len(wheels) == 1, wheels


def test_rebuild_never_pulls_an_env_from_under_a_session(lab: Lab) -> None:
    """`--uv-rebuild` while another session uses the env stops with a message; it passes."""
    trial = rebuild_while_in_use(lab, lab.project())
    assert trial.ok, trial.detail
    assert "while another running session uses it" in trial.detail
