"""Resolve a Python request (``3.12``, ``>=3.11``, a path) to a real interpreter.

uv's own discovery asks the first ``python3.12`` on ``PATH``; on machines
with pyenv that is a shim which exits 127 unless 3.12 is the active version,
and uv gives up. We therefore look for interpreters ourselves, skip shims,
and always hand uv an absolute path (the search is in
:mod:`~pytest_uvbuild.discovery`, imported only when a request needs it).
Facts about each interpreter come from running it once and are cached by the
binary's stat, so a warm session runs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

from pytest_uvbuild.errors import InterpreterNotFoundError
from pytest_uvbuild.probecache import probe

__all__ = [
    "Interpreter",
    "current_interpreter",
    "inspect",
    "resolve_python",
]

# Runs under any interpreter we may meet (3.6 and later), so it uses only the
# stdlib and no f-strings. The marker environment mirrors
# ``packaging.markers.default_environment()`` as seen by *that* interpreter.
_INFO_SCRIPT: Final = """\
import json, os, platform, sys, sysconfig
impl = sys.implementation
iv = "{0.major}.{0.minor}.{0.micro}".format(impl.version)
if impl.version.releaselevel != "final":
    iv += impl.version.releaselevel[0] + str(impl.version.serial)
print(json.dumps({
    "implementation": impl.name,
    "version": platform.python_version(),
    "version_info": list(sys.version_info),
    "abiflags": getattr(sys, "abiflags", ""),
    "platform": sysconfig.get_platform(),
    "machine": platform.machine(),
    "markers": {
        "implementation_name": impl.name,
        "implementation_version": iv,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
}))
"""
#: Probe records made by an older ``_INFO_SCRIPT`` lack fields; a new kind ignores them.
_PROBE_KIND: Final = "python-2"
#: The running interpreter's own facts, computed in-process.
_RUNNING_KIND: Final = "running-python-1"


# A NamedTuple, not a dataclass: it costs a tenth as much to define, and every
# session that asks for an env imports this module.
class Interpreter(NamedTuple):
    """One interpreter on this machine, as the environment key sees it."""

    path: Path
    implementation: str
    version: str
    version_info: tuple[Any, ...]
    abiflags: str
    platform: str
    machine: str
    #: PEP 508 marker values as this interpreter sees them, as sorted pairs;
    #: ``None`` for the running interpreter, whose values are computed
    #: in-process when asked.
    marker_values: tuple[tuple[str, str], ...] | None = None

    def marker_environment(self) -> dict[str, str]:
        """The environment that PEP 508 markers are evaluated against for this interpreter."""
        if self.marker_values is not None:
            return dict(self.marker_values)
        from packaging.markers import default_environment

        return {k: str(v) for k, v in default_environment().items()}

    @property
    def key_fields(self) -> dict[str, Any]:
        """The facts that decide what an env built from this interpreter contains."""
        return {
            "implementation": self.implementation,
            "version": self.version,
            "abiflags": self.abiflags,
            "path": str(self.path),
            "platform": self.platform,
            "machine": self.machine,
        }

    def describe(self) -> str:
        """Return a short human description such as ``CPython 3.12.1 (/path/python)``."""
        impl = {"cpython": "CPython", "pypy": "PyPy"}.get(self.implementation, self.implementation)
        return f"{impl} {self.version} ({self.path})"


def _from_info(path: Path, info: dict[str, Any]) -> Interpreter:
    return Interpreter(
        path=path,
        implementation=str(info["implementation"]),
        version=str(info["version"]),
        version_info=tuple(info["version_info"]),
        abiflags=str(info.get("abiflags", "")),
        platform=str(info["platform"]),
        machine=str(info["machine"]),
        marker_values=tuple(sorted((str(k), str(v)) for k, v in info["markers"].items())),
    )


def current_interpreter(probe_dir: Path | None = None) -> Interpreter:
    """Describe the interpreter running pytest, without starting a process.

    With a ``probe_dir`` the facts are kept in a probe record (made here,
    in-process, when the binary is new), which spares a warm session
    importing ``sysconfig`` for the platform.
    """
    real = Path(os.path.realpath(sys.executable))

    def compute() -> dict[str, Any]:
        import sysconfig

        return {
            "implementation": sys.implementation.name,
            "version": platform.python_version(),
            "version_info": list(sys.version_info),
            "abiflags": getattr(sys, "abiflags", ""),
            "platform": sysconfig.get_platform(),
            "machine": platform.machine(),
        }

    try:
        facts = probe(probe_dir, _RUNNING_KIND, real, compute)
    except OSError:
        facts = compute()
    return Interpreter(
        path=real,
        implementation=str(facts["implementation"]),
        version=str(facts["version"]),
        version_info=tuple(facts["version_info"]),
        abiflags=str(facts["abiflags"]),
        platform=str(facts["platform"]),
        machine=str(facts["machine"]),
    )


def inspect(path: Path, probe_dir: Path | None) -> Interpreter | None:
    """Ask the interpreter at ``path`` about itself; ``None`` if it does not run."""
    real = Path(os.path.realpath(path))

    def compute() -> dict[str, Any]:
        try:
            proc = subprocess.run(
                [str(real), "-I", "-S", "-c", _INFO_SCRIPT],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return {"ok": False}
        if proc.returncode != 0:
            return {"ok": False}
        try:
            info = json.loads(proc.stdout)
        except ValueError:
            return {"ok": False}
        return {"ok": True, **info}

    try:
        info = probe(probe_dir, _PROBE_KIND, real, compute)
    except OSError:
        return None
    if not info.get("ok"):
        return None
    return _from_info(real, info)


def _read_python_version_file(project_root: Path) -> tuple[str, Path] | None:
    """The request in the nearest ``.python-version`` and that file's path, if any."""
    # uv reads .python-version in the project and its parents; the first
    # non-comment line is the request.
    for directory in (project_root, *project_root.parents):
        candidate = directory / ".python-version"
        if candidate.is_file():
            for raw in candidate.read_text(encoding="utf-8").splitlines():
                line = raw.strip()
                if line and not line.startswith("#"):
                    return line, candidate
            return None
    return None


def resolve_python(
    request: str | None,
    *,
    project_root: Path,
    requires_python: str | None,
    probe_dir: Path | None,
    download: Callable[[str], Path] | None = None,
) -> Interpreter:
    """Resolve the interpreter for an env.

    An explicit ``request`` wins. Otherwise ``.python-version`` decides,
    then ``requires-python`` (the running interpreter if it satisfies it,
    else the newest one found that does), then the running interpreter.

    Only when nothing on this machine matches, and only if the user opted
    in (``download`` is given), uv is asked to download a matching Python.
    """
    try:
        return _resolve_local(
            request,
            project_root=project_root,
            requires_python=requires_python,
            probe_dir=probe_dir,
        )
    except InterpreterNotFoundError as exc:
        if download is None or exc.request is None:
            raise
        wanted = exc.request
    from pytest_uvbuild.discovery import parse_request

    path = download(wanted)
    interp = inspect(path, probe_dir)
    if interp is None or not parse_request(wanted).matches(interp):
        raise InterpreterNotFoundError(
            f"uv installed Python for {wanted!r} at {path}, but it does not run or does not "
            "match. Fix: check `uv python list`, or pass --uv-python=/path/to/python."
        )
    return interp


def _resolve_local(
    request: str | None,
    *,
    project_root: Path,
    requires_python: str | None,
    probe_dir: Path | None,
) -> Interpreter:
    pinned = None if request else _read_python_version_file(project_root)
    wanted = request or (pinned[0] if pinned else None)
    if wanted:
        from pytest_uvbuild.discovery import find_matching

        try:
            return find_matching(wanted, probe_dir)
        except InterpreterNotFoundError as exc:
            if pinned is None:
                raise
            # Without naming the file, the user is told about a request they never made.
            error = InterpreterNotFoundError(
                f"{pinned[1]} asks for Python {wanted!r} (no --uv-python was given): {exc} "
                f"Or change {pinned[1]}."
            )
            error.request = exc.request
            raise error from None
    current = current_interpreter(probe_dir)
    if not requires_python:
        return current
    allowed = _requires_python_allows(requires_python, current, probe_dir)
    if allowed is None or allowed:
        return current
    from pytest_uvbuild.discovery import newest_matching

    return newest_matching(requires_python, current, probe_dir)


def _requires_python_allows(
    requires_python: str, interp: Interpreter, probe_dir: Path | None
) -> bool | None:
    """Whether ``interp`` satisfies ``requires-python``; ``None`` if the specifier is invalid.

    The answer is kept with the interpreter's other probe facts, so a warm
    session neither imports packaging nor parses the specifier again.
    """

    def compute() -> dict[str, Any]:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            spec = SpecifierSet(requires_python)
        except InvalidSpecifier:
            return {"allowed": None}
        return {"allowed": spec.contains(interp.version, prereleases=True)}

    digest = hashlib.sha256(f"{requires_python}\0{interp.version}".encode()).hexdigest()[:16]
    try:
        answer = probe(probe_dir, f"requires-python-{digest}", interp.path, compute)
    except OSError:
        answer = compute()
    allowed = answer.get("allowed")
    return allowed if isinstance(allowed, bool) else None
