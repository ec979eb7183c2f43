"""Acceptance tests of the build record, run as a user would: ``pytest --uv-build``."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from conftest import MakeProject, run_uv

RECORD_FILES = {
    "SHA256SUMS",
    "audit.json",
    "audit.md",
    "demo-0.1.0.tar.gz",
    "metadata.json",
    "requirements.txt",
    "sbom.cdx.json",
    "uv.lock",
}
DETERMINISTIC = ("requirements.txt", "uv.lock", "demo-0.1.0.tar.gz", "sbom.cdx.json")
#: What pytester leaves in a project (its --basetemp, captured output) that git must ignore.
GIT_DEBRIS = ".pytest_cache/\n__pycache__/\nrunpytest-*\nstdout\nstderr\n"
SECRETS = {"PYTEST_UVBUILD_TEST_TOKEN": "tok-5f1e2d3c4b", "GITHUB_TOKEN": "ghp_0a9b8c7d6e5f"}

PASSING_TEST = """
def test_env(uv_env):
    assert uv_env.packages["toyalpha"]
"""


def only_record(builds: Path) -> Path:
    """The one record directory under ``builds``."""
    records = [p for p in builds.iterdir() if not p.name.startswith(".")]
    assert len(records) == 1, records
    return records[0]


def load(record: Path, name: str) -> Any:
    """Parse one JSON file of a record."""
    return json.loads((record / name).read_text())


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(record: Path) -> dict[str, str]:
    """A record's SHA256SUMS as file name to hex digest."""
    lines = (record / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


def sdist_members(sdist: Path) -> dict[str, bytes]:
    """Regular files of an sdist, by name."""
    with tarfile.open(sdist) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env.update(GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    )
    return proc.stdout.strip()


def test_record_files_and_fields(
    uv_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One session writes every file with every field, in a git checkout, without secrets."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    root = uv_pytester.path
    (root / ".gitignore").write_text(GIT_DEBRIS)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    token = SECRETS["PYTEST_UVBUILD_TEST_TOKEN"]
    git(root, "remote", "add", "origin", f"https://ci-bot:{token}@git.example.com/o/demo.git")
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    result = uv_pytester.runpytest_subprocess("--uv-build")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    record = only_record(root / "builds")
    result.stdout.fnmatch_lines(
        [
            "*= uv-build record =*",
            "key * (env *)",
            f"build {record.name} written: {record} in * ms",
            "drift: none (the env matches uv.lock)",
            "baseline: none given",
            "host: * package(s) differ from uv.lock (informational)",
        ]
    )
    assert {p.name for p in record.iterdir()} == RECORD_FILES
    assert (root / "builds" / ".gitignore").read_text() == "*\n"

    # SHA256SUMS lists every other file, in `sha256sum -c` format.
    sums = manifest(record)
    assert set(sums) == RECORD_FILES - {"SHA256SUMS"}
    assert all(sums[name] == sha256(record / name) for name in sums)

    meta = load(record, "metadata.json")
    assert meta["schema"] == "pytest-uvbuild/build-record"
    assert meta["schema_version"] == 1
    assert meta["id"] == record.name
    inputs = meta["inputs"]
    assert set(inputs) == {
        "plugin_version",
        "record_format",
        "uv_version",
        "python",
        "env_key",
        "lock_sha256",
        "pyproject_sha256",
        "source_sha256",
        "source_files",
        "groups",
        "extras",
        "only_groups",
        "install_mode",
        "source_date_epoch",
    }
    assert inputs["lock_sha256"] == sha256(root / "uv.lock")
    assert inputs["pyproject_sha256"] == sha256(root / "pyproject.toml")
    assert inputs["groups"] == ["dev"]
    assert inputs["extras"] == []
    assert inputs["install_mode"] == "wheel"
    assert inputs["source_date_epoch"] is None
    assert inputs["source_files"] == 2  # pyproject.toml and src/demo/__init__.py
    python = inputs["python"]
    assert python["implementation"] == "cpython"
    assert len(python["version_info"]) == 5
    assert python["platform"]
    result.stdout.fnmatch_lines([f"key {inputs['env_key']} (env *)"])
    assert meta["git"] == {
        "commit": git(root, "rev-parse", "HEAD"),
        "branch": "main",
        "dirty": False,
        "diff_sha256": None,
        "remote": "origin",
        "remote_url": "https://git.example.com/o/demo.git",
    }
    run = meta["run"]
    assert run["exit_status"] == 0
    assert run["tests_collected"] == 1
    assert run["duration_seconds"] >= 0
    assert run["started"] <= run["finished"]
    assert run["hermetic"] == {
        "passed": 0,
        "failed": 0,
        "skipped": 0,
        "errors": 0,
        "xfailed": 0,
        "xpassed": 0,
        "failing": [],
    }
    assert run["record"] == "written"
    assert meta["verify"] is None
    assert {p["name"] for p in meta["packages"]} >= {"toyalpha", "pytest", "pluggy"}

    # requirements.txt: the selection, from `uv export`, without the project.
    requirements = (record / "requirements.txt").read_text()
    assert "toyalpha==1.0" in requirements
    assert "pytest==" in requirements
    assert "demo" not in requirements.replace("# via demo", "")
    assert (record / "uv.lock").read_bytes() == (root / "uv.lock").read_bytes()
    members = sdist_members(record / "demo-0.1.0.tar.gz")
    assert members["demo-0.1.0/requirements.txt"] == (record / "requirements.txt").read_bytes()
    assert members["demo-0.1.0/uv.lock"] == (root / "uv.lock").read_bytes()
    assert "demo-0.1.0/src/demo/__init__.py" in members

    audit = load(record, "audit.json")
    assert audit["drift"] == []
    rows = {p["name"]: p for p in audit["packages"]}
    assert rows["toyalpha"]["direct"] is True
    assert rows["toyalpha"]["via"] == ["demo"]
    assert rows["pluggy"]["direct"] is False
    assert rows["pluggy"]["via"] == ["pytest"]
    assert rows["pytest"]["via"] == ["demo (dev)"]
    assert rows["pytest"]["license"] == "MIT"
    # The host (this dev venv) lacks the toy package that the lock has.
    assert {"name": "toyalpha", "problem": "missing", "lock": "1.0", "host": None} in audit[
        "host_differences"
    ]
    assert audit["verdict"] == {
        "gate": False,
        "drift": 0,
        "baseline_differences": None,
        "failed": False,
        "reasons": [],
    }
    markdown = (record / "audit.md").read_text()
    assert markdown.startswith(f"# uv-build audit: demo — build {record.name}")
    assert "| toyalpha | 1.0 | direct | demo |" in markdown

    sbom = load(record, "sbom.cdx.json")
    validator = JsonStrictValidator(SchemaVersion.from_version(sbom["specVersion"]))
    assert validator.validate_str((record / "sbom.cdx.json").read_text()) is None
    names = {c["name"] for c in sbom["components"]}
    assert names == {p["name"] for p in meta["packages"]}

    # The GitHub step summary gets the Markdown report appended.
    assert summary.read_text() == "earlier step\n" + markdown.rstrip("\n") + "\n\n"

    # No environment value (nor the token of the remote URL) reaches any file.
    blobs = {p.name: p.read_bytes() for p in record.iterdir()}
    blobs.update(members)
    blobs["sdist.tar"] = gzip.decompress((record / "demo-0.1.0.tar.gz").read_bytes())
    for name, data in blobs.items():
        for secret in SECRETS.values():
            assert secret.encode() not in data, (name, secret)


def test_warm_session_reuses_and_crashes_rebuild(uv_pytester: pytest.Pytester) -> None:
    """A warm session reuses its id without filelock; a half-written record is rewritten."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    uv_pytester.runpytest_subprocess("--uv-build").assert_outcomes(passed=1)
    record = only_record(uv_pytester.path / "builds")
    before = {n: (record / n).read_bytes() for n in DETERMINISTIC}
    unchanged = [*DETERMINISTIC, "audit.json", "audit.md"]
    stamps = {n: (record / n).stat().st_mtime_ns for n in unchanged}
    metadata = (record / "metadata.json").read_bytes()

    # Whether the warm session imported filelock (its record lock is a plain flock).
    uv_pytester.makeconftest(
        """
        import sys

        def pytest_unconfigure(config):
            print("filelock imported:", "filelock" in sys.modules)
        """
    )
    warm = uv_pytester.runpytest_subprocess("--uv-build")
    warm.assert_outcomes(passed=1)
    warm.stdout.fnmatch_lines([f"build {record.name} reused: {record} in * ms"])
    warm.stdout.fnmatch_lines(["filelock imported: False"])
    assert {n: (record / n).stat().st_mtime_ns for n in unchanged} == stamps
    assert (record / "metadata.json").read_bytes() != metadata
    assert load(record, "metadata.json")["run"]["record"] == "reused"

    # A crash mid-write: no manifest, a truncated sdist, a stale staging dir.
    (record / "SHA256SUMS").unlink()
    (record / "demo-0.1.0.tar.gz").write_bytes(b"half")
    stale = record.parent / f".tmp-{record.name}-1-dead"
    stale.mkdir()
    again = uv_pytester.runpytest_subprocess("--uv-build")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines([f"build {record.name} written: *"])
    assert {n: (record / n).read_bytes() for n in DETERMINISTIC} == before
    assert not stale.exists()
    assert (record / "SHA256SUMS").is_file()


def test_a_changed_audit_is_rewritten_in_a_reused_record(uv_pytester: pytest.Pytester) -> None:
    """An audit that changes under the same id rewrites audit.json, audit.md and the sums."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    uv_pytester.runpytest_subprocess("--uv-build").assert_outcomes(passed=1)
    record = only_record(uv_pytester.path / "builds")
    assert load(record, "audit.json")["baseline"] is None

    # A baseline changes the audit, not the inputs that the id addresses.
    result = uv_pytester.runpytest_subprocess("--uv-build", f"--uv-baseline={record}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"build {record.name} reused: *", "baseline *: no differences"])
    audit = load(record, "audit.json")
    assert audit["baseline"]["baseline_id"] == record.name
    origin = audit["baseline"]["baseline"]
    assert f"Baseline: `{origin}` (build {record.name})" in (record / "audit.md").read_text()
    assert load(record, "metadata.json")["audit"]["baseline_differences"] == 0
    sums = manifest(record)
    assert {name: sha256(record / name) for name in sums} == sums


def test_same_id_and_bytes_from_two_cold_caches(
    uv_pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sessions with cold env and uv caches give the same id and identical files."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    records = []
    for name in ("one", "two"):
        monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / name / "uv-cache"))
        result = uv_pytester.runpytest_subprocess(
            "--uv-build",
            f"--uv-cache-dir={tmp_path / name / 'env-cache'}",
            f"--uv-build-dir={tmp_path / name / 'builds'}",
        )
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["key * (env miss)"])
        records.append(only_record(tmp_path / name / "builds"))
    first, second = records
    assert first.name == second.name
    for name in DETERMINISTIC:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert load(first, "metadata.json")["inputs"] == load(second, "metadata.json")["inputs"]


def test_hand_installed_package_is_drift(
    uv_pytester: pytest.Pytester, wheelhouse: Path, tmp_path: Path
) -> None:
    """A package installed into the env by hand fails the session with a drift table."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    cache = tmp_path / "private-cache"  # the env is tampered with: keep it private
    args = ("--uv-build", f"--uv-cache-dir={cache}")
    uv_pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    (env_dir,) = (cache / "envs").iterdir()
    wheel = next(wheelhouse.glob("toygamma-1.0-*.whl"))
    run_uv("pip", "install", "--offline", "--python", str(env_dir / "bin" / "python"), str(wheel))

    result = uv_pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "drift: 1 package(s) differ from uv.lock",
            "*! uv-build audit FAILED !*",
            "- the env differs from uv.lock in 1 package(s) (drift)*--uv-rebuild*",
            "  package   problem  uv.lock -> env",
            "  toygamma  extra    - -> 1.0",
        ]
    )
    audit = load(only_record(uv_pytester.path / "builds"), "audit.json")
    assert audit["drift"] == [{"name": "toygamma", "problem": "extra", "lock": None, "env": "1.0"}]
    assert "| toygamma | extra | — | 1.0 |" in audit_md(uv_pytester)


def audit_md(pytester: pytest.Pytester) -> str:
    """The audit.md of the project's only record."""
    return (only_record(pytester.path / "builds") / "audit.md").read_text()


def test_lock_bump_against_baseline_and_gate(
    uv_pytester: pytest.Pytester, make_project: MakeProject, tmp_path: Path
) -> None:
    """A lock bump is reported against the baseline, and fails the session only with --uv-gate."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    uv_pytester.runpytest_subprocess("--uv-build").assert_outcomes(passed=1)
    baseline = tmp_path / "baseline"
    only_record(uv_pytester.path / "builds").rename(baseline)

    make_project(uv_pytester.path, dependencies=("toyalpha==2.0",))
    report = uv_pytester.runpytest_subprocess("--uv-build", f"--uv-baseline={baseline}")
    report.assert_outcomes(passed=1)
    assert report.ret == 0
    report.stdout.fnmatch_lines(["baseline *: 1 difference: 1 upgraded (1 major)"])
    assert "audit FAILED" not in report.stdout.str()
    diff = load(only_record(uv_pytester.path / "builds"), "audit.json")["baseline"]
    assert diff["changed"] == [
        {"name": "toyalpha", "from": "1.0", "to": "2.0", "direction": "upgrade", "kind": "major"}
    ]

    gated = uv_pytester.runpytest_subprocess(
        "--uv-build", f"--uv-baseline={baseline / 'metadata.json'}", "--uv-gate"
    )
    gated.assert_outcomes(passed=1)
    assert gated.ret == pytest.ExitCode.TESTS_FAILED
    gated.stdout.fnmatch_lines(
        [
            "*! uv-build audit FAILED !*",
            "- --uv-gate: 1 difference: 1 upgraded (1 major) against baseline *metadata.json*",
            "  toyalpha: 1.0 -> 2.0 (upgrade, major)",
        ]
    )


def test_verify_option_records_the_proof(uv_pytester: pytest.Pytester) -> None:
    """--uv-verify rebuilds in a fresh place and records byte identity in metadata.json."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    result = uv_pytester.runpytest_subprocess("--uv-build", "--uv-verify")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["verify: identical bytes"])
    verify = load(only_record(uv_pytester.path / "builds"), "metadata.json")["verify"]
    assert verify == {
        "ok": True,
        "files": {
            "demo-0.1.0.tar.gz": "identical",
            "requirements.txt": "identical",
            "uv.lock": "identical",
        },
    }


def test_no_artifacts(uv_pytester: pytest.Pytester) -> None:
    """--uv-no-artifacts writes nothing but still audits the env."""
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    result = uv_pytester.runpytest_subprocess("--uv-build", "--uv-no-artifacts")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["build * not written (--uv-no-artifacts) in *", "drift: none*"])
    assert not (uv_pytester.path / "builds").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--uv-build", "--uv-build-dir=blocker"), "*blocker is a file, not a directory. Fix:*"),
        (("--uv-build", "--uv-baseline=missing"), "*Baseline *missing does not exist. Fix:*"),
        (("--uv-build", "--uv-baseline=blocker"), "*Baseline *blocker is not JSON*Fix:*"),
        (("--uv-gate",), "*--uv-gate needs --uv-build. Fix: add --uv-build*"),
        (("--uv-build", "--uv-gate"), "*--uv-gate compares with a baseline, but none was given*"),
    ],
)
def test_usage_errors(uv_pytester: pytest.Pytester, args: tuple[str, ...], message: str) -> None:
    """A bad build dir or baseline, or a gate without --uv-build, is one clear usage error."""
    (uv_pytester.path / "blocker").write_text("garbage")
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    result = uv_pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_xdist_controller_writes_once(uv_pytester: pytest.Pytester, tmp_path: Path) -> None:
    """Under xdist only the controller writes the record, once."""
    log = tmp_path / "writers.log"
    uv_pytester.makeconftest(
        f"""
        import os
        import pytest_uvbuild.artifacts as artifacts

        _real = artifacts.record_session

        def spy(*args, **kwargs):
            with open({str(log)!r}, "a") as fh:
                fh.write(os.environ.get("PYTEST_XDIST_WORKER", "controller") + "\\n")
            return _real(*args, **kwargs)

        artifacts.record_session = spy
        """
    )
    uv_pytester.makepyfile(
        test_pkg=PASSING_TEST + "\n".join(f"def test_{i}(): pass" for i in range(4))
    )
    result = uv_pytester.runpytest_subprocess("--uv-build", "-n", "2")
    result.assert_outcomes(passed=5)
    assert log.read_text() == "controller\n"
    only_record(uv_pytester.path / "builds")
    assert result.stdout.str().count("= uv-build record =") == 1


