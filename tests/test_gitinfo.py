"""Tests of gitinfo: commit, branch, dirty flag, diff digest and redacted remote URL."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from pytest_uvbuild.gitinfo import GitQuery, git_info, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:token@host/x.git", "https://host/x.git"),
        ("https://ghp_secret123@github.com/o/r.git", "https://github.com/o/r.git"),
        ("https://x-access-token:s3cr3t@github.com:8443/o/r", "https://github.com:8443/o/r"),
        ("http://user:pw@[::1]:8080/r.git", "http://[::1]:8080/r.git"),
        ("https://host/r.git?token=abc#frag", "https://host/r.git"),
        ("ssh://git:hunter2@host/x.git", "ssh://git@host/x.git"),
        ("ssh://git@host/x.git", "ssh://git@host/x.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("/srv/git/r.git", "/srv/git/r.git"),
        ("file:///srv/git/r.git", "file:///srv/git/r.git"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """Credentials, query strings and fragments are removed; ssh user names and paths stay."""
    assert redact_url(url) == expected


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    out = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    )
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit on branch ``main`` and a credentialed remote."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (root / "a.txt").write_text("one\n")
    _git(root, "add", "a.txt")
    _git(root, "commit", "-q", "-m", "first")
    _git(root, "remote", "add", "origin", "https://user:tok-9f8e7d@example.com/o/r.git")
    return root


def test_clean_checkout(repo: Path) -> None:
    """A clean checkout reports its commit and branch, not dirty, and a redacted remote."""
    info = git_info(repo)
    assert info == {
        "commit": _git(repo, "rev-parse", "HEAD"),
        "branch": "main",
        "dirty": False,
        "diff_sha256": None,
        "remote": "origin",
        "remote_url": "https://example.com/o/r.git",
    }


def test_dirty_checkout_digest(repo: Path) -> None:
    """Uncommitted edits make the checkout dirty; the digest follows the content, not the text."""
    (repo / "a.txt").write_text("two\n")
    first = git_info(repo)
    assert first is not None
    assert first["dirty"] is True
    assert len(first["diff_sha256"]) == 64
    (repo / "a.txt").write_text("three\n")
    second = git_info(repo)
    assert second is not None
    assert second["diff_sha256"] != first["diff_sha256"]
    (repo / "new.txt").write_text("untracked\n")
    third = git_info(repo)
    assert third is not None
    assert third["diff_sha256"] != second["diff_sha256"]
    assert "three" not in str(third)


def test_detached_head_and_subdirectory(repo: Path) -> None:
    """A detached HEAD has no branch; a subdirectory describes the enclosing checkout."""
    _git(repo, "checkout", "-q", "--detach")
    (repo / "sub").mkdir()
    info = git_info(repo / "sub")
    assert info is not None
    assert info["branch"] is None
    assert info["commit"] == _git(repo, "rev-parse", "HEAD")


def test_a_project_in_a_subdirectory_describes_its_whole_checkout(repo: Path) -> None:
    """Below the top of a checkout, dirty and the digest cover the whole checkout's changes.

    git names changed paths from the top of the checkout, so an untracked
    file inside the project is read from there; a change beside the project
    counts even where the user's ``diff.relative`` would hide it from a diff
    run in the project.
    """
    project = repo / "proj"
    (project / "src").mkdir(parents=True)
    (project / "src" / "mod.py").write_text("x = 1\n")
    _git(repo, "add", "proj")
    _git(repo, "commit", "-q", "-m", "project")
    _git(repo, "config", "diff.relative", "true")
    clean = git_info(project)
    assert clean is not None
    assert (clean["dirty"], clean["diff_sha256"]) == (False, None)

    (repo / "a.txt").write_text("changed beside the project\n")
    beside = git_info(project)
    assert beside is not None
    assert beside["dirty"] is True
    (repo / "a.txt").write_text("changed again beside the project\n")
    beside_again = git_info(project)
    assert beside_again is not None
    assert beside_again["diff_sha256"] != beside["diff_sha256"]

    (project / "src" / "new.py").write_text("y = 1\n")
    untracked = git_info(project)
    assert untracked is not None
    assert untracked["diff_sha256"] != beside_again["diff_sha256"]
    (project / "src" / "new.py").write_text("y = 2\n")
    untracked_again = git_info(project)
    assert untracked_again is not None
    assert untracked_again["diff_sha256"] != untracked["diff_sha256"]
    assert untracked_again == git_info(repo)


def test_outside_a_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside any git checkout the answer is None."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    assert git_info(lonely) is None


def test_a_query_started_early_answers_later_or_is_cancelled(repo: Path) -> None:
    """GitQuery runs git in the background: its result is git_info's; a cancelled one gives None."""
    early = GitQuery(repo, background=True)
    early.started()
    assert "pytest-uvbuild-git" not in [t.name for t in threading.enumerate()]
    assert early.result() == git_info(repo)
    cancelled = GitQuery(repo, background=True)
    cancelled.cancel()
    assert cancelled.result() is None


def test_outside_a_checkout_no_git_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a .git at or above the project, the answer is None and no process is started."""
    started: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    assert GitQuery(tmp_path, background=True).result() is None
    assert started == []
