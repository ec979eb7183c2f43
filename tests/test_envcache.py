"""Tests of the env cache in-process: the key, hits and misses, damage, locks, leases, layers."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import toys
from filelock import FileLock

from pytest_uvbuild import envbuild, envcache
from pytest_uvbuild.cacheadmin import parse_age
from pytest_uvbuild.envcache import EnvCache, UvEnv, compute_key, fingerprint_sources
from pytest_uvbuild.errors import CacheError, LockfileError
from pytest_uvbuild.interpreters import current_interpreter
from pytest_uvbuild.project import LocalSource, Selection
from pytest_uvbuild.request import EnvRequest
from pytest_uvbuild.sdist import build_sdist
from pytest_uvbuild.uvcli import Uv

# -- the key ---------------------------------------------------------------

SELECTION = Selection(groups=("dev",), extras=(), only_groups=False, uv_args=())
BASE_KEY_INPUTS = {
    "lock_sha256": "a" * 64,
    "interpreter": current_interpreter(),
    "selection": SELECTION,
    "install_mode": "wheel",
    "uv_version": "0.13.9",
}


def _changed(field: str) -> object:
    interp = current_interpreter()
    return {
        "lock_sha256": "b" * 64,
        "interpreter": interp._replace(path=Path("/other/python3")),
        "selection": SELECTION._replace(groups=("dev", "lint")),
        "install_mode": "source",
        "uv_version": "0.14.0",
    }[field]


def test_key_is_stable_for_equal_inputs() -> None:
    """The same inputs give the same 16-hex-digit key, and the inputs are returned."""
    key, inputs = compute_key(**BASE_KEY_INPUTS)  # type: ignore[arg-type]
    again, _ = compute_key(**BASE_KEY_INPUTS)  # type: ignore[arg-type]
    assert key == again
    assert len(key) == 16
    assert int(key, 16) >= 0
    assert inputs["format"] == envcache.FORMAT_VERSION


@pytest.mark.parametrize("field", sorted(BASE_KEY_INPUTS))
def test_key_changes_with_each_input(field: str) -> None:
    """Changing any one input (lock, interpreter, selection, mode, uv) changes the key."""
    base, _ = compute_key(**BASE_KEY_INPUTS)  # type: ignore[arg-type]
    changed, _ = compute_key(**{**BASE_KEY_INPUTS, field: _changed(field)})  # type: ignore[arg-type]
    assert changed != base


def test_key_changes_with_the_interpreter_version_and_platform() -> None:
    """An interpreter at the same path but another version or platform is another key."""
    interp = current_interpreter()
    base, _ = compute_key(**BASE_KEY_INPUTS)  # type: ignore[arg-type]
    for other in (interp._replace(version="3.11.99"), interp._replace(platform="other-arch")):
        key, _ = compute_key(**{**BASE_KEY_INPUTS, "interpreter": other})  # type: ignore[arg-type]
        assert key != base


def test_key_changes_with_the_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bumping our format version retires every old key."""
    base, _ = compute_key(**BASE_KEY_INPUTS)  # type: ignore[arg-type]
    monkeypatch.setattr(envcache, "FORMAT_VERSION", envcache.FORMAT_VERSION + 1)
    bumped, _ = compute_key(**BASE_KEY_INPUTS)  # type: ignore[arg-type]
    assert bumped != base


def test_parse_age() -> None:
    """Ages take s, m, h, d or w (a bare number is days); garbage, nan and negatives are refused."""
    assert parse_age("30d") == parse_age("30") == 30 * 86400
    assert parse_age("12h") == 12 * 3600
    assert parse_age("90s") == 90
    for bad in ("soon", "-1d", "d", "nan", "infd", "nanh"):
        with pytest.raises(ValueError, match=r"e\.g\. 30d"):
            parse_age(bad)


# -- materialising ---------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    """A module-wide scratch dir holding one locked project (copied by tests that edit it)."""
    root = tmp_path_factory.mktemp("envcache")
    toys.write_project(root / "project", wheelhouse)
    return root


@pytest.fixture
def project(shared: Path, tmp_path: Path) -> Path:
    """A private copy of the locked demo project (same lock bytes, so the same key)."""
    return Path(shutil.copytree(shared / "project", tmp_path / "project", symlinks=True))


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Uv, Path]:
    """A uv that logs every call, and its log."""
    wrapper, log = toys.logging_uv(tmp_path / "bin")
    return Uv(wrapper), log


def _make(cache: EnvCache, project: Path, **changes: object) -> UvEnv:
    request = EnvRequest(project_dir=project, offline=True)._replace(**changes)  # type: ignore[arg-type]
    return cache.materialise(request, start_dir=project)


