"""Unit tests of the build record pieces: repacking, the id, the manifest, the source list."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from conftest import MakeProject
from pytest_uvbuild import artifacts, recordfiles
from pytest_uvbuild.artifacts import (
    RecordError,
    build_id_of,
    check_builds_root,
    is_complete,
    plan_record,
    read_sums,
    source_date_epoch,
)
from pytest_uvbuild.envcache import EnvCache, UvEnv
from pytest_uvbuild.recordfiles import export_args
from pytest_uvbuild.request import EnvRequest
from pytest_uvbuild.sdist import SdistError, repack_sdist
from pytest_uvbuild.uvcli import Uv


def _tarball(path: Path, members: list[tuple[str, bytes | None, int, int]]) -> Path:
    """Write a tar.gz of (name, data or None for a dir, mtime, uid) in the given order."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, mtime, uid in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid = mtime, uid, uid
            info.uname = info.gname = "someone"
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
    with gzip.GzipFile(str(path), "wb", mtime=123456) as gz:
        gz.write(raw.getvalue())
    return path


def test_repack_is_deterministic(tmp_path: Path) -> None:
    """Archives that differ only in order, mtimes and owners repack to identical bytes."""
    first = _tarball(
        tmp_path / "a.tar.gz",
        [
            ("demo-1.0/src/demo/__init__.py", b"x = 1\n", 111, 501),
            ("demo-1.0/PKG-INFO", b"Name: demo\n", 222, 501),
            ("demo-1.0/requirements.txt", b"stale\n", 1, 1),
        ],
    )
    second = _tarball(
        tmp_path / "b.tar.gz",
        [
            ("demo-1.0/", None, 5, 0),
            ("demo-1.0/PKG-INFO", b"Name: demo\n", 999, 0),
            ("demo-1.0/src/demo/__init__.py", b"x = 1\n", 333, 1000),
        ],
    )
    extra = {"requirements.txt": b"toyalpha==1.0\n", "uv.lock": b"version = 1\n"}
    repack_sdist(first, tmp_path / "out1.tar.gz", extra, mtime=0)
    repack_sdist(second, tmp_path / "out2.tar.gz", extra, mtime=0)
    data = (tmp_path / "out1.tar.gz").read_bytes()
    assert data == (tmp_path / "out2.tar.gz").read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(tmp_path / "out1.tar.gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names == [
            "demo-1.0",
            "demo-1.0/PKG-INFO",
            "demo-1.0/requirements.txt",
            "demo-1.0/src",
            "demo-1.0/src/demo",
            "demo-1.0/src/demo/__init__.py",
            "demo-1.0/uv.lock",
        ]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            assert m.mode == (0o755 if m.isdir() else 0o644)
        handle = tar.extractfile("demo-1.0/requirements.txt")
        assert handle is not None
        assert handle.read() == b"toyalpha==1.0\n"
    repack_sdist(first, tmp_path / "out3.tar.gz", extra, mtime=1_700_000_000)
    with tarfile.open(tmp_path / "out3.tar.gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1_700_000_000}


def test_repack_refuses_unsafe_members(tmp_path: Path) -> None:
    """An sdist with a member outside its root directory is refused, not repacked."""
    bad = _tarball(tmp_path / "bad.tar.gz", [("../evil.py", b"", 0, 0)])
    with pytest.raises(SdistError, match="unsafe member"):
        repack_sdist(bad, tmp_path / "out.tar.gz", {}, mtime=0)


BASE_INPUTS: dict[str, Any] = {
    "record_format": 1,
    "env_key": "k" * 16,
    "lock_sha256": "1" * 64,
    "pyproject_sha256": "2" * 64,
    "source_sha256": "3" * 64,
    "source_date_epoch": None,
    "plugin_version": "0.1.0",
    "groups": ["dev"],
}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("env_key", "j" * 16),
        ("lock_sha256", "4" * 64),
        ("pyproject_sha256", "5" * 64),
        ("source_sha256", "6" * 64),
        ("source_date_epoch", 0),
        ("record_format", 2),
    ],
)
def test_id_changes_with_each_input(field: str, value: Any) -> None:
    """Each deterministic input changes the id."""
    assert build_id_of({**BASE_INPUTS, field: value}) != build_id_of(BASE_INPUTS)


