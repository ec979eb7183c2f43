"""pytest-uvbuild's pytest plugin: options, markers, fixtures and hook wiring.

Nothing heavy happens here. Each hook hands over to the module that owns
the work: :mod:`~pytest_uvbuild.session` for envs, :mod:`~pytest_uvbuild.hermetic`
for hermetic runs and :mod:`~pytest_uvbuild.recording` for the build record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_uvbuild.errors import UvBuildError
from pytest_uvbuild.request import INSTALL_MODES, EnvRequest, InstallMode
from pytest_uvbuild.session import SESSION_KEY, UvBuildSession, is_xdist_worker

if TYPE_CHECKING:
    from pytest_uvbuild.envcache import UvEnv


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--uv-*`` and ``--hermetic-*`` options and their ini twins."""
    group = parser.getgroup("uvbuild", "uv-locked hermetic runs (pytest-uvbuild)")
    group.addoption(
        "--uv-build",
        action="store_true",
        default=False,
        dest="uv_build",
        help="Run in the project's uv-locked environment and write a build record",
    )
    parser.addini("uv_build", type="bool", default=False, help="Same as --uv-build")
    group.addoption(
        "--uv-project",
        metavar="DIR",
        dest="uv_project",
        default=None,
        help="uv project to lock against (default: nearest dir at or above rootdir "
        "with pyproject.toml and uv.lock)",
    )
    parser.addini("uv_project", default=None, help="Same as --uv-project, relative to rootdir")
    group.addoption(
        "--uv-python",
        metavar="SPEC",
        dest="uv_python",
        default=None,
        help="Python for the env: a version such as 3.12, a specifier, or a path",
    )
    parser.addini("uv_python", default=None, help="Same as --uv-python")
    group.addoption(
        "--uv-group",
        metavar="NAME",
        action="append",
        dest="uv_group",
        default=[],
        help="Include a dependency group (repeatable)",
    )
    parser.addini("uv_groups", type="args", default=[], help="Dependency groups to include")
    group.addoption(
        "--uv-only-group",
        metavar="NAME",
        action="append",
        dest="uv_only_group",
        default=[],
        help="Install only this dependency group, not the project's dependencies (repeatable)",
    )
    group.addoption(
        "--uv-no-default-groups",
        action="store_true",
        default=False,
        dest="uv_no_default_groups",
        help="Do not install the default groups ([tool.uv] default-groups, else dev)",
    )
    group.addoption(
        "--uv-extra",
        metavar="NAME",
        action="append",
        dest="uv_extra",
        default=[],
        help="Include an optional-dependency extra (repeatable)",
    )
    parser.addini("uv_extras", type="args", default=[], help="Extras to include")
    group.addoption(
        "--uv-all-extras",
        action="store_true",
        default=False,
        dest="uv_all_extras",
        help="Include every optional-dependency extra",
    )
    group.addoption(
        "--uv-offline",
        action="store_true",
        default=False,
        dest="uv_offline",
        help="Run uv in offline mode (only its cache is used)",
    )
    parser.addini("uv_offline", type="bool", default=False, help="Same as --uv-offline")
    group.addoption(
        "--uv-cache-dir",
        metavar="DIR",
        dest="uv_cache_dir",
        default=None,
        help="Where envs are cached (default: $PYTEST_UVBUILD_CACHE_DIR or "
        "$XDG_CACHE_HOME/pytest-uvbuild)",
    )
    parser.addini("uv_cache_dir", default=None, help="Same as --uv-cache-dir")
    group.addoption(
        "--uv-rebuild",
        action="store_true",
        default=False,
        dest="uv_rebuild",
        help="Ignore and replace the cached env for this key",
    )
    group.addoption(
        "--uv-install-project",
        choices=INSTALL_MODES,
        dest="uv_install_project",
        default=None,
        help="How the project itself is installed: wheel (default), source or no",
    )
    parser.addini("uv_install_project", default=None, help="Same as --uv-install-project")
    group.addoption(
        "--uv-python-downloads",
        choices=("never", "automatic"),
        dest="uv_python_downloads",
        default=None,
        help="Let uv download a Python when none on this machine matches: never (default, "
        "unless UV_PYTHON_DOWNLOADS=automatic is set) or automatic",
    )
    parser.addini("uv_python_downloads", default=None, help="Same as --uv-python-downloads")
    _add_build_record_options(parser, group)
    _add_hermetic_options(parser, group)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and the per-run session object."""
    config.addinivalue_line(
        "markers",
        "hermetic(timeout=None, env=None, python=None, groups=None, extras=None, "
        "project=None, network=True): run the test body inside the uv-locked env "
        "when --uv-build is given",
    )
    config.stash[SESSION_KEY] = UvBuildSession(config)
    _configure_build_record(config)
    _configure_hermetic(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Release the env leases this run held."""
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
        del config.stash[SESSION_KEY]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``--uv-build`` (or ``--uv-rebuild``), materialise the env before collection."""
    uvbuild = session.config.stash[SESSION_KEY]
    if not uvbuild.materialise_at_start:
        return
    try:
        uvbuild.main_env  # noqa: B018 - materialising is the point
    except UvBuildError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    """Say that the session runs against a uv lock."""
    uvbuild = config.stash[SESSION_KEY]
    env = uvbuild.main_env_if_ready()
    if env is None:
        return None
    return [f"uv-build: env {env.key} ({env.interpreter.describe()}) at {env.path}"]


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Report hit or miss, key, location and time of every env used."""
    lines = config.stash[SESSION_KEY].summary_lines()
    if not lines:
        return
    terminalreporter.section("uv-build")
    for line in lines:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def uv_env(pytestconfig: pytest.Config) -> UvEnv:
    """The session's uv-locked environment, materialised on first use."""
    uvbuild = pytestconfig.stash[SESSION_KEY]
    try:
        return uvbuild.main_env
    except UvBuildError as exc:
        message = str(exc)
    # Failing outside the except block keeps pytest from also printing the
    # original exception as the "context" of this one.
    pytest.fail(f"uv_env: {message}", pytrace=False)


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """Group or extra names: one string is one name (as in the hermetic marker), not letters."""
    return (value,) if isinstance(value, str) else tuple(value)


