"""Unit tests of the audit pieces: the lock graph walk, drift, host, baseline and its errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_uvbuild.audit import (
    InstalledDist,
    audit_markdown,
    compute_drift,
    compute_host_differences,
    lock_packages,
    read_license,
    scan_installed,
    verdict,
)
from pytest_uvbuild.baseline import BaselineError, baseline_diff, change_kind, load_baseline
from pytest_uvbuild.lockgraph import LockGraph, marker_environment, source_label

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK = """
version = 1
revision = 3
requires-python = ">=3.10"

[[package]]
name = "app"
version = "0.1.0"
source = { editable = "." }
dependencies = [
    { name = "alpha" },
    { name = "winonly", marker = "sys_platform == 'win32'" },
]
[package.optional-dependencies]
fast = [{ name = "beta", extra = ["speed"] }]
[package.dev-dependencies]
dev = [{ name = "pytest" }]

[[package]]
name = "alpha"
version = "1.2.0"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.example/alpha-1.2.0.tar.gz", hash = "sha256:aa11", size = 1 }
wheels = [{ url = "https://files.example/alpha-1.2.0-py3-none-any.whl", hash = "sha256:bb22" }]

[[package]]
name = "beta"
version = "2.0"
source = { git = "https://user:pw@example.com/beta.git?rev=v2#0123abcd" }
dependencies = [{ name = "alpha" }]
[package.optional-dependencies]
speed = [{ name = "gamma", marker = "python_full_version < '3.9'" }]

[[package]]
name = "gamma"
version = "3.0"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "pytest"
version = "9.0"
source = { registry = "https://pypi.org/simple" }
dependencies = [{ name = "alpha" }]

