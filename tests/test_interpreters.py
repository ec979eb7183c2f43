"""Unit tests for resolving a Python request to a real interpreter (never a shim)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_uvbuild.discovery import discover, find_matching, parse_request
from pytest_uvbuild.errors import InterpreterNotFoundError
from pytest_uvbuild.interpreters import current_interpreter, inspect, resolve_python


def test_parse_request_accepts_versions_specifiers_and_implementations() -> None:
    """3.12 means 3.12.*, a specifier is kept, and pypy3.10 restricts the implementation."""
    assert parse_request("3.12").specifier.contains("3.12.9")
    assert not parse_request("3.12").specifier.contains("3.13.0")
    assert parse_request(">=3.11,<3.13").specifier.contains("3.12.1")
    assert parse_request("pypy3.10").implementation == "pypy"


def test_garbage_request_is_a_clear_error() -> None:
    """A request that is no version, specifier or path names the three accepted forms."""
    with pytest.raises(InterpreterNotFoundError, match="neither a version"):
        find_matching("three point twelve", None)


def test_version_request_resolves_to_the_real_binary_not_a_shim(
    tmp_path: Path, pyenv_python: Callable[[str], Path]
) -> None:
    """A pyenv version request gives the interpreter under versions/, never a shim."""
    real = pyenv_python("3.12")
    interp = find_matching("3.12", tmp_path)
    assert interp.version.startswith("3.12.")
    assert "shims" not in interp.path.parts
    assert interp.path == Path(os.path.realpath(real))


def test_discover_skips_shims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pyenv-style shim script on PATH is never offered as a candidate."""
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "python3.12"
    shim.write_text('#!/usr/bin/env bash\nexec "$(pyenv root)/libexec/pyenv" exec "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    assert shim not in list(discover())


def test_running_interpreter_matches_without_a_process() -> None:
    """A request the running interpreter satisfies is answered without probing (no cache)."""
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert find_matching(want, None) == current_interpreter()


def test_path_request_and_broken_path(tmp_path: Path, pyenv_python: Callable[[str], Path]) -> None:
    """A path is inspected as is; a path that is not an interpreter is a clear error."""
    real = pyenv_python("3.12")
    assert find_matching(str(real), tmp_path).version.startswith("3.12.")
    bogus = tmp_path / "python"
    bogus.write_text("#!/bin/sh\nexit 3\n")
    bogus.chmod(0o755)
    with pytest.raises(InterpreterNotFoundError, match="is not a working Python interpreter"):
        find_matching(str(bogus), tmp_path)


def test_python_version_file_then_requires_python(
    tmp_path: Path, pyenv_python: Callable[[str], Path]
) -> None:
    """.python-version wins over requires-python, which wins over the running interpreter."""
    pyenv_python("3.12")
    pyenv_python("3.13")
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    (pinned / ".python-version").write_text("# comment\n3.12\n")
    got = resolve_python(None, project_root=pinned, requires_python=">=3.13", probe_dir=tmp_path)
    assert got.version.startswith("3.12.")
    excluded = resolve_python(
        None, project_root=tmp_path, requires_python=">=3.12", probe_dir=tmp_path
    )
    assert excluded.version_info[:2] >= (3, 12)
    assert "shims" not in excluded.path.parts
    running = resolve_python(None, project_root=tmp_path, requires_python=None, probe_dir=None)
    assert running == current_interpreter()


def test_python_version_file_that_matches_nothing_is_named_in_the_error(tmp_path: Path) -> None:
    """A .python-version asking for an absent or garbled Python is named in the error."""
    (tmp_path / ".python-version").write_text("3.99\n")
    with pytest.raises(InterpreterNotFoundError) as info:
        resolve_python(None, project_root=tmp_path, requires_python=None, probe_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / '.python-version'} asks for Python '3.99'")
    assert "No Python interpreter matching '3.99'" in message
    assert message.endswith(f"Or change {tmp_path / '.python-version'}.")
    assert info.value.request == "3.99"
    (tmp_path / ".python-version").write_text("pypy-nightly-latest\n")
    with pytest.raises(InterpreterNotFoundError, match=r"\.python-version asks for Python 'pypy"):
        resolve_python(None, project_root=tmp_path, requires_python=None, probe_dir=tmp_path)


def test_missing_version_lists_what_was_found(tmp_path: Path) -> None:
    """Asking for an absent Python lists the interpreters found and offers the download opt-in."""
    with pytest.raises(InterpreterNotFoundError) as info:
        resolve_python("3.99", project_root=tmp_path, requires_python=None, probe_dir=tmp_path)
    message = str(info.value)
    assert "No Python interpreter matching '3.99'" in message
    assert current_interpreter().version in message
    assert "--uv-python-downloads=automatic" in message


def test_download_is_asked_only_when_nothing_matches(
    tmp_path: Path, pyenv_python: Callable[[str], Path]
) -> None:
    """The opt-in download runs for a missing Python only, and its result must match."""
    asked: list[str] = []
    fallback = pyenv_python("3.12")

    def download(wanted: str) -> Path:
        asked.append(wanted)
        return fallback

    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    resolve_python(
        want, project_root=tmp_path, requires_python=None, probe_dir=tmp_path, download=download
    )
    assert asked == []
    with pytest.raises(InterpreterNotFoundError, match="does not run or does not match"):
        resolve_python(
            "3.99",
            project_root=tmp_path,
            requires_python=None,
            probe_dir=tmp_path,
            download=download,
        )
    assert asked == ["3.99"]


def test_probe_results_are_cached_by_stat(
    tmp_path: Path, pyenv_python: Callable[[str], Path]
) -> None:
    """A second inspection of an unchanged binary reads the probe record instead of running it."""
    import json

    real = pyenv_python("3.12")
    first = inspect(real, tmp_path)
    assert first is not None
    assert first.marker_environment()["python_version"] == "3.12"
    (record,) = (tmp_path / "probes").glob("python-2-*.json")
    data = json.loads(record.read_text())
    data["value"]["version"] = "3.12.99"
    record.write_text(json.dumps(data))
    again = inspect(real, tmp_path)
    assert again is not None
    assert again.version == "3.12.99"


def test_the_running_interpreter_is_read_back_from_its_probe(tmp_path: Path) -> None:
    """With a probe dir the running interpreter's facts are kept, then read without sysconfig."""
    script = (
        "import sys; from pathlib import Path; "
        "from pytest_uvbuild.interpreters import current_interpreter; "
        f"kept = current_interpreter(Path({str(tmp_path)!r})); "
        "loaded = 'sysconfig' in sys.modules; "
        "print(kept.key_fields == current_interpreter().key_fields, loaded)"
    )
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.stdout.split() == ["True", "True"]
    assert again.stdout.split() == ["True", "False"]
