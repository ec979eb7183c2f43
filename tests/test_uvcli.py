"""Unit tests for locating and running uv, and for turning its failures into one clear error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import toys

from conftest import MakeProject
from pytest_uvbuild import uvcli
from pytest_uvbuild.errors import (
    InterpreterNotFoundError,
    LockfileError,
    ProjectNotFoundError,
    UvCommandError,
    UvNotFoundError,
)
from pytest_uvbuild.uvcli import Uv, find_uv, packaged_version
from pytest_uvbuild.uverrors import translate_failure

# uv's exact messages (uv 0.13, see the shared uv-facts notes), with its chatter before them.
STALE = (
    "Using CPython 3.11.7 interpreter at: /usr/bin/python3\n"
    "error: The lockfile at `uv.lock` needs to be updated, but `--locked` was provided. "
    "To update the lockfile, run `uv lock`.\n"
)
MISSING = (
    "error: Unable to find lockfile at `uv.lock`, but `--locked` was provided. "
    "To create a lockfile, run `uv lock` or `uv sync` without the flag.\n"
)
MALFORMED = "error: Failed to parse `uv.lock`\n  Caused by: TOML parse error at line 1, column 9\n"
SCHEMA = (
    "error: The lockfile at `uv.lock` uses an unsupported schema version "
    "(v99, but only v1 is supported).\n"
)
OFFLINE = (
    "Creating virtual environment at: /c/envs/abc\n"
    "error: Failed to download `pytest==9.2.0`\n"
    "  Caused by: Network connectivity is disabled, but the requested data wasn't found "
    "in the cache\n"
)
UNREACHABLE = (
    "error: Failed to fetch: `http://127.0.0.1:9/simple/toyalpha/`\n"
    "  Caused by: error sending request for url (http://127.0.0.1:9/simple/toyalpha/)\n"
    "  Caused by: tcp connect error\n"
)
TAMPERED = (
    "error: Hash mismatch for `attrs==26.1.0`\n\nExpected:\n  sha256:aa\nComputed:\n  sha256:bb\n"
)


@pytest.mark.parametrize(
    ("stderr", "kind", "fix"),
    [
        (STALE, LockfileError, "run `uv lock`"),
        (MISSING, LockfileError, "run `uv lock`"),
        (MALFORMED, LockfileError, "regenerate it with `uv lock`"),
        (SCHEMA, LockfileError, "upgrade uv"),
        (OFFLINE, UvCommandError, "without --uv-offline"),
        (UNREACHABLE, UvCommandError, "check the network or index URL"),
        (TAMPERED, UvCommandError, "re-lock with `uv lock --refresh`"),
        ("error: something new\n", UvCommandError, "uv exit status 2"),
    ],
)
def test_uv_failures_become_one_error_naming_the_fix(
    stderr: str, kind: type[Exception], fix: str
) -> None:
    """Each known uv failure maps to our error type with a message that names the fix."""
    error = translate_failure("`uv sync --locked`", 2, stderr)
    assert type(error) is kind
    assert fix in str(error)


def test_uv_chatter_before_the_error_is_dropped() -> None:
    """Lines before uv's "error:" (interpreter, venv creation) are not part of the message."""
    message = str(translate_failure("`uv sync --locked`", 1, OFFLINE))
    assert "Creating virtual environment" not in message
    assert "Network connectivity is disabled" in message


def test_uv_override_pointing_nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$PYTEST_UVBUILD_UV at a missing file is an error that says to fix or unset it."""
    monkeypatch.setenv("PYTEST_UVBUILD_UV", str(tmp_path / "uv"))
    with pytest.raises(UvNotFoundError, match="unset PYTEST_UVBUILD_UV"):
        find_uv()


def test_default_uv_is_the_packaged_binary() -> None:
    """Without an override, uv comes from the `uv` PyPI package, as uv.find_uv_bin() says."""
    assert find_uv() == toys.UV


def test_broken_uv_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A uv that exits non-zero on --version is reported as not running, with the fix."""
    broken = tmp_path / "uv"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PYTEST_UVBUILD_UV", str(broken))
    with pytest.raises(UvNotFoundError, match=r"does not run .*exited 1.*PYTEST_UVBUILD_UV"):
        Uv.locate().version()


def test_missing_working_directory_is_not_a_broken_uv(tmp_path: Path) -> None:
    """A uv command whose directory is gone names the directory, not the uv binary."""
    gone = tmp_path / "removed-project"
    with pytest.raises(ProjectNotFoundError, match=r"removed-project does not exist.*Fix:"):
        Uv(toys.UV).run(["--version"], what="`uv --version`", cwd=gone)


