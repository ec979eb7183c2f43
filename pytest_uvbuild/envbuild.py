"""Building an env and its project layer: the env cache's cold path.

:meth:`~pytest_uvbuild.envcache.EnvCache.materialise` comes here, under the
env's build lock, only when no trusted env exists; a cache hit never imports
this module. ``uv export --locked`` (unless the last build of the checkout
asked uv the same, or the project is the lock's only local package), ``uv
sync --locked --no-install-local`` and the project
layer run at once (see :func:`build_env`); the completion record is
written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_uvbuild.envcache import (
    FORMAT_VERSION,
    LAYER_RECORD_NAME,
    RECORD_NAME,
    _layer_intact,
    _LayerPlan,
    _offline,
    same_bytes_keep_mtimes,
)
from pytest_uvbuild.errors import CacheError, LockfileError
from pytest_uvbuild.fsutil import remove_tree, write_atomic
from pytest_uvbuild.integrity import top_level
from pytest_uvbuild.project import (
    LocalSource,
    Selection,
    UvProject,
    local_selection_digest,
    local_sources_from_export,
    lock_local_dirs,
    read_lock,
    sources_from_lock,
)

if TYPE_CHECKING:
    from pytest_uvbuild.envcache import EnvCache, ResolvedRequest
    from pytest_uvbuild.interpreters import Interpreter
    from pytest_uvbuild.request import EnvRequest, InstallMode

__all__ = ["build_env", "guess_sources", "last_build", "make_layer", "why_new"]


def _find_site_packages(env_dir: Path) -> Path | None:
    if sys.platform == "win32":
        site = env_dir / "Lib" / "site-packages"
        return site if site.is_dir() else None
    found = sorted(env_dir.glob("lib/*/site-packages"))
    return found[0] if found else None


def _drop_world_write(*directories: Path) -> None:
    """Take write permission for others off the entries directly in ``directories``.

    uv leaves its lock file (``.lock``) in an env and in a ``--target``
    directory with mode 0o666, whatever the umask; nothing in the cache
    should be writable by other users.
    """
    for directory in directories:
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if not stat.S_ISLNK(mode) and mode & stat.S_IWOTH:
                    os.chmod(entry.path, stat.S_IMODE(mode) & ~stat.S_IWOTH)


def _write_layer_record(layer: Path, plan: _LayerPlan, copied_from: str | None = None) -> None:
    """Write ``layer.json``, which makes the layer complete: what is in it and for which env."""
    record: dict[str, Any] = {
        "key": plan.key,
        "sources": [str(s.path(plan.root)) for s in plan.to_install],
        "entries": top_level(layer / "site"),
    }
    if copied_from is not None:
        record["copied_from"] = copied_from
    # Not fsynced, like the env's completion record (see build_env).
    write_atomic(layer / LAYER_RECORD_NAME, json.dumps(record).encode(), fsync=False)


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link a file of a finished layer (it is never written again); copy across devices."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Say, in words, which key inputs differ between two builds of one project."""
    said: list[str] = []
    if old.get("lock_sha256") != new.get("lock_sha256"):
        said.append("uv.lock changed")
    old_py, new_py = old.get("python") or {}, new.get("python") or {}
    if old_py != new_py:
        said.append(
            f"interpreter changed ({old_py.get('version', '?')} {old_py.get('path', '?')} -> "
            f"{new_py.get('version', '?')} {new_py.get('path', '?')})"
        )
    if old.get("selection") != new.get("selection"):
        said.append("groups or extras changed")
    if old.get("install_mode") != new.get("install_mode"):
        said.append(
            f"install mode changed ({old.get('install_mode')} -> {new.get('install_mode')})"
        )
    if old.get("uv") != new.get("uv"):
        said.append(f"uv changed ({old.get('uv')} -> {new.get('uv')})")
    if old.get("format") != new.get("format"):
        said.append("pytest-uvbuild's cache format changed")
    return said