def test_virtual_project_with_hashed_wheel(
    pytester: pytest.Pytester, make_project: MakeProject, wheelhouse: Path
) -> None:
    """A non-package project gets no sdist; lock hashes reach requirements.txt and the SBOM."""
    wheel = next(wheelhouse.glob("toygamma-1.0-*.whl"))
    make_project(pytester.path, package=False, dependencies=(f"toygamma @ {wheel.as_uri()}",))
    pytester.makepyfile(test_pkg="def test_env(uv_env):\n    assert uv_env.packages['toygamma']\n")
    result = pytester.runpytest_subprocess("--uv-build")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["drift: none (the env matches uv.lock)"])
    record = only_record(pytester.path / "builds")
    assert {p.name for p in record.iterdir()} == RECORD_FILES - {"demo-0.1.0.tar.gz"}
    meta = load(record, "metadata.json")
    assert meta["files"]["sdist"] is None
    assert meta["inputs"]["source_files"] == 0
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"--hash=sha256:{digest}" in (record / "requirements.txt").read_text()
    sbom = load(record, "sbom.cdx.json")
    validator = JsonStrictValidator(SchemaVersion.from_version(sbom["specVersion"]))
    assert validator.validate_str(json.dumps(sbom)) is None
    (toygamma,) = (c for c in sbom["components"] if c["name"] == "toygamma")
    assert toygamma["hashes"] == [{"alg": "SHA-256", "content": digest}]
    assert toygamma["purl"] == f"pkg:pypi/toygamma@1.0?file_name={wheel.name}"