[[package]]
name = "winonly"
version = "1.0"
source = { registry = "https://pypi.org/simple" }
"""


@pytest.fixture
def graph() -> LockGraph:
    """The lock graph of LOCK."""
    return LockGraph.from_lock(tomllib.loads(LOCK))


def _env() -> dict[str, str]:
    return marker_environment(implementation="cpython", version="3.11.7", machine="x86_64")


def _rows(graph: LockGraph, **kwargs: Any) -> dict[str, dict[str, Any]]:
    options: dict[str, Any] = {
        "project": "app",
        "groups": (),
        "extras": (),
        "only_groups": False,
        "environment": _env(),
        "install_mode": "wheel",
        "licenses": {"alpha": ("MIT", "expression")},
    }
    options.update(kwargs)
    return {r["name"]: r for r in lock_packages(graph, **options)}


def test_selection_walk(graph: LockGraph) -> None:
    """Project deps are direct, extras pull their own extras, and 'via' names the parents."""
    rows = _rows(graph, extras=("fast",), groups=("dev",))
    assert set(rows) == {"app", "alpha", "beta", "gamma", "pytest", "winonly"}
    assert rows["alpha"]["direct"] is True
    assert rows["alpha"]["via"] == ["app", "beta", "pytest"]
    assert rows["beta"]["via"] == ["app[fast]"]
    assert rows["pytest"]["via"] == ["app (dev)"]
    assert rows["gamma"]["direct"] is False
    assert rows["gamma"]["via"] == ["beta"]
    assert rows["alpha"]["license"] == "MIT"
    assert rows["alpha"]["hashes"] == ["sha256:aa11", "sha256:bb22"]
    assert rows["app"]["root"] is True


def test_markers_decide_expected(graph: LockGraph) -> None:
    """A package behind a false marker is in the selection but not expected in the env."""
    rows = _rows(graph, extras=("fast",))
    assert rows["winonly"]["expected"] is (sys.platform == "win32")
    assert rows["gamma"]["expected"] is False  # python_full_version < '3.9'
    assert rows["beta"]["expected"] is True


def test_only_groups_leaves_out_the_project(graph: LockGraph) -> None:
    """--only-group selects the group's packages without the project or its deps' extras."""
    rows = _rows(graph, groups=("dev",), only_groups=True)
    assert set(rows) == {"pytest", "alpha"}
    assert rows["alpha"]["direct"] is False


def test_source_mode_does_not_expect_local_packages(graph: LockGraph) -> None:
    """In source mode the project is an import root, so it is neither required nor extra."""
    assert _rows(graph, install_mode="source")["app"]["expected"] is None
    assert _rows(graph, install_mode="wheel")["app"]["expected"] is True


def test_project_missing_from_the_lock(graph: LockGraph) -> None:
    """Without the project in the lock, every package is listed and none is required."""
    rows = _rows(graph, project="workspace-root")
    assert len(rows) == 6
    assert {r["expected"] for r in rows.values()} == {None}
    installed = {"alpha": _dist("alpha", "1.2.0"), "stray": _dist("stray", "1.0")}
    assert [d["name"] for d in compute_drift(list(rows.values()), installed)] == ["stray"]


def test_source_label_strips_credentials() -> None:
    """Lock sources become one string, without credentials in URLs."""
    assert source_label({"git": "https://user:pw@example.com/b.git?rev=v1#0123"}) == (
        "git+https://example.com/b.git?rev=v1#0123"
    )
    assert source_label({"registry": "https://pypi.org/simple"}) == (
        "registry+https://pypi.org/simple"
    )
    assert source_label({"editable": "."}) == "editable+."


def _dist(name: str, version: str, kind: str = "registry", commit: str | None = None) -> Any:
    return InstalledDist(name, version, kind, commit, Path("/nowhere"))


def test_drift_kinds(graph: LockGraph) -> None:
    """Missing, extra, other version and other source each become one drift row."""
    rows = list(_rows(graph, groups=("dev",)).values())
    installed = {
        "app": _dist("app", "0.1.0", "url"),
        "alpha": _dist("alpha", "1.2.0", "url"),  # hand-installed from a file
        "toygamma": _dist("toygamma", "1.0"),
    }
    drift = compute_drift(rows, installed)
    assert drift == [
        {
            "name": "alpha",
            "problem": "source",
            "lock": "1.2.0 from registry+https://pypi.org/simple",
            "env": "1.2.0 from url",
        },
        {"name": "pytest", "problem": "missing", "lock": "9.0", "env": None},
        {"name": "toygamma", "problem": "extra", "lock": None, "env": "1.0"},
    ]
    installed = {
        "app": _dist("app", "0.1.0"),
        "alpha": _dist("alpha", "1.1.0"),
        "pytest": _dist("pytest", "9.0.0"),
    }
    assert compute_drift(rows, installed) == [
        {"name": "alpha", "problem": "version", "lock": "1.2.0", "env": "1.1.0"}
    ]


def test_drift_git_commit(graph: LockGraph) -> None:
    """A git package installed from another commit is drift; the locked commit is not."""
    rows = list(_rows(graph, extras=("fast",)).values())
    base = {"app": _dist("app", "0.1.0"), "alpha": _dist("alpha", "1.2.0")}
    good = {**base, "beta": _dist("beta", "2.0", "git", "0123abcd")}
    bad = {**base, "beta": _dist("beta", "2.0", "git", "ffff0000")}
    assert compute_drift(rows, good) == []
    assert [d["problem"] for d in compute_drift(rows, bad)] == ["source"]


def test_host_differences(graph: LockGraph) -> None:
    """The host is compared with what the env holds: other versions and missing packages."""
    rows = list(_rows(graph, groups=("dev",)).values())
    host = {"alpha": "1.3.0"}
    assert compute_host_differences(rows, host) == [
        {"name": "alpha", "problem": "version", "lock": "1.2.0", "host": "1.3.0"},
        {"name": "pytest", "problem": "missing", "lock": "9.0", "host": None},
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("1.0", "2.0", ("upgrade", "major")),
        ("1.2.3", "1.3.0", ("upgrade", "minor")),
        ("1.2.3", "1.2.4", ("upgrade", "patch")),
        ("1.2.4", "1.2.3", ("downgrade", "patch")),
        ("2.0rc1", "2.0", ("upgrade", "pre-release")),
        ("2.0", "2.0.post1", ("upgrade", "other")),
        ("1!1.0", "1.0", ("downgrade", "major")),
        ("banana", "2.0", ("changed", "other")),
    ],
)
def test_change_kind(old: str, new: str, expected: tuple[str, str]) -> None:
    """Version changes are classified by direction and by the first differing component."""
    assert change_kind(old, new) == expected


def _audit_json(rows: list[dict[str, Any]], python_version: str = "3.11.7") -> dict[str, Any]:
    python = {"implementation": "cpython", "version": python_version, "platform": "linux-x86_64"}
    return {
        "schema": "pytest-uvbuild/audit",
        "build_id": "b" * 16,
        "project": {"name": "app", "version": "0.1.0"},
        "env": {
            "key": "k",
            "python": python,
            "install_mode": "wheel",
            "groups": [],
            "extras": [],
        },
        "host": {"python": python},
        "packages": rows,
        "drift": [],
        "host_differences": [],
        "baseline": None,
        "verdict": verdict(drift=[], baseline=None, gate=False, verify=None),
    }


def test_baseline_diff(graph: LockGraph, tmp_path: Path) -> None:
    """Added, removed, upgraded, re-sourced packages and a new Python are each reported."""
    before = list(_rows(graph, groups=("dev",)).values())
    (tmp_path / "audit.json").write_text(json.dumps(_audit_json(before, "3.10.1")))
    baseline = load_baseline(tmp_path)
    now = [dict(r) for r in _rows(graph, extras=("fast",)).values()]
    for row in now:
        if row["name"] == "alpha":
            row["version"] = "2.0.0"
            row["source"] = "registry+https://mirror.example/simple"
    python = {"implementation": "cpython", "version": "3.11.7", "platform": "linux-x86_64"}
    diff = baseline_diff(baseline, now, python)
    assert [a["name"] for a in diff["added"]] == ["beta", "gamma"]
    assert [r["name"] for r in diff["removed"]] == ["pytest"]
    assert diff["changed"] == [
        {"name": "alpha", "from": "1.2.0", "to": "2.0.0", "direction": "upgrade", "kind": "major"}
    ]
    assert diff["source_changed"][0]["to"] == "registry+https://mirror.example/simple"
    assert diff["python"] == {"from": "cpython 3.10.1", "to": "cpython 3.11.7"}
    assert diff["platform"] is None
    assert diff["differences"] == 6
    ruling = verdict(drift=[], baseline=diff, gate=True, verify=None)
    assert ruling["failed"] is True
    assert "--uv-gate" in ruling["reasons"][0]
    assert verdict(drift=[], baseline=diff, gate=False, verify=None)["failed"] is False


def test_markdown_has_tables(graph: LockGraph) -> None:
    """audit.md has the verdict, a drift table and the package table with via and license."""
    rows = list(_rows(graph, groups=("dev",)).values())
    audit = _audit_json(rows)
    audit["drift"] = [{"name": "toygamma", "problem": "extra", "lock": None, "env": "1.0"}]
    audit["verdict"] = verdict(drift=audit["drift"], baseline=None, gate=False, verify=None)
    text = audit_markdown(audit)
    assert "## Verdict: FAILED" in text
    assert "| toygamma | extra | — | 1.0 |" in text
    assert "| alpha | 1.2.0 | direct | app, pytest | MIT |" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("not json at all", "is not JSON"),
        ('{"schema": "something-else"}', "is not a pytest-uvbuild audit.json or metadata.json"),
        ('{"schema": "pytest-uvbuild/audit"}', "lacks"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_baselines(tmp_path: Path, content: str | None, message: str) -> None:
    """A missing or garbage baseline gives one error that says what it should be."""
    path = tmp_path / "baseline.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BaselineError, match=message) as info:
        load_baseline(path)
    assert "Fix:" in str(info.value) or "not a" in str(info.value)


def test_baseline_dir_without_record(tmp_path: Path) -> None:
    """A directory that holds no record files is refused with one message."""
    with pytest.raises(BaselineError, match=r"without audit\.json or metadata\.json"):
        load_baseline(tmp_path)


def test_scan_installed_and_license(tmp_path: Path) -> None:
    """dist-info names give name and version; direct_url.json gives the source kind."""
    site = tmp_path / "site"
    plain = site / "Some_Pkg-1.0.dist-info"
    plain.mkdir(parents=True)
    (plain / "METADATA").write_text(
        "Metadata-Version: 2.4\nName: Some-Pkg\nVersion: 1.0\nLicense-Expression: MIT\n"
    )
    local = site / "other-2.0.dist-info"
    local.mkdir()
    (local / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: other\nVersion: 2.0\n"
        "Classifier: License :: OSI Approved :: BSD License\n"
    )
    (local / "direct_url.json").write_text('{"url": "file:///w/other.whl", "archive_info": {}}')
    found = scan_installed([site, tmp_path / "missing"])
    assert sorted(found) == ["other", "some-pkg"]
    assert found["some-pkg"].version == "1.0"
    assert found["some-pkg"].source_kind == "registry"
    assert found["other"].source_kind == "url"
    assert read_license(plain) == ("MIT", "expression")
    assert read_license(local) == ("BSD License", "name")