def last_build(cache: EnvCache, project: UvProject) -> Mapping[str, Any]:
    """What the cache remembers of the last env built for this checkout; empty if nothing.

    A cold build reads it once: to say why the env is new (:func:`why_new`),
    to guess the project layer (:func:`guess_sources`) and to skip asking
    uv a question it answered already (:func:`_known_sources`). A record
    that cannot be read counts as none.
    """
    try:
        last = json.loads(cache._project_record(project).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return last if isinstance(last, dict) else {}


def why_new(last: Mapping[str, Any], inputs: Mapping[str, Any]) -> str:
    """Explain a miss by comparing with the checkout's last build (see :func:`last_build`)."""
    previous = last.get("inputs")
    if not isinstance(previous, dict):
        return "first build for this project in this cache"
    said = _differences(previous, inputs)
    if not said:
        return "the env for this key was removed from the cache"
    return "; ".join(said)


def guess_sources(
    last: Mapping[str, Any], project: UvProject, selection: Selection
) -> tuple[LocalSource, ...]:
    """The local packages to build while ``uv export`` works out the real list.

    That is what the last build of this checkout installed (``last``, see
    :func:`last_build`), else the project itself. A guess that turns out
    wrong costs the time of the build it started, never correctness: the
    real list decides.
    """
    try:
        sources = tuple(LocalSource.from_json(s) for s in last["local_sources"])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    else:
        # A path dependency removed since cannot be built: leave it out.
        return tuple(s for s in sources if os.path.exists(s.path(project.root)))
    if selection.only_groups or not project.is_package or project.name is None:
        return ()
    return (LocalSource(project.name, ".", "editable"),)


def _known_sources(last: Mapping[str, Any], digest: str) -> tuple[LocalSource, ...] | None:
    """uv's answer for the last build of this checkout, if it was asked the same question.

    ``digest`` covers the parts of the lock that decide the local packages
    (see :func:`~pytest_uvbuild.project.local_selection_digest`) and every
    other key input but the lock's hash.
    """
    if last.get("export_digest") != digest:
        return None
    try:
        return tuple(LocalSource.from_json(s) for s in last["local_sources"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _exported_plan(
    cache: EnvCache,
    resolved: ResolvedRequest,
    request: EnvRequest,
    last: Mapping[str, Any],
    *,
    rebuild: bool,
) -> tuple[_LayerPlan, tuple[LocalSource, ...], tuple[str, ...], str]:
    """Find which local packages the selection installs; plan their layer.

    The answer is ``uv export --locked``'s, unless the last build of this
    checkout asked uv the same question (the same selection, interpreter
    and uv, and a lock whose local side is unchanged, as when a registry
    package moved) and ``rebuild`` is off: then that answer stands, and uv
    is not asked again. Nor is it when the project is the lock's only
    local package, where the lock alone tells (see
    :func:`~pytest_uvbuild.project.sources_from_lock`). Either way ``uv
    sync --locked`` checks the lock: a stale, missing or malformed one
    fails the build without creating anything, with the message that
    names ``uv lock``. Also returned: the
    lock's local directories and the digest the answer is filed under.
    """
    project, selection, interpreter, key, inputs = resolved
    sources: tuple[LocalSource, ...] | None = None
    digest = ""
    try:
        lock: Mapping[str, Any] | None = read_lock(project)
    except LockfileError:
        lock = None  # uv's own error about it (from the export) says more
    if lock is not None:
        question = {name: value for name, value in inputs.items() if name != "lock_sha256"}
        question["lock"] = local_selection_digest(lock)
        digest = hashlib.sha256(json.dumps(question, sort_keys=True).encode()).hexdigest()
        if not rebuild:
            sources = _known_sources(last, digest)
        if sources is None:
            sources = sources_from_lock(lock, selection)
    if lock is None or sources is None:
        exported = cache.uv.run(
            [
                "export",
                "--locked",
                "--format",
                "requirements-txt",
                "--no-hashes",
                "--no-header",
                "--no-annotate",
                "--quiet",
                "--python",
                str(interpreter.path),
                *selection.uv_args,
                *_offline(request),
            ],
            what="`uv export --locked`",
            cwd=project.root,
        )
        if lock is None:
            lock = read_lock(project)  # uv could read it: raise ours
        sources = local_sources_from_export(
            exported.stdout, project, lock, interpreter.marker_environment()
        )
    plan = _LayerPlan.make(
        project, key, inputs["install_mode"], selection.only_groups, sources, inputs
    )
    return plan, sources, lock_local_dirs(lock), digest


def build_env(
    cache: EnvCache,
    resolved: ResolvedRequest,
    request: EnvRequest,
    last: Mapping[str, Any],
    *,
    rebuild: bool = False,
) -> tuple[dict[str, Any], _LayerPlan]:
    """Build the env in place under its lock; return its completion record and layer plan.

    ``last`` is the checkout's last build (see :func:`last_build`).

    The completion record is written last.

    Three things run at once, since none needs another's result: ``uv
    export --locked`` (it checks the lock and says which local packages
    the selection installs; skipped when the last build of the checkout
    asked the same, or when the project is the lock's only local package,
    see :func:`_exported_plan`), ``uv sync --locked
    --no-install-local`` into the env dir, and the project layer of the
    local packages the last build installed (see :func:`guess_sources`).
    If the lock is stale, missing or malformed, the uv commands fail; the
    export's error is raised if it ran, and the env dir (which ``uv sync``
    creates before it fails) and any layer made here are removed, so a
    failed build leaves the cache as it was.
    """
    from concurrent.futures import ThreadPoolExecutor

    project, selection, interpreter, key, inputs = resolved
    env_dir = cache.env_dir(key)
    remove_tree(env_dir)
    began = time.perf_counter()
    # The sync is the longest job: it starts first, and this thread waits
    # for it (a waiter in another thread would need the GIL back to see it
    # end, which costs up to a switch interval while this thread runs Python).
    sync = cache.uv.start(
        [
            "sync",
            "--locked",
            "--no-install-local",
            # Errors are still printed; progress would only wake this thread.
            "--quiet",
            "--python",
            str(interpreter.path),
            *selection.uv_args,
            *_offline(request),
        ],
        what="`uv sync --locked`",
        cwd=project.root,
        env={"UV_PROJECT_ENVIRONMENT": str(env_dir)},
    )
    failed: BaseException | None = None
    try:
        mode: InstallMode = inputs["install_mode"]
        guess = _LayerPlan.make(
            project,
            key,
            mode,
            selection.only_groups,
            guess_sources(last, project, selection),
            inputs,
        )
        guess_dir = guess.layer_dir(cache.root)
        guess_is_new = guess_dir is not None and (rebuild or not _layer_intact(guess_dir))
    except BaseException:
        sync.wait(check=False)
        remove_tree(env_dir)
        raise
    with ThreadPoolExecutor(max_workers=2) as pool:
        export_job = pool.submit(_exported_plan, cache, resolved, request, last, rebuild=rebuild)
        layer_job = pool.submit(
            cache._ensure_layer, guess, interpreter, request, None, rebuild=rebuild
        )
        try:
            sync.wait()
        except BaseException as exc:
            failed = exc
        # Wait for every job (each may still be making files), then pick the
        # error: the export's, if any, says best what is wrong with the lock.
        # The guessed layer's own failure counts only if uv wants that layer.
        export_failed, layer_failed = export_job.exception(), layer_job.exception()
        failed = export_failed or failed
        wanted = failed is None and export_job.result()[0].layer_dir(cache.root) == guess_dir
        if layer_failed is not None and wanted:
            failed = layer_failed
        if failed is not None:
            remove_tree(env_dir)
            if guess_is_new and guess_dir is not None:
                remove_tree(guess_dir)
            raise failed
        plan, sources, lock_dirs, export_digest = export_job.result()
    if plan.layer_dir(cache.root) != guess_dir:
        # The guess missed (a path dependency was added, say): its layer
        # is of no use to anyone, and the right one is made now.
        if guess_is_new and guess_dir is not None:
            remove_tree(guess_dir)
        try:
            cache._ensure_layer(plan, interpreter, request, None, rebuild=rebuild)
        except BaseException:
            remove_tree(env_dir)
            raise
    python = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    site = _find_site_packages(env_dir)
    if not python.exists() or site is None:
        remove_tree(env_dir)
        raise CacheError(
            f"uv sync finished but {python} or site-packages does not exist; this is a bug."
        )
    _drop_world_write(env_dir, site)
    record = {
        "format": FORMAT_VERSION,
        "key": key,
        "inputs": inputs,
        "project": str(project.root),
        "python": str(python),
        "interpreter": interpreter.describe(),
        "local_sources": [s.as_json() for s in sources],
        "lock_dirs": list(lock_dirs),
        # What a hit checks cheaply: these names must still be there.
        "site_packages": os.path.relpath(site, env_dir),
        "site_entries": top_level(site),
        "created": time.time(),
        "build_seconds": round(time.perf_counter() - began, 3),
    }
    # The completion record goes last: until it exists, nobody trusts the env.
    # It is not fsynced: that would flush the whole new env to disk first (a
    # journal commit), while a record a power cut leaves empty is unreadable,
    # which means a rebuild, and uv does not sync the env's own files anyway.
    try:
        write_atomic(env_dir / RECORD_NAME, json.dumps(record).encode(), fsync=False)
    except OSError:
        remove_tree(env_dir)  # a full disk: give back the space, trust nothing
        raise
    with contextlib.suppress(OSError):
        (cache.root / "checks" / cache._freshness_token(project, lock_dirs, inputs)).touch()
        last = {
            "root": str(project.root),
            "key": key,
            "inputs": inputs,
            "local_sources": record["local_sources"],
            "export_digest": export_digest,
        }
        write_atomic(cache._project_record(project), json.dumps(last).encode(), fsync=False)
    return record, plan


def _layer_donor(cache: EnvCache, plan: _LayerPlan, layer: Path) -> Path | None:
    """Another env's complete layer with the same digest, if there is one."""
    suffix = f"-{plan.digest}"
    try:
        names = sorted(os.listdir(layer.parent))
    except OSError:
        return None
    for name in names:
        if name.endswith(suffix) and name != layer.name and not name.startswith("."):
            candidate = layer.parent / name
            if _layer_intact(candidate):
                return candidate
    return None


def _copy_layer(cache: EnvCache, donor: Path, layer: Path, plan: _LayerPlan) -> bool:
    """Hard-link ``donor``'s files into ``layer``; ``False`` if the donor is busy or gone.

    The donor's layer lock is held meanwhile, so that nobody removes or
    rebuilds it half-way through; files that cannot be linked (another
    filesystem) are copied.
    """
    held = cache._try_lock(f"layer-{donor.name}")
    if held is None:
        return False
    try:
        if not _layer_intact(donor):
            return False
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{layer.name}.", dir=layer.parent))
        except OSError as exc:
            raise cache._not_writable(exc) from None
        try:
            shutil.copytree(
                donor / "site", staging / "site", symlinks=True, copy_function=_link_or_copy
            )
            _write_layer_record(staging, plan, copied_from=donor.name)
            remove_tree(layer)
            os.replace(staging, layer)
        except BaseException:
            remove_tree(staging)
            raise
    finally:
        held.release()
    return True


def _build_layer(
    cache: EnvCache, plan: _LayerPlan, layer: Path, interpreter: Interpreter, request: EnvRequest
) -> None:
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{layer.name}.", dir=layer.parent))
    except OSError as exc:
        raise cache._not_writable(exc) from None
    # The base interpreter has the env's version and platform, and uv
    # already knows it; a brand-new venv interpreter would cost uv a probe.
    python_args = ["--python", str(interpreter.path)]
    try:
        wheels = staging / "wheels"
        installables: list[str] = []
        for source in plan.to_install:
            path = source.path(plan.root)
            if source.kind == "archive":
                installables.append(str(path))
                continue
            with same_bytes_keep_mtimes([path]):
                cache.uv.run(
                    [
                        "build",
                        "--wheel",
                        "--quiet",
                        "--out-dir",
                        str(wheels / source.name),
                        *python_args,
                        *_offline(request),
                        str(path),
                    ],
                    what=f"`uv build --wheel` of {source.name} ({path})",
                    cwd=path,
                )
            installables += sorted(str(p) for p in (wheels / source.name).glob("*.whl"))
        # Wheels only (built here, or given as files) need nothing from an
        # index: uv runs offline, and without the certificates it would
        # otherwise load (see Uv.start). An sdist is built, which may need one.
        local_only = all(name.endswith(".whl") for name in installables)
        cache.uv.run(
            [
                "pip",
                "install",
                "--no-deps",
                "--quiet",
                *python_args,
                "--target",
                str(staging / "site"),
                *(["--offline"] if local_only else _offline(request)),
                *installables,
            ],
            what="`uv pip install` of the project layer",
            cwd=plan.root,
            local_only=local_only,
        )
        remove_tree(wheels)
        _drop_world_write(staging / "site")
        _write_layer_record(staging, plan)
        remove_tree(layer)
        os.replace(staging, layer)
    except BaseException:
        remove_tree(staging)
        raise


def make_layer(
    cache: EnvCache,
    plan: _LayerPlan,
    layer: Path,
    interpreter: Interpreter,
    request: EnvRequest,
    announce: Callable[[str], None] | None,
    *,
    rebuild: bool = False,
) -> None:
    """Make the project layer's files under its lock, unless someone made them meanwhile.

    A layer another env has with the same digest is hard-linked; else the
    local packages are built as wheels of the working tree and installed.
    """
    layer_lock = cache._acquire(f"layer-{layer.name}", f"project layer {layer.name}", announce)
    try:
        if rebuild or not _layer_intact(layer):
            why = "it is damaged" if layer.exists() else "local sources changed"
            donor = None if rebuild else _layer_donor(cache, plan, layer)
            copied = donor is not None and _copy_layer(cache, donor, layer, plan)
            if announce and copied:
                assert donor is not None
                announce(
                    f"linking project layer {plan.digest} of env {plan.key} "
                    f"({plan.names()}) from env {donor.name.split('-')[0]}: {why}"
                )
            elif announce:
                announce(
                    f"building project layer {plan.digest} of env {plan.key} "
                    f"({plan.names()}): {why}"
                )
            if not copied:
                _build_layer(cache, plan, layer, interpreter, request)
    finally:
        layer_lock.release()
