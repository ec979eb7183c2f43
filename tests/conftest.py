"""Shared fixtures: an offline wheelhouse, toy uv projects, and an isolated cache.

Every test project uses ``[tool.uv] no-index = true`` with ``find-links``
pointing at a wheelhouse built here with the ``uv_build`` backend, so locks
and syncs run offline. pytest itself (needed inside hermetic envs) is fetched
from the registry once and kept in ``.pytest_cache``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
import uv
from filelock import FileLock

pytest_plugins = ["pytester"]

UV = Path(uv.find_uv_bin())

#: Tiny packages built into the wheelhouse: (name, version, dependencies).
TOY_PACKAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("toyalpha", "1.0", ()),
    ("toyalpha", "2.0", ()),
    ("toybeta", "1.0", ("toyalpha",)),
    ("toygamma", "1.0", ()),
)

#: Registry wheels a locked env needs to run pytest (a universal lock asks
#: for the wheels of every marker branch, hence colorama and friends).
REGISTRY_WHEELS: tuple[str, ...] = (
    f"pytest=={pytest.__version__}",
    "pluggy",
    "iniconfig",
    "packaging",
    "pygments",
    "colorama",
    "exceptiongroup",
    "tomli",
    "typing-extensions",
)


def run_uv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real uv binary offline and fail the test with its stderr if it fails."""
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [str(UV), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"uv {' '.join(args)} failed:\n{proc.stderr}", pytrace=False)
    return proc


def _build_toy(root: Path, name: str, version: str, deps: Sequence[str], out: Path) -> None:
    src = root / f"{name}-{version}"
    (src / "src" / name).mkdir(parents=True, exist_ok=True)
    deps_toml = ", ".join(f'"{d}"' for d in deps)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [project]
            name = "{name}"
            version = "{version}"
            requires-python = ">=3.8"
            dependencies = [{deps_toml}]
            [build-system]
            requires = ["uv_build>=0.9,<1"]
            build-backend = "uv_build"
            """
        )
    )
    (src / "src" / name / "__init__.py").write_text(f'__version__ = "{version}"\n')
    run_uv("build", "--offline", "--wheel", "--python", sys.executable, str(src), "-o", str(out))


def _fetch_registry_wheels(dest: Path) -> None:
    marker = dest / ".complete"
    if marker.exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--no-deps",
            "--dest",
            str(dest),
            *REGISTRY_WHEELS,
        ],
        check=True,
    )
    marker.touch()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """A directory of wheels: the toy packages plus pytest and its dependencies."""
    # Under xdist every worker asks for this fixture; the first builds it.
    shared = tmp_path_factory.getbasetemp().parent
    house = shared / "wheelhouse"
    with FileLock(str(shared / "wheelhouse.lock")):
        if (house / ".complete").exists():
            return house
        assert pytestconfig.cache is not None
        registry = pytestconfig.cache.mkdir("uvbuild-registry-wheels")
        # A pytest upgrade in the dev env needs matching wheels in the cache.
        if not list(registry.glob(f"pytest-{pytest.__version__}-*.whl")):
            (registry / ".complete").unlink(missing_ok=True)
        with FileLock(str(registry) + ".lock"):
            _fetch_registry_wheels(registry)
        house.mkdir(exist_ok=True)
        for wheel in registry.glob("*.whl"):
            os.link(wheel, house / wheel.name) if not (house / wheel.name).exists() else None
        sources = shared / "toy-sources"
        for name, version, deps in TOY_PACKAGES:
            _build_toy(sources, name, version, deps, house)
        (house / ".complete").touch()
    return house


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
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


class MakeProject(Protocol):
    """Signature of the ``make_project`` fixture."""

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
    ) -> Path:
        root = root or self.default_root
        root.mkdir(parents=True, exist_ok=True)
        all_groups = {k: list(v) for k, v in (groups or {}).items()}
        if with_pytest:
            all_groups.setdefault("dev", []).append("pytest")

        def toml_list(items: Sequence[str]) -> str:
            return "[" + ", ".join(f'"{i}"' for i in items) + "]"

        lines = [
            "[project]",
            f'name = "{name}"',
            'version = "0.1.0"',
            f'requires-python = "{requires_python}"',
            f"dependencies = {toml_list(dependencies)}",
        ]
        if extras:
            lines.append("[project.optional-dependencies]")
            lines += [f"{k} = {toml_list(v)}" for k, v in extras.items()]
        if all_groups:
            lines.append("[dependency-groups]")
            lines += [f"{k} = {toml_list(v)}" for k, v in all_groups.items()]
        if package:
            lines += [
                "[build-system]",
                'requires = ["uv_build>=0.9,<1"]',
                'build-backend = "uv_build"',
            ]
        lines += [
            "[tool.uv]",
            "no-index = true",
            f'find-links = ["{self.wheelhouse}"]',
        ]
        if not package:
            lines.append("package = false")
        text = "\n".join(lines) + "\n" + textwrap.dedent(extra_toml)
        (root / "pyproject.toml").write_text(text)
        module = name.replace("-", "_")
        if package:
            (root / "src" / module).mkdir(parents=True, exist_ok=True)
            init = root / "src" / module / "__init__.py"
            if not init.exists():
                init.write_text('WHERE = "wheel-or-source"\n')
        if lock:
            run_uv("lock", "--offline", "--python", sys.executable, cwd=root)
        return root


@pytest.fixture
def make_project(wheelhouse: Path, tmp_path: Path) -> MakeProject:
    """Write a uv project that locks offline against the wheelhouse, and lock it."""
    return _ProjectMaker(wheelhouse=wheelhouse, default_root=tmp_path / "project")


@pytest.fixture
def uv_pytester(pytester: pytest.Pytester, make_project: MakeProject) -> pytest.Pytester:
    """A pytester whose directory is a locked uv project (``demo``, needs toyalpha 1.0)."""
    make_project(pytester.path)
    return pytester