def test_failure_mid_write_leaves_nothing_complete(uv_pytester: pytest.Pytester) -> None:
    """A record that fails while being written leaves no record and fails the session clearly."""
    uv_pytester.makeconftest(
        """
        import os
        import pytest_uvbuild.sbom as sbom
        from pytest_uvbuild.artifacts import RecordError

        def broken(*args, **kwargs):
            raise RecordError("simulated failure while writing the SBOM")

        if os.environ.get("BREAK_SBOM"):
            sbom.build_sbom = broken
        """
    )
    uv_pytester.makepyfile(test_pkg=PASSING_TEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BREAK_SBOM", "1")
        broken = uv_pytester.runpytest_subprocess("--uv-build")
    broken.assert_outcomes(passed=1)
    assert broken.ret == pytest.ExitCode.TESTS_FAILED
    broken.stdout.fnmatch_lines(
        [
            "*! uv-build record FAILED !*",
            "simulated failure while writing the SBOM",
            "*pass --uv-no-artifacts to run without one.",
        ]
    )
    builds = uv_pytester.path / "builds"
    assert [p.name for p in builds.iterdir() if not p.name.startswith(".")] == []
    assert not list(builds.glob(".tmp-*"))
    uv_pytester.runpytest_subprocess("--uv-build").assert_outcomes(passed=1)
    assert (only_record(builds) / "SHA256SUMS").is_file()


def test_hermetic_outcomes_in_run_facts(uv_pytester: pytest.Pytester) -> None:
    """metadata.json counts the hermetic tests' outcomes and names the failing ones."""
    uv_pytester.makepyfile(
        test_inside="""
        import pytest

        @pytest.mark.hermetic
        def test_passes():
            import toyalpha

        @pytest.mark.hermetic
        def test_fails():
            assert False

        def test_on_the_host():
            pass
        """
    )
    result = uv_pytester.runpytest_subprocess("--uv-build")
    result.assert_outcomes(passed=2, failed=1)
    run = load(only_record(uv_pytester.path / "builds"), "metadata.json")["run"]
    assert run["exit_status"] == pytest.ExitCode.TESTS_FAILED
    assert run["tests_failed"] == 1
    assert run["hermetic"] == {
        "passed": 1,
        "failed": 1,
        "skipped": 0,
        "errors": 0,
        "xfailed": 0,
        "xpassed": 0,
        "failing": ["test_inside.py::test_fails"],
    }


@pytest.fixture
def project_below_top(
    pytester: pytest.Pytester, make_project: MakeProject, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A committed git checkout whose uv project is its subdirectory ``proj``, the cwd."""
    top = pytester.path
    project = make_project(top / "proj")
    (project / "test_pkg.py").write_text(PASSING_TEST)
    (top / ".gitignore").write_text(GIT_DEBRIS)
    git(top, "init", "-q", "-b", "main")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "initial")
    monkeypatch.chdir(project)
    return project


def test_a_project_below_the_top_of_a_dirty_checkout_is_recorded_dirty(
    pytester: pytest.Pytester, project_below_top: Path
) -> None:
    """A new file deep in a project that is a subdirectory of its checkout makes it dirty."""
    top = project_below_top.parent
    (project_below_top / "src" / "demo" / "extra.py").write_text("NEW = True\n")
    result = pytester.runpytest_subprocess("--uv-build")
    result.assert_outcomes(passed=1)
    # The new file, and nothing the session left behind, makes the checkout dirty.
    assert git(top, "status", "--porcelain", "--untracked-files=all") == "?? proj/src/demo/extra.py"
    recorded = load(only_record(project_below_top / "builds"), "metadata.json")["git"]
    assert recorded["dirty"] is True
    assert recorded["commit"] == git(top, "rev-parse", "HEAD")
    assert len(recorded["diff_sha256"]) == 64


def logging_git(directory: Path) -> Path:
    """Write a ``git`` that logs each call's arguments and runs the real one; return the log."""
    real = shutil.which("git")
    assert real is not None
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "git-calls.log"
    wrapper = directory / "git"
    wrapper.write_text(f'#!/bin/sh\nprintf \'%s\\n\' "$*" >> "{log}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return log


def test_the_record_uses_the_git_answer_started_with_the_session(
    pytester: pytest.Pytester,
    project_below_top: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """git status runs once per session: the query started early is the one recorded."""
    log = logging_git(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = pytester.runpytest_subprocess("--uv-build")
    result.assert_outcomes(passed=1)
    calls = log.read_text().splitlines()
    statuses = [c for c in calls if "status" in c.split()]
    assert len(statuses) == 1, calls
    recorded = load(only_record(project_below_top / "builds"), "metadata.json")["git"]
    assert recorded["commit"] == git(project_below_top, "rev-parse", "HEAD")
    assert recorded["dirty"] is False