def test_id_ignores_facts_that_are_not_inputs() -> None:
    """Facts outside the addressed inputs (plugin version, groups: both in the env key) do not."""
    changed = {**BASE_INPUTS, "plugin_version": "9.9", "groups": []}
    assert build_id_of(changed) == build_id_of(BASE_INPUTS)
    assert len(build_id_of(BASE_INPUTS)) == 16


def test_export_args() -> None:
    """The export selection is spelled from the effective groups and extras alone."""
    assert export_args(["dev", "test"], ["fast"], False) == [
        "--no-default-groups",
        "--group",
        "dev",
        "--group",
        "test",
        "--extra",
        "fast",
    ]
    assert export_args(["docs"], [], True) == ["--only-group", "docs"]


def test_manifest_and_completeness(tmp_path: Path) -> None:
    """A record is complete only with a well-formed SHA256SUMS naming files that all exist."""
    names = ["requirements.txt", "uv.lock", "sbom.cdx.json", "audit.json", "audit.md"]
    names.append("metadata.json")
    for name in names:
        (tmp_path / name).write_text(name)
    assert not is_complete(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("".join(f"{'a' * 64}  {n}\n" for n in names))
    assert is_complete(tmp_path)
    assert read_sums(tmp_path) == dict.fromkeys(names, "a" * 64)
    (tmp_path / "audit.md").unlink()
    assert not is_complete(tmp_path)
    (tmp_path / "SHA256SUMS").write_text("garbage\n")
    assert read_sums(tmp_path) is None


def test_builds_root_that_is_a_file(tmp_path: Path) -> None:
    """A build dir that is a file, or lies under one, is one clear error."""
    blocker = tmp_path / "builds"
    blocker.write_text("")
    with pytest.raises(RecordError, match="is a file, not a directory"):
        check_builds_root(blocker)
    with pytest.raises(RecordError, match=r"is inside .* which is a file"):
        check_builds_root(blocker / "deeper")
    check_builds_root(tmp_path / "fresh" / "dir")


def test_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """SOURCE_DATE_EPOCH is read as whole seconds; garbage is one clear error."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch() is None
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1_700_000_000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(RecordError, match="not a whole number"):
        source_date_epoch()


def _env(root: Path, cache: Path, **request: Any) -> UvEnv:
    return EnvCache(cache).materialise(EnvRequest(project_dir=root, **request), start_dir=root)


def test_id_follows_the_sdist_contents(
    make_project: MakeProject,
    tmp_path: Path,
    shared_env_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Editing, adding or removing a file that goes into the sdist changes the id; tests do not."""
    root = make_project(tmp_path / "proj")
    (root / "tests").mkdir()
    (root / "tests" / "test_it.py").write_text("def test_it(): pass\n")
    env = _env(root, shared_env_cache)
    index = tmp_path / "index"
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)

    def plan_id() -> str:
        plan = plan_record(index, env, EnvCache(shared_env_cache).uv, offline=True)
        plan.cleanup()
        return plan.build_id

    first = plan_id()
    assert plan_id() == first  # the cached source list gives the same answer
    listed = json.loads(next(index.glob("*.json")).read_text())["files"]
    assert listed == ["pyproject.toml", "src/demo/__init__.py"]
    (root / "tests" / "test_it.py").write_text("def test_it(): assert 1\n")
    assert plan_id() == first
    module = root / "src" / "demo" / "__init__.py"
    module.write_text("WHERE = 'edited'\n")
    edited = plan_id()
    assert edited != first
    (root / "src" / "demo" / "extra.py").write_text("")
    added = plan_id()
    assert added not in (first, edited)
    (root / "src" / "demo" / "extra.py").unlink()
    assert plan_id() == edited
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert plan_id() != edited
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(
        text.replace('version = "0.1.0"', 'version = "0.1.0"\ndescription = "x"')
    )
    assert plan_id() != edited


