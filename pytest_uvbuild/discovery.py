"""Find interpreters on this machine and match a request (``3.12``, ``>=3.11``, a path).

Only an explicit request, a ``.python-version`` pin, or a ``requires-python``
that the running interpreter does not satisfy comes here; the default case
(:func:`~pytest_uvbuild.interpreters.resolve_python` with none of those) never
imports this module. Candidates come from ``PATH``, pyenv's ``versions/`` and
uv-managed Pythons, shims excluded; each is asked about itself once and the
answer is cached by the binary's stat (:func:`~pytest_uvbuild.interpreters.inspect`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from pytest_uvbuild.errors import InterpreterNotFoundError
from pytest_uvbuild.interpreters import Interpreter, current_interpreter, inspect

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

__all__ = ["discover", "find_matching", "newest_matching", "parse_request"]

_NAME_RE: Final = re.compile(r"^python(\d+(?:\.\d+)?)?$")
_REQUEST_RE: Final = re.compile(r"^(?P<impl>cpython|pypy|python|cp|pp)?(?P<version>\d[\d.]*)?$")


def _is_shim(path: Path) -> bool:
    # pyenv and asdf shims are small shell scripts that re-dispatch; they
    # fail for versions that are installed but not active.
    if "shims" in path.parts:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError:
        return True
    return head.startswith(b"#!") and (b"pyenv" in head or b"asdf" in head)


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _version_sort_key(name: str) -> Version:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(name)
    except InvalidVersion:
        return Version("0")


def discover() -> Iterator[Path]:
    """Yield candidate interpreter paths in preference order, shims excluded.

    The order is ``PATH`` first (as a shell would pick), then pyenv's
    ``versions/`` (newest first), then uv-managed interpreters.
    """
    seen: set[str] = set()

    def candidates_in(directory: Path) -> Iterator[Path]:
        try:
            names = sorted(os.listdir(directory), reverse=True)
        except OSError:
            return
        for name in names:
            if not _NAME_RE.match(name):
                continue
            path = directory / name
            if not os.access(path, os.X_OK) or path.is_dir() or _is_shim(path):
                continue
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            yield path

    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            yield from candidates_in(Path(entry))
    versions = _pyenv_root() / "versions"
    try:
        pyenv_versions = sorted(os.listdir(versions), key=_version_sort_key, reverse=True)
    except OSError:
        pyenv_versions = []
    for name in pyenv_versions:
        yield from candidates_in(versions / name / "bin")
    uv_pythons = Path(
        os.environ.get("UV_PYTHON_INSTALL_DIR")
        or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        / "uv"
        / "python"
    )
    try:
        managed = sorted(os.listdir(uv_pythons), reverse=True)
    except OSError:
        managed = []
    for name in managed:
        yield from candidates_in(uv_pythons / name / "bin")


class _Request(NamedTuple):
    implementation: str | None
    specifier: SpecifierSet
    text: str

    def matches(self, interp: Interpreter) -> bool:
        if self.implementation and interp.implementation != self.implementation:
            return False
        return self.specifier.contains(interp.version, prereleases=True)

    def name_may_match(self, path: Path) -> bool:
        """Cheap pre-filter on ``pythonX.Y`` names, so likely binaries are run first."""
        m = _NAME_RE.match(path.name)
        if not m or not m.group(1) or "." not in m.group(1):
            return True
        named = m.group(1)
        return any(self.specifier.contains(f"{named}.{patch}") for patch in (0, 1, 5, 10, 20))


def parse_request(text: str) -> _Request:
    """Parse ``3.12``, ``3.12.1``, ``cpython3.12``, ``pypy3.10`` or ``>=3.11,<3.13``."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    text = text.strip()
    m = _REQUEST_RE.match(text)
    if m and m.group("version"):
        impl = m.group("impl")
        implementation = {"pypy": "pypy", "pp": "pypy"}.get(impl or "", "cpython" if impl else None)
        version = m.group("version").rstrip(".")
        return _Request(implementation, SpecifierSet(f"=={version}.*"), text)
    try:
        return _Request(None, SpecifierSet(text), text)
    except InvalidSpecifier:
        raise InterpreterNotFoundError(
            f"--uv-python={text!r} is neither a version (3.12), a version specifier "
            "(>=3.11,<3.13) nor a path to an interpreter. Fix: pass one of those."
        ) from None


def _looks_like_path(text: str) -> bool:
    return os.sep in text or text.startswith(".") or text.startswith("~")


def _not_found(
    request: str, found: list[Interpreter], uv_request: str | None
) -> InterpreterNotFoundError:
    unique = {i.path: i for i in found}.values()
    ordered = sorted(unique, key=lambda i: _version_sort_key(i.version))
    listing = ", ".join(f"{i.version} ({i.path})" for i in ordered) or "none"
    error = InterpreterNotFoundError(
        f"No Python interpreter matching {request!r} was found on this machine. "
        f"Found: {listing}. Fix: install that Python (e.g. `pyenv install` or "
        "`uv python install`), pass --uv-python=/path/to/python, pick one of those found, "
        "or let uv download it with --uv-python-downloads=automatic."
    )
    error.request = uv_request
    return error


def find_matching(request: str, probe_dir: Path | None) -> Interpreter:
    """Return the first interpreter, in :func:`discover` order, that satisfies ``request``."""
    if _looks_like_path(request):
        path = Path(request).expanduser()
        interp = inspect(path, probe_dir) if path.is_file() else None
        if interp is None:
            raise InterpreterNotFoundError(
                f"--uv-python={request!r} is not a working Python interpreter. "
                "Fix: pass the path of a python executable, or a version such as 3.12."
            )
        return interp
    req = parse_request(request)
    current = current_interpreter()
    if req.matches(current):
        return current

    def likely_first() -> Iterator[Path]:
        deferred: list[Path] = []
        for path in discover():
            if req.name_may_match(path):
                yield path
            else:
                deferred.append(path)
        yield from deferred

    seen: list[Interpreter] = [current]
    for path in likely_first():
        interp = inspect(path, probe_dir)
        if interp is None:
            continue
        seen.append(interp)
        if req.matches(interp):
            return interp
    raise _not_found(request, seen, request)


def newest_matching(
    requires_python: str, current: Interpreter, probe_dir: Path | None
) -> Interpreter:
    """The newest interpreter found that satisfies ``requires-python`` (``current`` does not)."""
    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(requires_python)
    found: list[Interpreter] = [current]
    for path in discover():
        interp = inspect(path, probe_dir)
        if interp is not None:
            found.append(interp)
    matching = [i for i in found if spec.contains(i.version, prereleases=True)]
    if not matching:
        raise _not_found(f"requires-python {requires_python}", found, requires_python)
    return max(matching, key=lambda i: _version_sort_key(i.version))