@pytest.fixture(scope="session")
def uv_env_factory(
    pytestconfig: pytest.Config,
) -> Callable[..., UvEnv]:
    """Make further envs: ``uv_env_factory(project_dir, python=..., groups=...)``."""
    uvbuild: UvBuildSession = pytestconfig.stash[SESSION_KEY]

    def factory(
        project_dir: str | Path | None = None,
        *,
        python: str | None = None,
        groups: str | Sequence[str] = (),
        only_groups: str | Sequence[str] = (),
        no_default_groups: bool = False,
        extras: str | Sequence[str] = (),
        all_extras: bool = False,
        install_project: InstallMode = "wheel",
        offline: bool | None = None,
        python_downloads: bool | None = None,
        rebuild: bool = False,
    ) -> UvEnv:
        if install_project not in INSTALL_MODES:
            pytest.fail(
                f"uv_env_factory: install_project={install_project!r} is not one of "
                f"{', '.join(INSTALL_MODES)}. Fix: pass one of those.",
                pytrace=False,
            )
        request = EnvRequest(
            project_dir=Path(project_dir).resolve() if project_dir is not None else None,
            python=python,
            groups=_names(groups),
            only_groups=_names(only_groups),
            no_default_groups=no_default_groups,
            extras=_names(extras),
            all_extras=all_extras,
            install_project=install_project,
            offline=uvbuild.request.offline if offline is None else offline,
            python_downloads=(
                uvbuild.request.python_downloads if python_downloads is None else python_downloads
            ),
        )
        try:
            return uvbuild.env_for(request, rebuild=rebuild)
        except UvBuildError as exc:
            message = str(exc)
        pytest.fail(f"uv_env_factory: {message}", pytrace=False)

    return factory


# -- the build record: builds/<id>/, the audit and the gate -----------------