def test_id_follows_the_env_key(
    make_project: MakeProject, tmp_path: Path, shared_env_cache: Path
) -> None:
    """Another selection (so another env key) or another lock gives another id."""
    root = make_project(tmp_path / "proj", groups={"extra": ["toygamma"]})
    uv = EnvCache(shared_env_cache).uv
    ids = set()
    for request in ({}, {"groups": ("extra",)}):
        plan = plan_record(None, _env(root, shared_env_cache, **request), uv, offline=True)
        plan.cleanup()
        ids.add(plan.build_id)
    make_project(root, dependencies=("toyalpha==2.0",), groups={"extra": ["toygamma"]})
    plan = plan_record(None, _env(root, shared_env_cache), uv, offline=True)
    plan.cleanup()
    ids.add(plan.build_id)
    assert len(ids) == 3


def test_lock_changed_during_session(
    make_project: MakeProject, tmp_path: Path, shared_env_cache: Path
) -> None:
    """A lock edited after the env was built stops the record with one clear error."""
    root = make_project(tmp_path / "proj")
    env = _env(root, shared_env_cache)
    (root / "uv.lock").write_text((root / "uv.lock").read_text() + "\n")
    with pytest.raises(RecordError, match="changed during the session"):
        plan_record(None, env, EnvCache(shared_env_cache).uv, offline=True)


def _record(env: UvEnv, uv: Uv, tmp_path: Path, **options: Any) -> artifacts.RecordOutcome:
    """Record ``env`` in-process under ``tmp_path/builds`` (the index and rows beside it)."""
    settings: dict[str, Any] = {
        "builds_root": tmp_path / "builds",
        "index_dir": tmp_path / "index",
        "baseline": None,
        "gate": False,
        "verify": False,
        "offline": True,
        "run": {},
        "rows_dir": tmp_path / "rows",
        **options,
    }
    return artifacts.record_session(env, uv, **settings)


@pytest.fixture
def lock_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that gets "lock parsed" each time the record parses uv.lock for package rows."""
    parses: list[str] = []
    fresh_rows = recordfiles.fresh_rows

    def counting(*args: Any) -> list[dict[str, Any]]:
        parses.append("lock parsed")
        return fresh_rows(*args)

    monkeypatch.setattr(recordfiles, "fresh_rows", counting)
    return parses


def test_an_audit_without_a_record_keeps_the_rows_of_its_build_id(
    make_project: MakeProject, tmp_path: Path, shared_env_cache: Path, lock_parses: list[str]
) -> None:
    """Without a record, the lock's package rows are kept per project and reused for one id."""
    root = make_project(tmp_path / "proj")
    env = _env(root, shared_env_cache)
    uv = EnvCache(shared_env_cache).uv

    def audit() -> dict[str, Any]:
        return _record(env, uv, tmp_path, builds_root=None).audit

    first = audit()
    assert audit()["packages"] == first["packages"]
    assert lock_parses == ["lock parsed"]
    (root / "src" / "demo" / "__init__.py").write_text("EDITED = True\n")  # another build id
    assert audit()["build_id"] != first["build_id"]
    assert lock_parses == ["lock parsed", "lock parsed"]
    env.release()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("schema", "pytest-uvbuild/other"),
        ("schema_version", 2),
        ("build_id", "0" * 16),
        ("packages", "not a list"),
    ],
)
def test_a_record_reuses_only_rows_of_its_own_id_and_audit_schema(
    make_project: MakeProject,
    tmp_path: Path,
    shared_env_cache: Path,
    field: str,
    value: Any,
) -> None:
    """A complete record whose audit.json is for another id or schema is rebuilt, not reused."""
    env = _env(make_project(tmp_path / "proj"), shared_env_cache)
    uv = EnvCache(shared_env_cache).uv
    first = _record(env, uv, tmp_path, rows_dir=None)
    assert (first.state, _record(env, uv, tmp_path, rows_dir=None).state) == ("written", "reused")
    assert first.path is not None
    audit_json = first.path / "audit.json"
    audit = json.loads(audit_json.read_text())
    audit_json.write_text(json.dumps({**audit, field: value}))
    assert artifacts.is_complete(first.path)
    assert _record(env, uv, tmp_path, rows_dir=None).state == "written"
    assert json.loads(audit_json.read_text())["packages"] == audit["packages"]
    env.release()


