"""Suite 3: a damaged cache is detected and rebuilt, or reported clearly; never silently used."""

from __future__ import annotations

import pytest

from reliability.lab import Lab
from reliability.scenarios import (
    DAMAGES,
    damage_trials,
    disk_full_trials,
    read_only_cache_trial,
    summarize,
)

pytestmark = pytest.mark.reliability

#: The cheap hit-time checks and the deep `cache verify` check, env and layer;
#: tests/test_envcache.py covers the remaining cases in-process.
CI_DAMAGES = (
    "completion record names another key",
    "base interpreter gone (dangling bin/python)",
    "site-packages: a package dir removed",
    "site-packages: a file deep in pytest removed",
    "project layer: layer.json removed",
    "project layer: the project's module removed",
)


def test_damage_is_detected_and_rebuilt(lab: Lab) -> None:
    """Each damage is found (by the next session or by `cache verify`) and the env is rebuilt."""
    assert set(CI_DAMAGES) <= set(DAMAGES)
    trials = damage_trials(lab, lab.project(), CI_DAMAGES)
    assert all(t.ok for t in trials), summarize(trials)


def test_a_read_only_cache_is_one_clear_error(lab: Lab) -> None:
    """A cache that cannot be written (even as root) stops the session with one message."""
    trial = read_only_cache_trial(lab, lab.project())
    assert trial.ok, trial.detail


def test_a_full_disk_during_a_build_is_one_clear_error(lab: Lab) -> None:
    """RLIMIT_FSIZE below what the cache root or uv sync needs: a message naming the disk."""
    trials = disk_full_trials(lab, lab.project(), (100, 16_000))
    assert all(t.ok for t in trials), summarize(trials)
    assert all("exit 4" in t.detail for t in trials), summarize(trials)


def test_a_full_disk_while_writing_the_record_is_one_clear_error(lab: Lab) -> None:
    """RLIMIT_FSIZE that lets the env hit but not the record: a message, not a traceback."""
    trials = disk_full_trials(lab, lab.project(git=True), (3_000,), warm=True)
    assert all(t.ok for t in trials), summarize(trials)
