"""Suite 1: SIGKILL at many moments of a cold env build and of a build-record write.

CI runs a few moments of each; ``bench/reliability.py`` runs them all and
records the figures in ``docs/reliability.md``.
"""

from __future__ import annotations

import pytest

from reliability.lab import Lab, Stop
from reliability.scenarios import env_kill_trials, record_kill_trials, summarize

pytestmark = pytest.mark.reliability

#: A spread of the moments in scenarios.ENV_STOPS: mid-layer, mid-sync,
#: between sync and the completion record, and the pytest process alone.
CI_ENV_STOPS = (
    Stop("uv build --wheel*", "end"),
    Stop("uv sync *", "start", 0.015),
    Stop("uv sync *", "start", 0.01, group=False),
)
CI_RECORD_STOPS = (
    ("new", Stop("uv build --sdist*", "before")),
    ("reused", Stop("git *status*", "end", 0.005)),
)


def test_a_killed_env_build_is_never_trusted_half_built(lab: Lab) -> None:
    """After a kill at each moment, the next session reuses a whole env or rebuilds it.

    The full set of moments, and a third session proving the result is
    trusted, run in bench/reliability.py.
    """
    project = lab.project()
    trials = env_kill_trials(lab, project, CI_ENV_STOPS, confirm=False)
    assert all(t.ok for t in trials), summarize(trials)
    # The moments land on both sides of the completion record.
    assert {t.detail.split(";")[0] for t in trials} >= {"no complete env was left"}


def test_a_killed_record_write_never_looks_complete(lab: Lab) -> None:
    """After a kill while the record is written, no half record looks complete; next is whole."""
    project = lab.project(git=True)
    (project / ".gitignore").write_text("__pycache__/\n")
    trials = record_kill_trials(lab, project, lab.root / "cache", CI_RECORD_STOPS)
    assert all(t.ok for t in trials), summarize(trials)
