"""Suite 6: secrets in the environment and in git remotes never reach a file; no world-writes."""

from __future__ import annotations

import pytest

from reliability.lab import Lab
from reliability.scenarios import SECRET_REMOTES, secrets_trials, summarize

pytestmark = pytest.mark.reliability


def test_secrets_never_reach_a_file_or_a_hermetic_test(lab: Lab) -> None:
    """Tokens and remote credentials appear in no record, cache file, summary or JUnit report."""
    # An https remote with user and password, and an ssh one; the bench runs all four.
    remotes = (SECRET_REMOTES[0], SECRET_REMOTES[-1])
    trials = secrets_trials(lab, lab.project(git=True), remotes)
    assert len(trials) == 4
    assert all(t.ok for t in trials), summarize(trials)
