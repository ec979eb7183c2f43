"""The per-session build-record plugin: check inputs early, write the record at the end.

Registered by :mod:`~pytest_uvbuild.plugin` on the controller of a
``--uv-build`` session only (never on an xdist worker). At session start it
validates the build dir, the baseline and ``SOURCE_DATE_EPOCH`` so that bad
input fails before any test runs; at session finish it audits the env,
writes ``builds/<id>/`` through :mod:`~pytest_uvbuild.artifacts`, and turns
drift, a failed gate or a failed verify into a failing exit status.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_uvbuild.errors import UvBuildError
from pytest_uvbuild.session import SESSION_KEY

if TYPE_CHECKING:
    from pytest_uvbuild.gitinfo import GitQuery

__all__ = ["BuildRecordPlugin"]


def _path_option(config: pytest.Config, option: str, ini: str) -> Path | None:
    """An option is relative to the cwd, its ini twin to the rootdir (as pytest does)."""
    value = config.getoption(option)
    if value:
        return Path(value).expanduser().absolute()
    value = config.getini(ini)
    if value:
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else config.rootpath / path
    return None


class BuildRecordPlugin:
    """Writes the session's build record and applies drift, gate and verify results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.builds_root: Path | None = None
        self.baseline: Any = None
        self.outcome: Any = None
        self.error: str | None = None
        self.git: GitQuery | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Check the build dir, the baseline and SOURCE_DATE_EPOCH before any test runs."""
        from pytest_uvbuild import artifacts

        config = self.config
        try:
            if not config.getoption("uv_no_artifacts"):
                self.builds_root = _path_option(config, "uv_build_dir", "uv_build_dir") or (
                    config.rootpath / "builds"
                )
                artifacts.check_builds_root(self.builds_root)
            baseline = _path_option(config, "uv_baseline", "uv_baseline")
            if baseline is not None:
                from pytest_uvbuild.baseline import load_baseline

                self.baseline = load_baseline(baseline)
            artifacts.source_date_epoch()
        except UvBuildError as exc:
            raise pytest.UsageError(str(exc)) from None
        if config.getoption("uv_gate") and self.baseline is None:
            # A gate with nothing to compare would pass silently: say so instead.
            raise pytest.UsageError(
                "--uv-gate compares with a baseline, but none was given. Fix: pass "
                "--uv-baseline=PATH (an earlier builds/<id>/ or its audit.json) or set "
                "uv_baseline in the ini file."
            )
        if self.builds_root is not None and not config.getoption("collectonly"):
            self._start_git()

    def _start_git(self) -> None:
        """Start asking git about the project's checkout, so that it answers while we work.

        The project is found the way the env cache finds it; should the env
        turn out to be another project's, the answer is dropped at the end.
        """
        from pytest_uvbuild.gitinfo import GitQuery
        from pytest_uvbuild.project import nearest_project_dir

        explicit = self.config.stash[SESSION_KEY].request.project_dir
        root = explicit.resolve() if explicit is not None else None
        if root is None:
            root = nearest_project_dir(self.config.rootpath)
        if root is not None and root.is_dir():
            self.git = GitQuery(root, background=True)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """No thread of ours may be alive while tests run (a test may fork)."""
        if self.git is not None:
            self.git.started()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Audit the env, write the record, and fail the session on drift or a gate."""
        try:
            self._finish(session, exitstatus)
        finally:
            self.pytest_unconfigure()

    def pytest_unconfigure(self) -> None:
        """Reap git queries nobody collected (a session that stopped early, or no record)."""
        if self.git is not None:
            self.git.cancel()

    def _finish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus in (
            pytest.ExitCode.INTERRUPTED,
            pytest.ExitCode.INTERNAL_ERROR,
            pytest.ExitCode.USAGE_ERROR,
        ) or self.config.getoption("collectonly"):
            return
        uvbuild = self.config.stash[SESSION_KEY]
        env = uvbuild.main_env_if_ready()
        if env is None:
            return
        from pytest_uvbuild import artifacts

        git = self.git if self.git is not None and self.git.root == env.project.root else None
        try:
            self.outcome = artifacts.record_session(
                env,
                uvbuild.cache.uv,
                builds_root=self.builds_root,
                index_dir=uvbuild.cache.root / "sdist-sources",
                baseline=self.baseline,
                gate=bool(self.config.getoption("uv_gate")),
                verify=bool(self.config.getoption("uv_verify")),
                offline=uvbuild.request.offline,
                run=artifacts.run_facts(self.config, session, env, uvbuild.started, exitstatus),
                git=git,
                rows_dir=uvbuild.cache.root / "audit-rows",
            )
        except UvBuildError as exc:
            self.error = str(exc)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        artifacts.append_step_summary(self.outcome.markdown)
        if self.outcome.failed and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Report the record (key, id, path, drift, baseline) and, in one block, any failure."""
        if self.error is not None:
            terminalreporter.write_sep("!", "uv-build record FAILED", red=True)
            terminalreporter.write_line(self.error)
            terminalreporter.write_line(
                "The session fails because the build record could not be made; "
                "pass --uv-no-artifacts to run without one."
            )
            return
        if self.outcome is None:
            return
        terminalreporter.section("uv-build record")
        for line in self.outcome.summary_lines():
            terminalreporter.write_line(line)
        if self.outcome.failed:
            terminalreporter.write_sep("!", "uv-build audit FAILED", red=True)
            for line in self.outcome.failure_lines():
                terminalreporter.write_line(line)
