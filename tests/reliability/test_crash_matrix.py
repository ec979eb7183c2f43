"""Suite 4: the hermetic crash matrix, each case in one batch between passing canaries.

CI floods stdout with 5 MiB; ``bench/reliability.py`` uses the issue's 50 MB.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.lab import Lab, Trial
from reliability.scenarios import crash_matrix_trials, summarize

pytestmark = pytest.mark.reliability

#: Defects in the runner, whose owner fixes them; each has a strict xfail below.
KNOWN_DEFECTS: dict[str, str] = {
    # Fixed in the runner: a bytes user property reached JUnit as U+FFFD, and
    # KeyboardInterrupt raised in a test did not stop the session.
}


@pytest.fixture(scope="module")
def matrix(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, uv_cache: Path
) -> dict[str, Trial]:
    """The matrix, run once for the module: scenario name -> trial."""
    lab = Lab(tmp_path_factory.mktemp("crash") / "lab", wheelhouse, uv_cache)
    trials = crash_matrix_trials(lab, lab.project("crash"), stdout_mib=5)
    return {t.scenario: t for t in trials}


def test_every_crash_is_reported_as_in_process(matrix: dict[str, Trial]) -> None:
    """Each case gets the outcome and text pytest gives in-process (or says why it cannot)."""
    trials = [t for name, t in matrix.items() if name not in KNOWN_DEFECTS]
    assert len(trials) >= 15
    assert all(t.ok for t in trials), summarize(trials)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason))
        for name, reason in sorted(KNOWN_DEFECTS.items())
    ],
)
def test_known_defects(name: str, matrix: dict[str, Trial]) -> None:
    """The cases the runner gets wrong today (owner told); strict xfail until fixed."""
    assert matrix[name].ok, matrix[name].detail
