"""Counts of hermetic test outcomes, shared by the runner and the build record.

The hermetic runner records every report of a test it ran inside the locked
env; the build record reads the totals for ``metadata.json``. Both sides only
meet here, in ``config.stash[HERMETIC_OUTCOMES_KEY]``.
"""

from __future__ import annotations

from typing import Any, Final

import pytest

__all__ = ["HERMETIC_OUTCOMES_KEY", "HermeticOutcomes"]


class HermeticOutcomes:
    """Per-outcome counts of hermetic tests, plus the node ids that failed or errored."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.errors = 0
        self.xfailed = 0
        self.xpassed = 0
        self.failing: list[str] = []

    def record(self, report: pytest.TestReport) -> None:
        """Count one report as pytest's terminal summary would."""
        if report.when == "call":
            if hasattr(report, "wasxfail"):
                if report.skipped:
                    self.xfailed += 1
                else:
                    self.xpassed += 1
                return
            if report.passed:
                self.passed += 1
            elif report.skipped:
                self.skipped += 1
            else:
                self.failed += 1
                self.failing.append(report.nodeid)
        elif report.failed:
            self.errors += 1
            self.failing.append(report.nodeid)
        elif report.skipped:
            if hasattr(report, "wasxfail"):
                self.xfailed += 1
            else:
                self.skipped += 1

    @property
    def total(self) -> int:
        """How many hermetic tests reported a final outcome."""
        return self.passed + self.failed + self.skipped + self.xfailed + self.xpassed

    def as_json(self) -> dict[str, Any]:
        """Return the counts as a JSON-ready dict (failing ids sorted, unique)."""
        return {
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "errors": self.errors,
            "xfailed": self.xfailed,
            "xpassed": self.xpassed,
            "failing": sorted(set(self.failing)),
        }


HERMETIC_OUTCOMES_KEY: Final = pytest.StashKey[HermeticOutcomes]()