def test_cold_build_then_hit_without_uv(
    project: Path, tmp_path: Path, logged: tuple[Uv, Path]
) -> None:
    """A miss builds with uv; the hit that follows runs no uv command at all."""
    uv, log = logged
    cache = EnvCache(tmp_path / "cache", uv)
    first = _make(cache, project)
    assert not first.hit
    assert first.reason == "first build for this project in this cache"
    assert len(toys.uv_calls(log, "sync")) == 1
    assert (first.path / envcache.RECORD_NAME).is_file()
    first.release()
    before = toys.uv_calls(log)
    second = _make(EnvCache(tmp_path / "cache", uv), project)
    assert second.hit
    assert second.key == first.key
    assert toys.uv_calls(log) == before
    second.release()


def test_env_holds_dependencies_and_the_layer_holds_the_project(
    project: Path, shared_env_cache: Path
) -> None:
    """The env has the locked deps; the project is a wheel in the layer, not in the env."""
    env = _make(EnvCache(shared_env_cache), project)
    try:
        assert env.packages["toyalpha"] == "1.0"
        assert env.packages["demo"] == "0.1.0"
        assert env.package_count() == len(env.packages)
        assert not list(env.site_packages.glob("demo*"))
        out = env.run(
            ["python", "-c", "import demo, toyalpha; print(demo.__file__)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.startswith(str(env.layer[-1]))
    finally:
        env.release()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda env: (env / "bin" / "python").unlink(), "its interpreter is gone"),
        (lambda env: (env / envcache.RECORD_NAME).unlink(), "no completion record"),
        (lambda env: (env / envcache.RECORD_NAME).write_text("{"), "record is unreadable"),
        (lambda env: (env / "pyvenv.cfg").unlink(), "pyvenv.cfg is gone"),
    ],
    ids=["interpreter-gone", "no-record", "bad-record", "no-pyvenv"],
)
def test_damaged_env_is_rebuilt(project: Path, tmp_path: Path, damage: object, reason: str) -> None:
    """An env that is incomplete or damaged is never trusted: it is rebuilt, and says why."""
    cache = EnvCache(tmp_path / "cache")
    env = _make(cache, project)
    env.release()
    damage(env.path)  # type: ignore[operator]
    again = _make(cache, project)
    assert not again.hit
    assert reason in again.reason
    assert again.key == env.key
    assert again.python.exists()
    again.release()


def test_rebuild_replaces_a_good_env(project: Path, tmp_path: Path) -> None:
    """rebuild=True builds again even though the cached env is fine."""
    cache = EnvCache(tmp_path / "cache")
    _make(cache, project).release()
    again = cache.materialise(
        EnvRequest(project_dir=project, offline=True), start_dir=project, rebuild=True
    )
    assert (again.hit, again.reason) == (False, "--uv-rebuild was given")
    again.release()


def test_rebuild_refuses_an_env_another_session_uses(project: Path, tmp_path: Path) -> None:
    """rebuild=True never deletes an env someone holds; once released, it rebuilds."""
    cache = EnvCache(tmp_path / "cache")
    held = _make(cache, project)
    request = EnvRequest(project_dir=project, offline=True)
    with pytest.raises(CacheError, match=r"while another running session uses it\. Fix: let"):
        cache.materialise(request, start_dir=project, rebuild=True)
    assert held.python.exists()
    assert (held.path / envcache.RECORD_NAME).is_file()
    held.release()
    again = cache.materialise(request, start_dir=project, rebuild=True)
    assert not again.hit
    again.release()


def test_miss_reason_names_the_changed_input(project: Path, tmp_path: Path) -> None:
    """A miss after a previous build of the project says which key input changed."""
    cache = EnvCache(tmp_path / "cache")
    _make(cache, project).release()
    other = _make(cache, project, install_project="source")
    assert other.reason == "install mode changed (wheel -> source)"
    other.release()
    toys.write_project(project, Path(str(_find_links(project))), dependencies=["toyalpha==2.0"])
    relocked = _make(cache, project, install_project="source")
    assert relocked.reason == "uv.lock changed"
    relocked.release()


def _find_links(project: Path) -> str:
    text = (project / "pyproject.toml").read_text()
    return text.split('find-links = ["', 1)[1].split('"', 1)[0]


def test_stale_lock_is_caught_on_a_hit_and_on_a_miss(
    project: Path, tmp_path: Path, logged: tuple[Uv, Path]
) -> None:
    """Editing pyproject deps without `uv lock` fails, on a hit too, and leaves nothing behind."""
    uv, log = logged
    cache = EnvCache(tmp_path / "cache", uv)
    env = _make(cache, project)
    env.release()
    record = (env.path / envcache.RECORD_NAME).read_bytes()
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("toyalpha==1.0", "toyalpha==2.0"))
    with pytest.raises(LockfileError, match=r"out of date.*Fix: run `uv lock`"):
        _make(cache, project)
    assert (env.path / envcache.RECORD_NAME).read_bytes() == record
    # On a miss (another selection), nothing is created either.
    with pytest.raises(LockfileError, match="out of date"):
        _make(cache, project, install_project="no")
    assert sorted(os.listdir(cache.root / "envs")) == [env.key]
    # Back in sync: the earlier check result is reused, so the hit asks uv no `lock --check`
    # (the touched pyproject.toml does rebuild the project wheel).
    pyproject.write_text(pyproject.read_text().replace("toyalpha==2.0", "toyalpha==1.0"))
    checks, syncs = toys.uv_calls(log, "lock"), toys.uv_calls(log, "sync")
    assert _make(cache, project).hit
    assert toys.uv_calls(log, "lock") == checks
    assert toys.uv_calls(log, "sync") == syncs
    # A new lock with the same local side asks no `uv export`: `uv sync --locked` catches it.
    pyproject.write_text(pyproject.read_text().replace("toyalpha==1.0", "toyalpha==2.0"))
    _relock_with_a_comment(project)
    exports = toys.uv_calls(log, "export")
    with pytest.raises(LockfileError, match=r"out of date.*Fix: run `uv lock`"):
        _make(cache, project)
    assert toys.uv_calls(log, "export") == exports
    assert sorted(os.listdir(cache.root / "envs")) == [env.key]