def test_version_is_probed_once_per_binary(tmp_path: Path) -> None:
    """uv's version comes from `uv --version` once, then from the probe record."""
    copy = tmp_path / "bin" / "uv"
    copy.parent.mkdir()
    shutil.copy2(toys.UV, copy)  # not the packaged binary: its version is asked
    uv = Uv(copy)
    version = uv.version(tmp_path)
    assert version.count(".") >= 2
    assert list((tmp_path / "probes").glob("uv-*.json"))
    assert uv.version(tmp_path) == version
    assert version == Uv(toys.UV).version()


def test_the_packaged_uv_version_is_read_without_running_uv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uv package's own binary gets its version from the package's metadata, not a process."""
    asked = subprocess.run(
        [str(toys.UV), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]

    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"ran {args[0]}")

    monkeypatch.setattr(subprocess, "run", no_process)
    assert Uv(toys.UV).version(tmp_path) == asked


def _fake_uv_package(site: Path, listed: str, size: int) -> None:
    (site / "uv").mkdir(parents=True)
    (site / "uv" / "__init__.py").write_text("")
    (site / "uv-9.9.9.dist-info").mkdir()
    (site / "uv-9.9.9.dist-info" / "RECORD").write_text(
        f"uv/__init__.py,,0\n{listed},sha256=x,{size}\n"
    )


@pytest.mark.parametrize(
    ("listed", "size", "expected"),
    [
        ("../bin/uv", 5, "9.9.9"),
        ("../bin/uv", 6, None),  # another binary at that path
        ("../bin/uvx", 5, None),  # the package lists some other file
    ],
)
def test_a_packaged_version_needs_the_listed_path_and_size(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listed: str,
    size: int,
    expected: str | None,
) -> None:
    """Metadata names the binary's version only if its RECORD lists that path with that size."""
    _fake_uv_package(tmp_path / "site", listed, size)
    binary = tmp_path / "bin" / "uv"
    binary.parent.mkdir()
    binary.write_bytes(b"12345")
    monkeypatch.delitem(sys.modules, "uv", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert packaged_version(binary) == expected


def test_a_uv_package_without_a_record_is_asked_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A uv dist-info that lacks its RECORD names no version: the binary is asked."""
    _fake_uv_package(tmp_path / "site", "../bin/uv", 5)
    (tmp_path / "site" / "uv-9.9.9.dist-info" / "RECORD").unlink()
    binary = tmp_path / "bin" / "uv"
    binary.parent.mkdir()
    binary.write_bytes(b"12345")
    monkeypatch.delitem(sys.modules, "uv", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert packaged_version(binary) is None


def test_run_raises_translated_errors(tmp_path: Path) -> None:
    """A failing uv command raises the translated error; check=False returns the process."""
    uv = Uv(toys.UV)
    with pytest.raises(UvCommandError, match=r"exit status 2.*\n.*No `pyproject.toml` found"):
        uv.run(["lock", "--check", "--offline"], what="`uv lock --check`", cwd=tmp_path)
    proc = uv.run(["lock", "--check", "--offline"], what="x", cwd=tmp_path, check=False)
    assert proc.returncode != 0


def test_python_download_failure_is_an_interpreter_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An opted-in download that uv cannot do (offline here) is one error carrying uv's cause."""
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "pythons"))
    with pytest.raises(InterpreterNotFoundError, match="uv could not download one") as info:
        Uv(toys.UV).install_python("3.99", offline=True)
    assert "install that Python yourself" in str(info.value)


def test_no_uv_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the uv package and without uv on PATH, the error lists both and says pip install."""
    monkeypatch.setitem(sys.modules, "uv", None)  # makes `import uv` raise ImportError
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UvNotFoundError) as info:
        find_uv()
    message = str(info.value)
    assert "the 'uv' Python package (not installed)" in message
    assert "'uv' on PATH" in message
    assert "Fix: `pip install uv`" in message


@pytest.mark.parametrize("columns", ["40", "80"])
def test_messages_wrapped_to_a_narrow_terminal_are_still_recognised(
    columns: str, make_project: MakeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uv wraps its errors to $COLUMNS (80 in many CIs); a stale lock is still named as such."""
    project = make_project()
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("toyalpha==1.0", "toyalpha==2.0"))
    monkeypatch.setenv("COLUMNS", columns)
    proc = Uv(toys.UV).run(
        ["export", "--locked", "--offline", "--quiet"], what="x", cwd=project, check=False
    )
    assert "--locked` was provided" not in proc.stderr  # uv did wrap it
    error = translate_failure("`uv export --locked`", proc.returncode, proc.stderr)
    assert isinstance(error, LockfileError)
    assert "uv.lock is out of date" in str(error)


