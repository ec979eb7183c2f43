"""Suite 5: each bad input is one clear message naming the fix; the cache and builds/ unchanged."""

from __future__ import annotations

import pytest

from reliability.lab import Lab
from reliability.scenarios import BAD_INPUTS, bad_input_trials, served_project, summarize

pytestmark = pytest.mark.reliability

#: One case of each kind the issue lists (a read-only cache is in test_damaged_cache);
#: bench/reliability.py runs every case in BAD_INPUTS.
CI_CASES = (
    "uv.lock malformed",
    "uv.lock empty",
    "uv.lock of a newer schema",
    "pyproject.toml malformed (of --uv-project)",
    "stale uv.lock",
    "project dir missing",
    "unknown group",
    "python missing",
    "hermetic marker: unknown argument",
    "hermetic marker: timeout='x'",
    "baseline path does not exist",
    "baseline holds text garbage",
    "baseline holds binary garbage",
    "build dir is a file",
    "uv binary missing",
    "uv binary broken",
    "offline with a cold uv cache",
)


def test_bad_inputs_are_one_clear_error_and_change_nothing(lab: Lab) -> None:
    """Every case exits with its status, names the fix, shows no traceback, writes nothing."""
    served = served_project(lab)
    cases = [c for c in BAD_INPUTS if c.name in CI_CASES]
    assert len(cases) == len(CI_CASES) >= 15
    trials = bad_input_trials(lab, lab.project(git=True), lab.root / "cache", cases, served)
    assert all(t.ok for t in trials), summarize(trials)
