"""Builders for offline test fixtures: tiny wheels, a wheelhouse, and locked uv projects.

Plain functions with no pytest dependency, so that ``tests/conftest.py`` and
the scripts in ``bench/`` build exactly the same things. Every project uses
``[tool.uv] no-index = true`` with ``find-links`` to the wheelhouse, so locking
and syncing need no network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import uv

UV = Path(uv.find_uv_bin())

#: Tiny packages built into the wheelhouse: (name, version, dependencies).
TOY_PACKAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("toyalpha", "1.0", ()),
    ("toyalpha", "2.0", ()),
    ("toybeta", "1.0", ("toyalpha",)),
    ("toygamma", "1.0", ()),
)


def registry_wheels(pytest_version: str) -> tuple[str, ...]:
    """Registry wheels a locked env needs to run pytest.

    A universal lock asks for the wheels of every marker branch, hence
    colorama, exceptiongroup, tomli and typing-extensions even on Linux.
    """
    return (
        f"pytest=={pytest_version}",
        "pluggy",
        "iniconfig",
        "packaging",
        "pygments",
        "colorama",
        "exceptiongroup",
        "tomli",
        "typing-extensions",
    )


#: Registry wheels differ per interpreter (tomli has compiled ones for each
#: CPython), so each keeps its own download cache and wheelhouse.
REGISTRY_WHEELS_DIR = f"uvbuild-registry-wheels-{sys.implementation.cache_tag}"
WHEELHOUSE_DIR = f"wheelhouse-{sys.implementation.cache_tag}"


class UvFailed(RuntimeError):
    """A uv command used to set up a fixture failed."""


def run_uv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real uv binary with downloads off; raise :class:`UvFailed` with its stderr."""
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [str(UV), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise UvFailed(f"uv {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def logging_uv(
    directory: Path, *, before_sync: str = "", after_sync: str = ""
) -> tuple[Path, Path]:
    """Write a uv wrapper that logs each call's arguments, then runs the real uv.

    ``before_sync``/``after_sync`` are shell lines run around a ``uv sync``
    (to slow it down, or to stop there). Returns (wrapper, log file).
    """
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "uv-calls.log"
    wrapper = directory / "uv"
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            printf '%s\\n' "$*" >> "{log}"
            if [ "$1" = sync ]; then
                {before_sync or ":"}
                "{UV}" "$@" || exit $?
                {after_sync or ":"}
                exit 0
            fi
            exec "{UV}" "$@"
            """
        )
    )
    wrapper.chmod(0o755)
    return wrapper, log


def uv_calls(log: Path, command: str | None = None) -> list[str]:
    """The logged uv calls, optionally only those of one sub-command."""
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [ln for ln in lines if command is None or ln.split(" ", 1)[0] == command]


#: Where pyenv keeps its real interpreters (its shims on PATH break version requests).
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"


def pyenv_interpreter(minor: str) -> Path | None:
    """The newest real pyenv interpreter for ``3.X`` on this machine, or ``None``."""
    found = sorted(PYENV_VERSIONS.glob(f"{minor}.*/bin/python{minor}"))
    return found[-1] if found else None


def build_toy(root: Path, name: str, version: str, deps: Sequence[str], out: Path) -> Path:
    """Write a one-module ``uv_build`` package under ``root`` and build its wheel into ``out``."""
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
    return src


def fetch_registry_wheels(
    dest: Path,
    requirements: Sequence[str],
    *,
    python_version: str | None = None,
    with_dependencies: bool = False,
) -> None:
    """Download wheels for ``requirements`` into ``dest``, once (a ``.complete`` marker).

    By default only the named wheels, for the running Python; with
    ``python_version`` pip picks wheels for that Python instead, and with
    ``with_dependencies`` it resolves their dependencies too.
    """
    marker = dest / ".complete"
    if marker.exists():
        return
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--dest",
        str(dest),
    ]
    if not with_dependencies:
        argv.append("--no-deps")
    if python_version:
        argv += ["--python-version", python_version]
    subprocess.run([*argv, *requirements], check=True)
    marker.touch()


def fill_wheelhouse(house: Path, registry: Path, scratch: Path) -> Path:
    """Hard-link the registry wheels into ``house`` and build the toy wheels there."""
    house.mkdir(parents=True, exist_ok=True)
    for wheel in registry.glob("*.whl"):
        target = house / wheel.name
        if not target.exists():
            os.link(wheel, target)
    for name, version, deps in TOY_PACKAGES:
        build_toy(scratch, name, version, deps, house)
    (house / ".complete").touch()
    return house


def write_project(
    root: Path,
    wheelhouse: Path,
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
    """Write a uv project that resolves only against ``wheelhouse``, and lock it offline.

    ``with_pytest`` puts pytest in the ``dev`` group, as a hermetic run needs.
    A package project gets ``src/<name>/__init__.py``.
    """
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
    lines += ["[tool.uv]", "no-index = true", f'find-links = ["{wheelhouse}"]']
    if not package:
        lines.append("package = false")
    (root / "pyproject.toml").write_text("\n".join(lines) + "\n" + textwrap.dedent(extra_toml))
    if package:
        module = name.replace("-", "_")
        (root / "src" / module).mkdir(parents=True, exist_ok=True)
        init = root / "src" / module / "__init__.py"
        if not init.exists():
            init.write_text('WHERE = "wheel-or-source"\n')
    if lock:
        run_uv("lock", "--offline", "--python", sys.executable, cwd=root)
    return root


def write_served_project(root: Path, wheelhouse: Path) -> Path:
    """Write and lock a project whose only index is ``wheelhouse`` served over loopback HTTP.

    The server stops once the lock is made, and locking uses its own uv cache
    (``root/lock-uv-cache``). With any other uv cache the project's wheels
    are then out of reach: offline, uv has nothing; online, the index is
    unreachable. Returns ``root/project``.
    """
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(wheelhouse))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    project = root / "project"
    try:
        (project / "src" / "served").mkdir(parents=True, exist_ok=True)
        (project / "src" / "served" / "__init__.py").write_text("")
        (project / "pyproject.toml").write_text(
            "[project]\n"
            'name = "served"\nversion = "0.1.0"\nrequires-python = ">=3.10"\n'
            'dependencies = ["toygamma==1.0"]\n'
            '[build-system]\nrequires = ["uv_build>=0.9,<1"]\nbuild-backend = "uv_build"\n'
            "[tool.uv]\nno-index = true\n"
            f'find-links = ["http://127.0.0.1:{server.server_address[1]}/"]\n'
        )
        env = {
            **os.environ,
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
            "UV_CACHE_DIR": str(root / "lock-uv-cache"),
        }
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.run(
            [str(UV), "lock", "--python", sys.executable],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise UvFailed(f"uv lock of the served project failed:\n{proc.stderr}")
    finally:
        server.shutdown()
        server.server_close()
    return project


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 10 ms until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