@pytest.mark.parametrize(
    ("field", "value"),
    [("plugin_version", "0.0.0+other"), ("schema_version", 2), ("build_id", "0" * 16)],
)
def test_kept_rows_of_another_plugin_version_or_id_are_parsed_again(
    make_project: MakeProject,
    tmp_path: Path,
    shared_env_cache: Path,
    lock_parses: list[str],
    field: str,
    value: Any,
) -> None:
    """Rows kept by another plugin version, audit schema or build id are not used: the lock is."""
    env = _env(make_project(tmp_path / "proj"), shared_env_cache)
    uv = EnvCache(shared_env_cache).uv
    _record(env, uv, tmp_path, builds_root=None)
    (kept,) = (tmp_path / "rows").iterdir()
    kept.write_text(json.dumps({**json.loads(kept.read_text()), field: value}))
    lock_parses.clear()
    _record(env, uv, tmp_path, builds_root=None)
    assert lock_parses == ["lock parsed"]
    _record(env, uv, tmp_path, builds_root=None)
    assert lock_parses == ["lock parsed"]  # and kept again for the next session
    env.release()


def test_a_reused_record_reads_each_per_run_file_once(
    make_project: MakeProject,
    tmp_path: Path,
    shared_env_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reusing a record opens its manifest, audit.json, audit.md and metadata.json once each."""
    env = _env(make_project(tmp_path / "proj"), shared_env_cache)
    uv = EnvCache(shared_env_cache).uv
    record = _record(env, uv, tmp_path).path
    assert record is not None
    opened: list[str] = []
    real_open = Path.open

    def counting_open(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.parent == record:
            opened.append(path.name)
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        # What Path.read_bytes and read_text call, on every supported Python
        # (3.10's Path.open does not go through the io.open attribute).
        patch.setattr(Path, "open", counting_open)
        assert _record(env, uv, tmp_path).state == "reused"
    assert sorted(opened) == sorted([artifacts.SUMS, *artifacts.PER_RUN_FILES])
    env.release()


@pytest.mark.parametrize("written", [True, False], ids=["new record", "no artifacts"])
def test_an_audit_from_the_lock_lists_the_env_once(
    make_project: MakeProject,
    tmp_path: Path,
    shared_env_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    written: bool,
) -> None:
    """Rows parsed from the lock and the audit share one listing of the env's site-packages."""
    env = _env(make_project(tmp_path / "proj"), shared_env_cache)
    uv = EnvCache(shared_env_cache).uv
    listed: list[Path] = []
    real_listdir = os.listdir

    def counting_listdir(path: Any = ".") -> list[str]:
        listed.append(Path(path))
        return real_listdir(path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "listdir", counting_listdir)
        builds_root = tmp_path / "builds" if written else None
        outcome = _record(env, uv, tmp_path, builds_root=builds_root, rows_dir=None)
    assert outcome.state == ("written" if written else "not written (--uv-no-artifacts)")
    assert outcome.audit["drift"] == []  # the one listing found every package
    assert listed.count(env.site_packages) == 1
    env.release()