def test_waiting_too_long_for_a_builder_is_a_cache_error(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another process holds the build lock past the wait limit, the error says what to do."""
    cache = EnvCache(tmp_path / "cache")
    _, _, _, key, _ = cache.resolve(EnvRequest(project_dir=project), project)
    monkeypatch.setattr(envcache, "BUILD_WAIT_SECONDS", 0.2)
    messages: list[str] = []
    with (
        FileLock(str(cache.root / "locks" / f"{key}.lock")),
        pytest.raises(CacheError, match=r"Gave up after 0 s waiting .* Fix: wait"),
    ):
        cache.materialise(
            EnvRequest(project_dir=project), start_dir=project, announce=messages.append
        )
    assert messages == [f"waiting for another process to finish building env {key}"]
    assert not cache.env_dir(key).exists()


def test_cache_dir_that_cannot_be_created(project: Path, tmp_path: Path) -> None:
    """A cache path under a regular file (unwritable even for root) is one clear error."""
    (tmp_path / "file").write_text("")
    cache = EnvCache(tmp_path / "file" / "cache")
    with pytest.raises(CacheError, match=r"is not writable .*Fix: pass --uv-cache-dir"):
        _make(cache, project)


def test_a_hit_whose_lease_cannot_be_written_is_one_clear_error(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm env whose lease file cannot be created (read-only cache) is a clear error."""
    cache = EnvCache(tmp_path / "cache")
    _make(cache, project).release()
    real_open = os.open

    def refused(path: Any, flags: int, mode: int = 0o777) -> int:
        if "leases" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(CacheError, match=r"is not writable \(Permission denied.*Fix: pass"):
        _make(cache, project)


def test_prune_keeps_an_env_leased_by_another_process(project: Path, tmp_path: Path) -> None:
    """`prune --all` skips an env a running process holds, and removes it once released."""
    cache = EnvCache(tmp_path / "cache")
    env = _make(cache, project)
    env.release()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""\
                import sys, time
                from pathlib import Path
                from pytest_uvbuild.envcache import EnvCache, EnvRequest
                p = Path({str(project)!r})
                env = EnvCache(Path({str(cache.root)!r})).materialise(
                    EnvRequest(project_dir=p, offline=True), start_dir=p)
                print(env.key, flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == env.key
        removed, busy = cache.prune(everything=True)
        assert (removed, [e.key for e in busy]) == ([], [env.key])
        assert env.path.is_dir()
        assert [e.in_use for e in cache.entries()] == [True]
    finally:
        holder.kill()
        holder.wait()
    removed, busy = cache.prune(everything=True)
    assert ([e.key for e in removed], busy) == ([env.key], [])
    assert not env.path.exists()
    assert not list((cache.root / "layers").iterdir())


def test_prune_older_than_keeps_recent_envs_and_sweeps_leftovers(
    project: Path, tmp_path: Path
) -> None:
    """--older-than removes only envs unused for that long; incomplete envs always go."""
    cache = EnvCache(tmp_path / "cache")
    env = _make(cache, project)
    env.release()
    half_built = cache.env_dir("0123456789abcdef")
    (half_built / "bin").mkdir(parents=True)
    trash = cache.root / "envs" / ".trash-x-1"
    trash.mkdir()
    removed, _ = cache.prune(older_than=3600)
    assert [e.key for e in removed] == ["0123456789abcdef"]
    assert env.path.is_dir()
    assert not trash.exists()
    old = time.time() - 7200
    os.utime(env.path / envcache.RECORD_NAME, (old, old))
    removed, _ = cache.prune(older_than=3600)
    assert [e.key for e in removed] == [env.key]


def test_prune_drops_old_per_checkout_records(project: Path, tmp_path: Path) -> None:
    """--older-than removes the small records not written for that long; --all removes them all."""
    cache = EnvCache(tmp_path / "cache")
    _make(cache, project).release()
    records = [
        path for name in ("projects", "checks", "probes") for path in (cache.root / name).iterdir()
    ]
    assert {path.parent.name for path in records} == {"projects", "checks", "probes"}
    gone_checkout = cache.root / "projects" / "0000000000000000.json"
    gone_checkout.write_text("{}")
    old = time.time() - 7200
    os.utime(gone_checkout, (old, old))
    cache.prune(older_than=3600)
    assert not gone_checkout.exists()
    assert all(path.exists() for path in records)
    cache.prune(everything=True)
    assert not any(path.exists() for path in records)
    again = _make(cache, project)  # the records only saved work: all is made again
    assert not again.hit
    again.release()


def test_withdrawing_an_env_gives_way_to_a_session_that_leased_it_meanwhile(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune puts the record back if a lease appears once the record is gone; else it removes."""
    cache = EnvCache(tmp_path / "cache")
    env = _make(cache, project)
    env.release()
    record = env.path / envcache.RECORD_NAME
    saved = record.read_bytes()
    # No lease while the record is there; one is taken while the record is away.
    looked: list[bool] = []

    def lease_in_use(self: EnvCache, key: str) -> bool:
        looked.append(not record.exists())
        return looked[-1]

    monkeypatch.setattr(EnvCache, "_lease_in_use", lease_in_use)
    removed, busy = cache.prune(everything=True)
    assert (removed, [e.key for e in busy]) == ([], [env.key])
    assert True in looked  # prune did take the record away, and put it back
    assert record.read_bytes() == saved
    monkeypatch.undo()
    again = _make(cache, project)
    assert again.hit
    again.release()
    removed, busy = cache.prune(everything=True)
    assert ([e.key for e in removed], busy) == ([env.key], [])


def test_prune_leaves_the_layer_of_an_env_being_built(tmp_path: Path) -> None:
    """A layer ready before uv created its env dir is kept while the env's build lock is held."""
    cache = EnvCache(tmp_path / "cache")
    key = "0123456789abcdef"
    layer = cache.root / "layers" / f"{key}-fedcba9876543210"
    (layer / "site").mkdir(parents=True)
    (layer / envcache.LAYER_RECORD_NAME).write_text("{}")
    (cache.root / "locks").mkdir()
    builder = FileLock(str(cache.root / "locks" / f"{key}.lock"))
    builder.acquire()
    try:
        cache.prune(everything=True)
        assert (layer / envcache.LAYER_RECORD_NAME).is_file()
    finally:
        builder.release()
    cache.prune(everything=True)
    assert not layer.exists()


# -- the project layer -----------------------------------------------------


def test_editing_the_project_gives_a_new_layer_and_the_same_env(
    project: Path, tmp_path: Path, logged: tuple[Uv, Path]
) -> None:
    """A source edit rebuilds only the project wheel; the dependency env is untouched."""
    uv, log = logged
    cache = EnvCache(tmp_path / "cache", uv)
    first = _make(cache, project)
    first.release()
    snapshot = sorted((p.name, p.stat().st_mtime_ns) for p in first.site_packages.iterdir())
    init = project / "src" / "demo" / "__init__.py"
    init.write_text('WHERE = "edited"\n')
    messages: list[str] = []
    second = cache.materialise(
        EnvRequest(project_dir=project, offline=True), start_dir=project, announce=messages.append
    )
    assert second.hit
    assert second.key == first.key
    assert second.layer != first.layer
    assert [m.split(" of env")[0] for m in messages] == [
        f"building project layer {second.layer[-1].parent.name.split('-')[1]}"
    ]
    out = second.run(
        ["python", "-c", "import demo; print(demo.WHERE)"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "edited"
    assert sorted((p.name, p.stat().st_mtime_ns) for p in first.site_packages.iterdir()) == snapshot
    assert len(toys.uv_calls(log, "sync")) == 1
    second.release()


def _relock_with_a_comment(project: Path) -> None:
    """Change uv.lock's bytes (so the env key) without changing what it locks."""
    with (project / "uv.lock").open("a") as fh:
        fh.write(f"# relocked {time.monotonic_ns()}\n")


def test_a_new_lock_with_unchanged_sources_links_the_previous_layer(
    project: Path, tmp_path: Path, logged: tuple[Uv, Path]
) -> None:
    """A new env key whose sources are unchanged hard-links the last layer instead of a build."""
    uv, log = logged
    cache = EnvCache(tmp_path / "cache", uv)
    first = _make(cache, project)
    first.release()
    _relock_with_a_comment(project)
    second = _make(cache, project)
    second.release()
    assert second.key != first.key
    assert not second.hit
    assert len(toys.uv_calls(log, "build")) == 1
    # The project is the lock's only local package: the lock tells, uv is not asked.
    assert toys.uv_calls(log, "export") == []
    record = json.loads((second.path / envcache.RECORD_NAME).read_text())
    assert [s["name"] for s in record["local_sources"]] == ["demo"]
    old_site, new_site = first.layer[-1], second.layer[-1]
    assert new_site != old_site
    assert new_site.parent.name.split("-")[1] == old_site.parent.name.split("-")[1]
    linked = new_site / "demo" / "__init__.py"
    assert linked.stat().st_ino == (old_site / "demo" / "__init__.py").stat().st_ino
    layer_record = json.loads((new_site.parent / envcache.LAYER_RECORD_NAME).read_text())
    assert (layer_record["key"], layer_record["copied_from"]) == (
        second.key,
        old_site.parent.name,
    )
    out = second.run(["python", "-c", "import demo; print(demo.__file__)"], capture_output=True)
    assert out.stdout.decode().startswith(str(new_site))
    # Pruning the first env leaves the second one's layer whole.
    old = time.time() - 7200
    os.utime(first.path / envcache.RECORD_NAME, (old, old))
    removed, _ = cache.prune(older_than=3600)
    assert [e.key for e in removed] == [first.key]
    assert not old_site.exists()
    assert linked.is_file()


def test_the_layer_install_of_wheels_runs_offline_without_certificate_settings(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layer install of built wheels gets --offline and no TLS variables; the sync both."""
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "bin" / "uv"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf \'%s %s offline=%s certs=%s\\n\' "$1" "$2" '
        f'"$(case " $* " in *" --offline "*) echo yes;; *) echo no;; esac)" '
        f'"${{SSL_CERT_DIR-unset}}" >> "{log}"\n'
        f'exec "{toys.UV}" "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    cache = EnvCache(tmp_path / "cache", Uv(wrapper))
    _make(cache, project, offline=False).release()
    calls = log.read_text().splitlines()
    assert f"sync --locked offline=no certs={tmp_path}" in calls
    assert "pip install offline=yes certs=unset" in calls


def test_a_layer_built_on_a_wrong_guess_is_not_left_behind(
    tmp_path: Path, wheelhouse: Path, logged: tuple[Uv, Path]
) -> None:
    """A cold build starts the last build's layer; if uv now selects more packages, that goes."""
    uv, log = logged
    toys.write_project(tmp_path / "dep", wheelhouse, name="dep", with_pytest=False, lock=False)
    root = toys.write_project(tmp_path / "main", wheelhouse)
    cache = EnvCache(tmp_path / "cache", uv)
    first = _make(cache, root)
    first.release()
    (root / "src" / "demo" / "__init__.py").write_text("EDITED = True\n")
    toys.write_project(
        root,
        wheelhouse,
        dependencies=["toyalpha==1.0", "dep"],
        extra_toml='[tool.uv.sources]\ndep = { path = "../dep" }\n',
    )
    second = _make(cache, root)
    second.release()
    assert {"demo", "dep"} <= set(second.packages)
    layers = sorted(p.name for p in (cache.root / "layers").iterdir())
    assert layers == sorted([first.layer[-1].parent.name, second.layer[-1].parent.name])
    # The guess (demo alone) was built and thrown away, then demo and dep were built.
    assert len(toys.uv_calls(log, "build")) == 4
    # A local package besides the project: uv is asked, as it is again on a rebuild.
    assert len(toys.uv_calls(log, "export")) == 1
    cache.materialise(
        EnvRequest(project_dir=root, offline=True), start_dir=root, rebuild=True
    ).release()
    assert len(toys.uv_calls(log, "export")) == 2


def test_a_removed_path_dependency_is_left_out_of_the_next_build(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """After a path dependency is dropped and its directory deleted, the next build works."""
    toys.write_project(tmp_path / "dep", wheelhouse, name="dep", with_pytest=False, lock=False)
    root = toys.write_project(
        tmp_path / "main",
        wheelhouse,
        dependencies=["toyalpha==1.0", "dep"],
        extra_toml='[tool.uv.sources]\ndep = { path = "../dep" }\n',
    )
    cache = EnvCache(tmp_path / "cache")
    first = _make(cache, root)
    first.release()
    assert "dep" in first.packages
    toys.write_project(root, wheelhouse)
    shutil.rmtree(tmp_path / "dep")
    second = _make(cache, root)
    second.release()
    assert "dep" not in second.packages
    assert "demo" in second.packages


def test_test_files_and_caches_do_not_rebuild_the_layer(project: Path, tmp_path: Path) -> None:
    """Editing tests or bytecode keeps the project layer; editing a sub-package named test not."""
    cache = EnvCache(tmp_path / "cache")
    first = _make(cache, project)
    first.release()
    (project / "tests").mkdir()
    (project / "tests" / "test_x.py").write_text("def test(): pass\n")
    (project / "src" / "demo" / "__pycache__").mkdir()
    (project / "src" / "demo" / "__pycache__" / "x.pyc").write_bytes(b"")
    same = _make(cache, project)
    same.release()
    assert same.layer == first.layer
    (project / "src" / "demo" / "test").mkdir()
    (project / "src" / "demo" / "test" / "__init__.py").write_text("")
    changed = _make(cache, project)
    changed.release()
    assert changed.layer != first.layer


def test_a_backend_that_rewrites_its_version_file_keeps_the_layer(
    project: Path, tmp_path: Path
) -> None:
    """A build rewriting a version file with the same bytes (as setuptools-scm does) is no edit."""
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        .replace('requires = ["uv_build>=0.9,<1"]', "requires = []")
        .replace('build-backend = "uv_build"', 'build-backend = "versioned"\nbackend-path = ["."]')
    )
    # A whole (offline) backend: write the version file, then zip the package.
    (project / "versioned.py").write_text(
        textwrap.dedent(
            """\
            import os, tarfile, zipfile
            from pathlib import Path

            def build_sdist(sdist_directory, config_settings=None):
                Path("src/demo/_version.py").write_text("version = '0.1.0'\\n")
                name = "demo-0.1.0.tar.gz"
                with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as sdist:
                    sdist.add("pyproject.toml", "demo-0.1.0/pyproject.toml")
                return name

            def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
                Path("src/demo/_version.py").write_text("version = '0.1.0'\\n")
                name = "demo-0.1.0-py3-none-any.whl"
                info = "demo-0.1.0.dist-info/"
                with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
                    for path in sorted(Path("src/demo").glob("*.py")):
                        wheel.write(path, "demo/" + path.name)
                    wheel.writestr(info + "METADATA", "Metadata-Version: 2.1\\nName: demo\\n"
                                   "Version: 0.1.0\\n")
                    wheel.writestr(info + "WHEEL", "Wheel-Version: 1.0\\nGenerator: t\\n"
                                   "Root-Is-Purelib: true\\nTag: py3-none-any\\n")
                    wheel.writestr(info + "RECORD", "")
                return name
            """
        )
    )
    version_file = project / "src" / "demo" / "_version.py"
    version_file.write_text("version = '0.1.0'\n")
    cache = EnvCache(tmp_path / "cache")
    first = _make(cache, project)
    first.release()
    # The build record's sdist is built in the working tree too.
    build_sdist(cache.uv, project, tmp_path / "sdist", python=None, offline=True)
    again = _make(cache, project)
    again.release()
    assert again.layer == first.layer
    version_file.write_text("version = '0.2.0'\n")
    changed = _make(cache, project)
    changed.release()
    assert changed.layer != first.layer


def test_source_mode_puts_the_import_root_on_the_path(
    project: Path, shared_env_cache: Path
) -> None:
    """--uv-install-project=source uses the working tree's src/ instead of a wheel."""
    env = _make(EnvCache(shared_env_cache), project, install_project="source")
    env.release()
    assert env.layer == (project / "src",)
    assert "demo" not in env.packages


def test_no_install_mode_leaves_the_project_out(project: Path, shared_env_cache: Path) -> None:
    """--uv-install-project=no installs neither the project nor a layer for it."""
    env = _make(EnvCache(shared_env_cache), project, install_project="no")
    env.release()
    assert env.layer == ()
    assert "demo" not in env.packages
    assert env.packages["toyalpha"] == "1.0"


def test_only_group_leaves_project_and_its_dependencies_out(
    tmp_path: Path, wheelhouse: Path, shared_env_cache: Path
) -> None:
    """--only-group installs that group alone, like `uv sync --only-group`."""
    root = toys.write_project(tmp_path / "p", wheelhouse, groups={"lint": ["toygamma"]})
    env = _make(EnvCache(shared_env_cache), root, only_groups=("lint",))
    env.release()
    assert env.packages == {"toygamma": "1.0"}


def test_path_dependency_and_local_wheel_live_in_the_layer(
    tmp_path: Path, wheelhouse: Path, shared_env_cache: Path
) -> None:
    """A path dependency and a wheel file dependency are installed in the layer, edits apply."""
    dep = toys.write_project(
        tmp_path / "dep", wheelhouse, name="dep", with_pytest=False, lock=False
    )
    shutil.copy(
        wheelhouse / "toygamma-1.0-py3-none-any.whl", tmp_path / "toygamma-1.0-py3-none-any.whl"
    )
    root = toys.write_project(
        tmp_path / "main",
        wheelhouse,
        dependencies=["toyalpha==1.0", "dep", "toygamma"],
        extra_toml=textwrap.dedent(
            """\
            [tool.uv.sources]
            dep = { path = "../dep" }
            toygamma = { path = "../toygamma-1.0-py3-none-any.whl" }
            """
        ),
    )
    cache = EnvCache(shared_env_cache)
    env = _make(cache, root)
    env.release()
    assert {k: env.packages.get(k) for k in ("dep", "toygamma", "demo")} == {
        "dep": "0.1.0",
        "toygamma": "1.0",
        "demo": "0.1.0",
    }
    _assert_edit_runs(cache, root, env.key, dep / "src" / "dep" / "__init__.py", "dep")


def _assert_edit_runs(cache: EnvCache, root: Path, key: str, source: Path, module: str) -> None:
    """After editing ``source`` (``module``'s ``__init__``), the same env runs the edit."""
    source.write_text('WHERE = "edited"\n')
    again = _make(cache, root)
    again.release()
    assert again.key == key
    out = again.run(
        ["python", "-c", f"import {module}; print({module}.WHERE)"],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "edited"


def test_package_false_behaves_as_source(
    tmp_path: Path, wheelhouse: Path, shared_env_cache: Path
) -> None:
    """A project with `[tool.uv] package = false` gets its directory on the path, no wheel."""
    root = toys.write_project(tmp_path / "app", wheelhouse, package=False)
    env = _make(EnvCache(shared_env_cache), root)
    env.release()
    assert env.install_mode == "source"
    assert env.layer == (root.resolve(),)
    record = json.loads((env.path / envcache.RECORD_NAME).read_text())
    assert record["local_sources"] == []


def test_groups_and_extras_follow_uv_semantics(
    tmp_path: Path, wheelhouse: Path, shared_env_cache: Path
) -> None:
    """default-groups, --no-default-groups, --group and --all-extras install what uv says."""
    root = toys.write_project(
        tmp_path / "p",
        wheelhouse,
        groups={"lint": ["toygamma"]},
        extras={"fast": ["toybeta"]},
        extra_toml='default-groups = ["lint"]\n',
    )
    cache = EnvCache(shared_env_cache)

    def installed(**changes: object) -> set[str]:
        env = _make(cache, root, **changes)
        env.release()
        return {name for name in env.packages if name.startswith(("toy", "pytest"))}

    assert installed() == {"toyalpha", "toygamma"}
    assert installed(no_default_groups=True) == {"toyalpha"}
    assert installed(groups=("dev",), all_extras=True) == {
        "toyalpha",
        "toybeta",
        "toygamma",
        "pytest",
    }


def test_cache_hit_imports_no_packaging_nor_filelock_and_runs_no_uv(
    project: Path, tmp_path: Path, logged: tuple[Uv, Path]
) -> None:
    """A warm hit in a fresh process imports no packaging, filelock or thread pool; starts no uv."""
    uv, log = logged
    cache_root = tmp_path / "cache"
    _make(EnvCache(cache_root, uv), project).release()
    calls = toys.uv_calls(log)
    script = textwrap.dedent(
        f"""\
        import sys
        from pathlib import Path
        before = set(sys.modules)
        from pytest_uvbuild.envcache import EnvCache, EnvRequest
        p = Path({str(project)!r})
        cache = EnvCache(Path({str(cache_root)!r}))
        env = cache.materialise(EnvRequest(project_dir=p), start_dir=p)
        assert env.hit, env.reason
        heavy = ("packaging", "concurrent", "filelock", "asyncio")
        print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTEST_UVBUILD_UV": str(uv.binary)},
    )
    assert proc.stdout.strip() == "[]"
    assert toys.uv_calls(log) == calls


def test_workspace_member_edits_are_never_stale(
    tmp_path: Path, wheelhouse: Path, shared_env_cache: Path
) -> None:
    """A workspace member is built into the layer from the working tree, edits included."""
    root = tmp_path / "ws"
    toys.write_project(
        root / "packages" / "member", wheelhouse, name="member", with_pytest=False, lock=False
    )
    toys.write_project(
        root,
        wheelhouse,
        dependencies=["toyalpha==1.0", "member"],
        extra_toml=textwrap.dedent(
            """\
            [tool.uv.workspace]
            members = ["packages/*"]
            [tool.uv.sources]
            member = { workspace = true }
            """
        ),
    )
    cache = EnvCache(shared_env_cache)
    env = _make(cache, root)
    env.release()
    assert {"demo", "member", "toyalpha"} <= set(env.packages)
    member = root / "packages" / "member" / "src" / "member" / "__init__.py"
    _assert_edit_runs(cache, root, env.key, member, "member")


def test_a_full_disk_while_writing_the_record_is_one_clear_error(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the completion record (uv's hard links need no room) is a CacheError, no env."""
    import errno

    from pytest_uvbuild.fsutil import write_atomic as real_write

    def full_disk(path: Path, data: bytes, **kwargs: Any) -> None:
        if path.name == envcache.RECORD_NAME:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data, **kwargs)

    monkeypatch.setattr(envbuild, "write_atomic", full_disk)
    cache = EnvCache(tmp_path / "cache")
    with pytest.raises(CacheError, match=r"No space left on device \(the disk is full.*Fix: free"):
        _make(cache, project)
    assert os.listdir(cache.root / "envs") == []
    monkeypatch.setattr(envbuild, "write_atomic", real_write)
    env = _make(cache, project)
    assert not env.hit
    env.release()


def test_a_package_gone_from_site_packages_is_rebuilt(project: Path, tmp_path: Path) -> None:
    """A hit lists site-packages once: a package or dist-info removed by hand means a rebuild."""
    cache = EnvCache(tmp_path / "cache")
    env = _make(cache, project)
    env.release()
    shutil.rmtree(env.site_packages / "toyalpha")
    again = _make(cache, project)
    assert (again.hit, again.reason) == (
        False,
        "the cached env is damaged (toyalpha gone from site-packages)",
    )
    assert (again.site_packages / "toyalpha" / "__init__.py").is_file()
    again.release()
    (again.layer[-1] / "demo" / "__init__.py").unlink()
    shutil.rmtree(again.layer[-1] / "demo")
    messages: list[str] = []
    third = cache.materialise(
        EnvRequest(project_dir=project, offline=True), start_dir=project, announce=messages.append
    )
    assert third.hit
    assert [m.rsplit(": ", 1)[1] for m in messages] == ["it is damaged"]
    assert (third.layer[-1] / "demo" / "__init__.py").is_file()
    third.release()


def test_cache_verify_finds_a_file_removed_or_changed_deep_inside(
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cache verify` checks every RECORD file; a damaged env is rebuilt by the next session.

    A file edited in place is edited in uv's cache too (envs are hard-linked
    from it), so a rebuild alone links it again: verify names the fix.
    """
    from pytest_uvbuild.cli import main

    # The edit below reaches uv's cache through the hard link: never the shared one.
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "private-uv-cache"))
    cache = EnvCache(tmp_path / "cache")
    env = _make(cache, project)
    env.release()
    args = ["cache", "verify", f"--uv-cache-dir={cache.root}"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == [f"ok      {env.key}", "1 checked, 0 damaged"]
    (env.site_packages / "toyalpha" / "__init__.py").unlink()
    with (env.site_packages / "pluggy" / "__init__.py").open("a") as fh:
        fh.write("tampered = True\n")
    assert _make(cache, project).hit  # too deep for the cheap check on a hit
    _make(cache, project).release()
    env.release()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED {env.key}: " in out
    assert "missing toyalpha/__init__.py" in out
    assert "changed pluggy/__init__.py" in out
    assert "1 checked, 1 damaged: the next session rebuilds them" in out
    assert "Fix: uv cache clean pluggy" in out
    again = _make(cache, project)
    assert (again.hit, again.reason) == (False, "`cache verify` found the cached env damaged")
    again.release()
    assert (again.site_packages / "toyalpha" / "__init__.py").is_file()
    assert main(args) == 1  # the rebuild linked uv's changed copy of pluggy again
    assert "changed pluggy/__init__.py" in capsys.readouterr().out
    toys.run_uv("cache", "clean", "pluggy")
    _make(cache, project).release()
    assert main(args) == 0


def test_a_failed_build_leaves_no_lease_behind(project: Path, tmp_path: Path) -> None:
    """A session whose env cannot be built leaves leases/ as it was (no directory for its key)."""
    (project / "uv.lock").write_text("garbage [[[\n")
    cache = EnvCache(tmp_path / "cache")
    with pytest.raises(LockfileError, match=r"uv\.lock cannot be parsed"):
        _make(cache, project)
    assert os.listdir(cache.root / "leases") == []
    assert os.listdir(cache.root / "envs") == []


def test_nothing_in_the_cache_is_world_writable(project: Path, tmp_path: Path) -> None:
    """No file or directory of an env or its project layer can be written by other users."""
    import stat

    cache = EnvCache(tmp_path / "cache")
    env = _make(cache, project)
    env.release()
    writable = [
        os.path.join(root, name)
        for root, dirs, files in os.walk(cache.root)
        for name in [*dirs, *files]
        if not os.path.islink(os.path.join(root, name))
        and os.lstat(os.path.join(root, name)).st_mode & stat.S_IWOTH
    ]
    assert writable == []


def test_flat_layout_fingerprint_counts_code_not_reports(tmp_path: Path) -> None:
    """In a flat layout, top-level reports and tests leave the digest alone; code edits do not."""
    (tmp_path / "pyproject.toml").write_text('[tool.uv.build-backend]\nmodule-root = ""\n')
    package = tmp_path / "flat_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    (tmp_path / "nsroot" / "sub").mkdir(parents=True)
    (tmp_path / "nsroot" / "sub" / "mod.py").write_text("X = 1\n")  # a namespace package
    (tmp_path / "single.py").write_text("Y = 1\n")
    sources = [LocalSource("flat-pkg", ".", "directory")]

    def digest() -> str:
        return fingerprint_sources(tmp_path, sources)

    before = digest()
    (tmp_path / "report.xml").write_text("<testsuites/>")
    (tmp_path / "coverage.xml").write_text("<coverage/>")
    (tmp_path / "htmlcov").mkdir()
    (tmp_path / "htmlcov" / "index.html").write_text("<html/>")
    (tmp_path / "test_top.py").write_text("def test_x(): pass\n")
    assert digest() == before
    for edited in (package / "__init__.py", tmp_path / "nsroot" / "sub" / "mod.py"):
        edited.write_text(edited.read_text() + "# edited\n")
        assert digest() != before
        before = digest()
    (tmp_path / "single.py").write_text("Y = 2  # a top-level module\n")
    assert digest() != before
