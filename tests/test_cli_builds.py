"""Acceptance tests of ``python -m pytest_uvbuild show|diff|verify`` on real build records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MakeProject

PASSING_TEST = "def test_ok():\n    pass\n"


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_uvbuild", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def make_record(pytester: pytest.Pytester, keep_as: Path) -> Path:
    """Run a --uv-build session and move its record to ``keep_as``."""
    pytester.runpytest_subprocess("--uv-build").assert_outcomes(passed=1)
    (record,) = (p for p in (pytester.path / "builds").iterdir() if not p.name.startswith("."))
    record.rename(keep_as)
    return keep_as


def test_show_and_diff(
    uv_pytester: pytest.Pytester, make_project: MakeProject, tmp_path: Path
) -> None:
    """show summarises a record; diff prints the upgrade, and --check exits 1 on a difference."""
    uv_pytester.makepyfile(test_ok=PASSING_TEST)
    old = make_record(uv_pytester, tmp_path / "old")
    make_project(uv_pytester.path, dependencies=("toyalpha==2.0",))
    new = make_record(uv_pytester, tmp_path / "new")

    shown = cli("show", old)
    assert shown.returncode == 0, shown.stderr
    meta = json.loads((old / "metadata.json").read_text())
    lines = shown.stdout.splitlines()
    assert lines[0] == f"build     {meta['id']} (complete)"
    assert "project   demo 0.1.0" in lines
    assert any(line.startswith("env key   " + meta["inputs"]["env_key"]) for line in lines)
    assert any("demo-0.1.0.tar.gz" in line and line.endswith("ok") for line in lines)
    as_json = cli("show", "--json", old)
    assert json.loads(as_json.stdout) == meta

    diff = cli("diff", old, new)
    assert diff.returncode == 0
    assert diff.stdout.splitlines() == [
        f"{old} -> {new}: 1 difference: 1 upgraded (1 major)",
        "  toyalpha: 1.0 -> 2.0 (upgrade, major)",
    ]
    assert cli("diff", old, new, "--check").returncode == 1
    same = cli("diff", old, old / "metadata.json", "--check")
    assert same.returncode == 0
    assert same.stdout.strip().endswith("no differences")

    missing = cli("show", tmp_path / "nope")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: ")
    assert "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    bad = cli("diff", garbage, new, "--check")
    assert bad.returncode == 2
    assert "is not JSON" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_verify(uv_pytester: pytest.Pytester, tmp_path: Path) -> None:
    """verify proves byte identity, and catches a modified file or a changed source tree."""
    uv_pytester.makepyfile(test_ok=PASSING_TEST)
    record = make_record(uv_pytester, tmp_path / "record")

    good = cli("verify", record)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "demo-0.1.0.tar.gz            identical" in good.stdout
    assert good.stdout.strip().endswith("verified: byte-identical")

    module = uv_pytester.path / "src" / "demo" / "__init__.py"
    original = module.read_text()
    module.write_text(original + "CHANGED = True\n")
    changed = cli("verify", record)
    assert changed.returncode == 1
    assert "demo-0.1.0.tar.gz            different" in changed.stdout
    assert "requirements.txt             identical" in changed.stdout
    module.write_text(original)

    (record / "audit.md").write_text("tampered\n")
    tampered = cli("verify", record)
    assert tampered.returncode == 1
    assert "audit.md                     MODIFIED" in tampered.stdout
    assert "INCOMPLETE or modified" in cli("show", record).stdout

    (uv_pytester.path / "uv.lock").write_text((uv_pytester.path / "uv.lock").read_text() + "\n")
    relocked = cli("verify", record)
    assert relocked.returncode == 2
    assert "is not the uv.lock this record was built from" in relocked.stderr


def test_show_names_a_repository_without_commits(
    uv_pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """show says "no commit yet" for a record made in a git repository with no commit."""
    subprocess.run(["git", "init", "-q", str(uv_pytester.path)], check=True)
    uv_pytester.makepyfile(test_ok=PASSING_TEST)
    record = make_record(uv_pytester, tmp_path / "builds")
    shown = cli("show", record)
    assert shown.returncode == 0, shown.stderr
    git_line = next(line for line in shown.stdout.splitlines() if line.startswith("git "))
    assert git_line.startswith("git       no commit yet (")
    assert "None" not in git_line
