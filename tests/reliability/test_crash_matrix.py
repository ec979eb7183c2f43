"""Suite 4: the hermetic crash matrix, each case in one batch between passing canaries.

CI floods stdout with 5 MiB; ``bench/reliability.py`` uses the issue's 50 MB.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability.lab import Lab, Trial
from reliability.scenarios import crash_matrix_trials, summarize

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def matrix(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, uv_cache: Path
) -> dict[str, Trial]:
    """The matrix, run once for the module: scenario name -> trial."""
    lab = Lab(tmp_path_factory.mktemp("crash") / "lab", wheelhouse, uv_cache)
    trials = crash_matrix_trials(lab, lab.project("crash"), stdout_mib=5)
    return {t.scenario: t for t in trials}


def test_every_crash_is_reported_as_in_process(matrix: dict[str, Trial]) -> None:
    """Each case gets the outcome and text pytest gives in-process (or says why it cannot).

    Two cases were strict xfails until the runner's owner fixed them
    (KeyboardInterrupt in a test, a bytes user property): see e24dc6f.
    """
    trials = list(matrix.values())
    assert len(trials) >= 17
    assert all(t.ok for t in trials), summarize(trials)