@pytest.mark.parametrize(
    ("returncode", "stderr"),
    [
        (-25, "Using CPython 3.11.7\nCreating virtual environment at: /c/envs/k\n"),
        (
            2,
            "error: Failed to install: pygments\n"
            "  Caused by: No space left on device (os error 28)\n",
        ),
        (2, "error: failed to write to file `/c/x`: Disk quota exceeded (os error 122)\n"),
    ],
    ids=["sigxfsz", "enospc", "edquot"],
)
def test_a_full_disk_is_named_with_the_fix(returncode: int, stderr: str) -> None:
    """uv stopped by a full disk, a quota or `ulimit -f` (SIGXFSZ) gets a disk-full message."""
    message = str(translate_failure("`uv sync --locked`", returncode, stderr))
    assert "the disk is full or a file size limit stopped it" in message
    assert "Fix: free disk space" in message
    if returncode < 0:
        assert "killed by SIGXFSZ (file size limit exceeded)" in message


def test_a_uv_killed_by_a_signal_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A uv that dies of a signal is reported by the signal's name, not a negative status."""
    killed = tmp_path / "uv"
    killed.write_text("#!/bin/sh\nkill -TERM $$\n")
    killed.chmod(0o755)
    with pytest.raises(UvNotFoundError, match=r"`uv --version` was killed by SIGTERM\)"):
        Uv(killed).version()
    error = translate_failure("`uv sync --locked`", -9, "")
    assert "(uv killed by SIGKILL)" in str(error)


@pytest.fixture
def uv_lookups(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[list[Path], list[str]]:
    """A venv at tmp_path/venv, and a uv.find_uv_bin answering with the path put in the list.

    Returns (the answer to give, a log of lookups).
    """
    import uv as uv_package

    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "base"))
    answer: list[Path] = []
    lookups: list[str] = []

    def find_uv_bin() -> str:
        lookups.append("asked")
        return str(answer[0])

    monkeypatch.setattr(uv_package, "find_uv_bin", find_uv_bin)
    return answer, lookups


def test_a_venv_uv_is_remembered_while_the_binary_is_unchanged(
    uv_lookups: tuple[list[Path], list[str]], tmp_path: Path
) -> None:
    """The venv's uv is read back by its stat; a changed binary is looked up again."""
    answer, lookups = uv_lookups
    binary = tmp_path / "venv" / "bin" / "uv"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    answer.append(binary)
    probes = tmp_path / "cache"
    assert find_uv(probes) == binary
    assert find_uv(probes) == binary
    assert lookups == ["asked"]
    binary.write_text("#!/bin/sh\n# upgraded\n")
    assert find_uv(probes) == binary
    assert lookups == ["asked", "asked"]


def test_a_uv_outside_the_venv_is_looked_up_every_time(
    uv_lookups: tuple[list[Path], list[str]], tmp_path: Path
) -> None:
    """A uv found elsewhere (user scheme, PATH) is not remembered: a venv one may appear later."""
    answer, lookups = uv_lookups
    elsewhere = tmp_path / "home" / ".local" / "bin" / "uv"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_text("#!/bin/sh\n")
    answer.append(elsewhere)
    assert find_uv(tmp_path / "cache") == elsewhere
    assert find_uv(tmp_path / "cache") == elsewhere
    assert lookups == ["asked", "asked"]


def test_a_started_command_is_collected_by_wait(tmp_path: Path) -> None:
    """start() returns while uv runs; wait() gives its output or raises the translated error."""
    uv = Uv(toys.UV)
    version = uv.start(["--version"], what="`uv --version`").wait()
    assert version.stdout.startswith("uv ")
    failing = uv.start(["lock", "--check", "--offline"], what="`uv lock --check`", cwd=tmp_path)
    with pytest.raises(UvCommandError, match=r"No `pyproject\.toml` found"):
        failing.wait()


def test_a_local_only_command_gets_no_certificate_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """local_only drops SSL_CERT_FILE, SSL_CERT_DIR and UV_NATIVE_TLS; other variables stay."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "UV_NATIVE_TLS", "UV_CACHE_DIR"):
        monkeypatch.setenv(name, f"/somewhere/{name}")
    plain = uvcli._uv_environ(None)
    local = uvcli._uv_environ(None, local_only=True)
    assert {"SSL_CERT_FILE", "SSL_CERT_DIR", "UV_NATIVE_TLS"} <= set(plain)
    assert not {"SSL_CERT_FILE", "SSL_CERT_DIR", "UV_NATIVE_TLS"} & set(local)
    assert local["UV_CACHE_DIR"] == plain["UV_CACHE_DIR"] == "/somewhere/UV_CACHE_DIR"
