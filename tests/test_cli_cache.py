"""Tests of ``python -m pytest_uvbuild key`` and ``cache dir|list|prune``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import toys

from conftest import MakeProject
from pytest_uvbuild.cli import main
from pytest_uvbuild.envcache import RECORD_NAME, EnvCache, UvEnv
from pytest_uvbuild.request import EnvRequest


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_uvbuild", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def _key(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["key", "--json", *args]) == 0
    data: dict[str, object] = json.loads(capsys.readouterr().out)
    return data


def test_key_is_printed_for_ci_caches(make_project: MakeProject, tmp_path: Path) -> None:
    """`key` prints the same 16-hex-digit key the plugin uses for the project."""
    root = make_project()
    proc = _cli("key", "--project", str(root), "--uv-cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.strip()
    assert len(key) == 16
    _, _, _, plugin_key, _ = EnvCache(tmp_path / "c").resolve(EnvRequest(project_dir=root), root)
    assert key == plugin_key


def test_key_changes_with_each_input(
    make_project: MakeProject,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pyenv_python: Callable[[str], Path],
) -> None:
    """Lock bytes, interpreter, groups, extras, install mode and uv version each change the key."""
    pyenv_python("3.12")
    root = make_project(groups={"lint": ["toygamma"]}, extras={"fast": ["toybeta"]})
    monkeypatch.chdir(root)
    base = _key(capsys)
    inputs = base["inputs"]
    assert isinstance(inputs, dict)
    assert set(inputs) == {"format", "lock_sha256", "python", "selection", "install_mode", "uv"}
    variants = {
        "python": _key(capsys, "--python", "3.12"),
        "groups": _key(capsys, "--group", "lint"),
        "extras": _key(capsys, "--extra", "fast"),
        "only-group": _key(capsys, "--only-group", "lint"),
        "no-default-groups": _key(capsys, "--no-default-groups"),
        "install mode": _key(capsys, "--install-project", "source"),
    }
    fake_uv = tmp_path / "uv"
    fake_uv.write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && echo "uv 9.9.9" && exit 0\nexec "{toys.UV}" "$@"\n'
    )
    fake_uv.chmod(0o755)
    monkeypatch.setenv("PYTEST_UVBUILD_UV", str(fake_uv))
    variants["uv version"] = _key(capsys)
    monkeypatch.delenv("PYTEST_UVBUILD_UV")
    make_project(
        root,
        dependencies=["toyalpha==2.0"],
        groups={"lint": ["toygamma"]},
        extras={"fast": ["toybeta"]},
    )
    variants["lock bytes"] = _key(capsys)
    keys = {name: v["key"] for name, v in variants.items()}
    assert base["key"] not in keys.values()
    assert len(set(keys.values())) == len(keys)
    python = variants["python"]["inputs"]["python"]  # type: ignore[index]
    assert python["version"].startswith("3.12.")
    assert variants["uv version"]["inputs"]["uv"] == "9.9.9"  # type: ignore[index]


def test_cache_dir_follows_option_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cache dir` prints --uv-cache-dir (before or after the sub-command), else the env var."""
    for argv in (
        ["--uv-cache-dir", str(tmp_path / "a"), "cache", "dir"],
        ["cache", "--uv-cache-dir", str(tmp_path / "a"), "dir"],
        ["cache", "dir", "--uv-cache-dir", str(tmp_path / "a")],
    ):
        assert main(argv) == 0
        assert capsys.readouterr().out.strip() == str(tmp_path / "a")
    monkeypatch.setenv("PYTEST_UVBUILD_CACHE_DIR", str(tmp_path / "b"))
    assert main(["cache", "dir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "b")
    monkeypatch.delenv("PYTEST_UVBUILD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["cache", "dir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "xdg" / "pytest-uvbuild")


@pytest.fixture
def cached_env(make_project: MakeProject, tmp_path: Path) -> tuple[EnvCache, UvEnv]:
    """A cache with one env in it, whose lease is already released."""
    root = make_project()
    cache = EnvCache(tmp_path / "cache")
    env = cache.materialise(EnvRequest(project_dir=root, offline=True), start_dir=root)
    env.release()
    return cache, env


def test_cache_list_shows_each_env(cached_env: tuple[EnvCache, UvEnv]) -> None:
    """`cache list` prints key, python, size, last use and project; --json has every field."""
    cache, env = cached_env
    proc = _cli("cache", "list", "--uv-cache-dir", str(cache.root))
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split() == ["KEY", "PYTHON", "SIZE", "LAST", "USED", "PROJECT"]
    assert row.startswith(env.key)
    assert str(env.project.root) in row
    assert "MiB" in row
    proc = _cli("cache", "list", "--json", "--uv-cache-dir", str(cache.root))
    (entry,) = json.loads(proc.stdout)
    assert entry["key"] == env.key
    assert entry["complete"] is True
    assert entry["in_use"] is False
    assert entry["size"] > 0
    assert str(env.interpreter.path) in entry["python"]


def test_cache_list_of_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty or missing cache lists nothing and says so."""
    assert main(["cache", "list", "--uv-cache-dir", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out.startswith("no envs cached in ")
    assert main(["cache", "list", "--json", "--uv-cache-dir", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cache_prune_never_removes_an_env_in_use(
    cached_env: tuple[EnvCache, UvEnv], capsys: pytest.CaptureFixture[str]
) -> None:
    """Prune keeps recent envs with --older-than, skips leased ones with --all, then removes."""
    cache, env = cached_env
    root = env.project.root
    assert main(["cache", "prune", "--older-than", "30d", "--uv-cache-dir", str(cache.root)]) == 0
    assert capsys.readouterr().out.strip() == "0 removed, 0 in use"
    held = cache.materialise(EnvRequest(project_dir=root, offline=True), start_dir=root)
    try:
        assert main(["cache", "prune", "--all", "--uv-cache-dir", str(cache.root)]) == 0
        out = capsys.readouterr().out
        assert f"kept {env.key}: in use by a running session" in out
        assert env.path.is_dir()
    finally:
        held.release()
    old = time.time() - 31 * 86400
    os.utime(env.path / RECORD_NAME, (old, old))
    assert main(["cache", "prune", "--older-than", "30d", "--uv-cache-dir", str(cache.root)]) == 0
    assert f"removed {env.key}" in capsys.readouterr().out
    assert not env.path.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cache", "prune"], "error: cache prune needs --older-than AGE"),
        (["cache", "prune", "--older-than", "soon"], "error: cache prune --older-than: 'soon'"),
        (["cache", "shrink"], "error: argument cache_command: invalid choice: 'shrink'"),
        (["key", "--install-project", "egg"], "error: argument --install-project: invalid choice"),
        (["key", "--project", "/no/such/dir"], "error: Project directory /no/such/dir does not"),
        (["key", "--group", "nope"], "error: Unknown dependency group(s) nope"),
    ],
    ids=["prune-no-age", "prune-bad-age", "unknown-command", "bad-mode", "no-project", "bad-group"],
)
def test_bad_input_is_one_error_line_and_status_2(
    argv: list[str],
    message: str,
    make_project: MakeProject,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each bad command line prints one error line on stderr and exits with status 2."""
    monkeypatch.chdir(make_project())
    try:
        status = main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]


@pytest.mark.parametrize("argv", [["prune", "--all"], ["verify"]], ids=["prune", "verify"])
def test_a_read_only_cache_is_one_error_line_for_prune_and_verify(
    argv: list[str],
    cached_env: tuple[EnvCache, UvEnv],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`cache prune` and `cache verify` on a read-only cache print one error naming the fix."""
    import errno

    from pytest_uvbuild import envcache

    cache, env = cached_env

    def read_only(path: Path, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    # Root ignores file modes: make the lock files unopenable as a read-only mount would.
    monkeypatch.setattr(envcache, "hold_lock", read_only)
    assert main(["cache", *argv, "--uv-cache-dir", str(cache.root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: The cache dir {cache.root} is not writable (Read-only")
    assert "Fix: pass --uv-cache-dir=DIR" in line
    assert env.path.is_dir()