def _add_build_record_options(parser: pytest.Parser, group: Any) -> None:
    group.addoption(
        "--uv-build-dir",
        metavar="DIR",
        dest="uv_build_dir",
        default=None,
        help="Where build records are written (default: builds/ under the rootdir)",
    )
    parser.addini("uv_build_dir", default=None, help="Same as --uv-build-dir, relative to rootdir")
    group.addoption(
        "--uv-no-artifacts",
        action="store_true",
        default=False,
        dest="uv_no_artifacts",
        help="Write no build record (the audit and the gate still run)",
    )
    group.addoption(
        "--uv-baseline",
        metavar="PATH",
        dest="uv_baseline",
        default=None,
        help="Earlier build record (its directory, audit.json or metadata.json) to compare with",
    )
    parser.addini("uv_baseline", default=None, help="Same as --uv-baseline, relative to rootdir")
    group.addoption(
        "--uv-gate",
        action="store_true",
        default=False,
        dest="uv_gate",
        help="Fail the session on any difference from the baseline, as on drift",
    )
    group.addoption(
        "--uv-verify",
        action="store_true",
        default=False,
        dest="uv_verify",
        help="Rebuild the sdist and requirements in a fresh temp dir; fail unless the bytes match",
    )


def _configure_build_record(config: pytest.Config) -> None:
    """Register the build-record plugin on the controller of a ``--uv-build`` session."""
    if not config.stash[SESSION_KEY].enabled:
        given = [
            flag
            for flag, dest in (
                ("--uv-baseline", "uv_baseline"),
                ("--uv-gate", "uv_gate"),
                ("--uv-verify", "uv_verify"),
            )
            if config.getoption(dest)
        ]
        if given:
            raise pytest.UsageError(
                f"{', '.join(given)} needs --uv-build. Fix: add --uv-build "
                "(or set uv_build = true in the ini file)."
            )
        return
    if is_xdist_worker(config):
        return  # only the controller writes the record
    from pytest_uvbuild.recording import BuildRecordPlugin

    config.pluginmanager.register(BuildRecordPlugin(config), "uvbuild-record")


# -- hermetic runs: the marker, --hermetic-all, the batched runner ----------


def _add_hermetic_options(parser: pytest.Parser, group: Any) -> None:
    group.addoption(
        "--hermetic-all",
        action="store_true",
        default=False,
        dest="hermetic_all",
        help="With --uv-build, treat every test as hermetic: collect and run the whole "
        "suite inside the locked env, importing nothing of it here",
    )
    group.addoption(
        "--hermetic-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        dest="hermetic_timeout",
        help="Default timeout of each hermetic test (0: none); overrides ini hermetic_timeout",
    )
    parser.addini(
        "hermetic_timeout",
        default=None,
        help="Default timeout in seconds of each hermetic test (empty or 0: none)",
    )
    parser.addini(
        "hermetic_passenv",
        type="args",
        default=[],
        help="Environment variables (names or globs such as AWS_*) passed into hermetic tests",
    )
    parser.addini(
        "hermetic_keep_warm",
        default="auto",
        help="Seconds a warm worker (pytest imported) waits for the next session after one "
        "ends; 0: none; auto (default): 120, or 0 when CI or BUILD_NUMBER is set. "
        "PYTEST_UVBUILD_KEEP_WARM overrides it",
    )


def _configure_hermetic(config: pytest.Config) -> None:
    """Register the per-run hermetic plugin (it validates the marker even without --uv-build)."""
    from pytest_uvbuild.hermetic import HermeticPlugin

    config.pluginmanager.register(HermeticPlugin(config), "uvbuild-hermetic")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """With ``--hermetic-all``, import no conftest.py here: they load inside the env.

    The parser is kept, to learn the ini keys that only the inside knows;
    the options that only the inside knows are learnt now, before pytest
    parses the command line.
    """
    namespace = early_config.known_args_namespace
    if not getattr(namespace, "hermetic_all", False):
        return
    if getattr(namespace, "uv_build", False) or early_config.getini("uv_build"):
        from pytest_uvbuild.hermetic import INI_PARSER_KEY
        from pytest_uvbuild.passthrough import learn_inner_options

        namespace.noconftest = True
        early_config.stash[INI_PARSER_KEY] = parser
        learn_inner_options(early_config, parser, args)
