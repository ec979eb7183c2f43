"""Shared fixtures: an offline wheelhouse, toy uv projects, and an isolated cache.

The builders live in ``tests/toys.py`` (shared with ``bench/``). pytest itself,
which every hermetic env needs, is fetched from the registry once and kept in
``.pytest_cache``; the toy wheels are built per session with ``uv_build``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import toys
from filelock import FileLock

from pytest_uvbuild import prewarm

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session", autouse=True)
def _no_inherited_project_environment() -> Iterator[None]:
    """Keep ``UV_PROJECT_ENVIRONMENT`` (how the suite's own env may have been made) from uv.

    Set for this session, it would send every ``uv sync`` or ``uv add`` a test
    runs in a toy project into the suite's own env, replacing its packages.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("UV_PROJECT_ENVIRONMENT", raising=False)
        yield


def run_uv(*args: str, cwd: Path | None = None) -> None:
    """Run the real uv binary; a failure fails the calling test with uv's stderr."""
    try:
        toys.run_uv(*args, cwd=cwd)
    except toys.UvFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """A directory of wheels: the toy packages plus pytest and its dependencies."""
    # Under xdist every worker asks for this fixture; the first one builds it.
    shared = tmp_path_factory.getbasetemp().parent
    house = shared / toys.WHEELHOUSE_DIR
    with FileLock(f"{house}.lock"):
        if (house / ".complete").exists():
            return house
        assert pytestconfig.cache is not None
        registry = pytestconfig.cache.mkdir(toys.REGISTRY_WHEELS_DIR)
        # A pytest upgrade in the dev env needs matching wheels in the cache.
        if not list(registry.glob(f"pytest-{pytest.__version__}-*.whl")):
            (registry / ".complete").unlink(missing_ok=True)
        with FileLock(f"{registry}.lock"):
            toys.fetch_registry_wheels(registry, toys.registry_wheels(pytest.__version__))
        return toys.fill_wheelhouse(house, registry, shared / "toy-sources")


@pytest.fixture
def short_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short temp dir (Unix socket paths are short) for this process and its children.

    Warm workers put their sockets there; every zygote still waiting when
    the test ends is stopped.
    """
    directory = Path(tempfile.mkdtemp(prefix="uvt", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    prewarm.stop_waiting(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_env_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An env cache shared by the whole test session (never the user's real one)."""
    return tmp_path_factory.getbasetemp().parent / "env-cache"


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uv's own package cache for this test session."""
    return tmp_path_factory.getbasetemp().parent / "uv-cache"


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, shared_env_cache: Path, uv_cache: Path
) -> None:
    """Keep every test away from the user's caches and from interpreter downloads."""
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    monkeypatch.setenv("PYTEST_UVBUILD_CACHE_DIR", str(shared_env_cache))
    monkeypatch.setenv("UV_CACHE_DIR", str(uv_cache))
    # No warm workers outlive a test unless the test asks for them (and stops them).
    monkeypatch.setenv("PYTEST_UVBUILD_KEEP_WARM", "0")
    # The xdist variables matter when this suite itself runs under -n: a
    # pytester session must not believe it is one of our xdist workers.
    for name in (
        "VIRTUAL_ENV",
        "PYTEST_ADDOPTS",
        "GITHUB_STEP_SUMMARY",
        "PYTEST_UVBUILD_UV",
        "PYTEST_XDIST_WORKER",
        "PYTEST_XDIST_WORKER_COUNT",
        "PYTEST_XDIST_TESTRUNUID",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pyenv_python() -> Callable[[str], Path]:
    """Find pyenv's real interpreter for ``3.X``; the test is skipped on a machine without it."""

    def find(minor: str) -> Path:
        found = toys.pyenv_interpreter(minor)
        if found is None:
            pytest.skip(f"pyenv has no Python {minor} here")
        return found

    return find


class MakeProject(Protocol):
    """Signature of the ``make_project`` fixture (see ``toys.write_project``)."""

    def __call__(
        self,
        root: Path | None = None,
        *,
        name: str = "demo",
        dependencies: Sequence[str] = ("toyalpha==1.0",),
        groups: Mapping[str, Sequence[str]] | None = None,
        extras: Mapping[str, Sequence[str]] | None = None,
        with_pytest: bool = True,
        package: bool = True,
        requires_python: str = ">=3.10",
        extra_toml: str = "",
        lock: bool = True,
    ) -> Path: ...


@dataclass
class _ProjectMaker:
    wheelhouse: Path
    default_root: Path

    def __call__(self, root: Path | None = None, **options: Any) -> Path:
        # The options are toys.write_project's; MakeProject spells them out for type checks.
        try:
            return toys.write_project(root or self.default_root, self.wheelhouse, **options)
        except toys.UvFailed as exc:
            pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def make_project(wheelhouse: Path, tmp_path: Path) -> MakeProject:
    """Write a uv project that locks offline against the wheelhouse, and lock it."""
    return _ProjectMaker(wheelhouse=wheelhouse, default_root=tmp_path / "project")


@pytest.fixture
def uv_pytester(pytester: pytest.Pytester, make_project: MakeProject) -> pytest.Pytester:
    """A pytester whose directory is a locked uv project (``demo``, needs toyalpha 1.0)."""
    make_project(pytester.path)
    return pytester
