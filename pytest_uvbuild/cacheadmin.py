"""Listing, pruning and verifying the env cache: the ``cache`` commands.

Nothing here runs in a pytest session; :class:`~pytest_uvbuild.envcache.EnvCache`
hands ``entries``, ``prune`` and ``verify`` over to this module. Whatever
removes an env or a layer first takes its build lock without waiting (a
build in progress keeps what it is building), then withdraws the
completion record and looks for leases again (see ``EnvCache._withdraw``):
an env a running session holds is never removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_uvbuild.envbuild import _find_site_packages
from pytest_uvbuild.envcache import DAMAGED_NAME, LAYER_RECORD_NAME, RECORD_NAME
from pytest_uvbuild.fsutil import remove_tree, write_atomic
from pytest_uvbuild.integrity import verify_site

if TYPE_CHECKING:
    from pytest_uvbuild.envcache import EnvCache

__all__ = ["CacheEntry", "VerifyResult", "entries", "parse_age", "prune", "verify"]


class CacheEntry(NamedTuple):
    """One env in the cache, as ``cache list`` shows it."""

    key: str
    path: Path
    project: str
    python: str
    size: int
    last_used: float
    complete: bool
    in_use: bool

    def as_json(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict."""
        return {
            "key": self.key,
            "path": str(self.path),
            "project": self.project,
            "python": self.python,
            "size": self.size,
            "last_used": self.last_used,
            "complete": self.complete,
            "in_use": self.in_use,
        }


class VerifyResult(NamedTuple):
    """What ``cache verify`` found for one env: problems per checked site directory."""

    key: str
    busy: bool
    problems: tuple[str, ...]
    damaged_layers: tuple[str, ...]
    #: Distributions with a file changed in place: uv's cache may hold the same change.
    changed: tuple[str, ...] = ()

    @property
    def damaged(self) -> bool:
        """Whether any file of the env or of its project layers is missing or changed."""
        return bool(self.problems or self.damaged_layers)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def parse_age(text: str) -> float:
    """Parse ``30d``, ``12h``, ``45m`` or ``90s`` (or a bare number of days) into seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        value = float(number)
        if not math.isfinite(value):  # float() takes "nan" and "inf": no age is either
            raise ValueError(number)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an age; use a number with s, m, h, d or w (e.g. 30d)"
        ) from None
    if value < 0:
        raise ValueError(f"{text!r} is negative; use e.g. 30d")
    return value * units[unit]


def entries(cache: EnvCache) -> list[CacheEntry]:
    """Return every env directory in the cache, complete or not."""
    envs = cache.root / "envs"
    try:
        keys = sorted(k for k in os.listdir(envs) if not k.startswith("."))
    except OSError:
        return []
    found: list[CacheEntry] = []
    for key in keys:
        path = envs / key
        if not path.is_dir():
            continue
        record, _ = cache._read_record(key)
        record_path = path / RECORD_NAME
        try:
            last_used = record_path.stat().st_mtime
        except OSError:
            last_used = path.stat().st_mtime
        found.append(
            CacheEntry(
                key=key,
                path=path,
                project=str(record.get("project", "?")) if record else "?",
                python=str(record.get("interpreter", "?")) if record else "?",
                size=_dir_size(path),
                last_used=last_used,
                complete=record is not None,
                in_use=cache._lease_in_use(key),
            )
        )
    return found


def prune(
    cache: EnvCache, *, older_than: float | None = None, everything: bool = False
) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Remove envs unused for ``older_than`` seconds (or all); return (removed, kept busy).

    Incomplete envs are always removed. An env that some session holds a
    lease on, or that is being built, is never removed. Project layers
    of kept envs that were not used for ``older_than`` go as well, and so do
    the small per-checkout records not written for that long (all of them
    with ``everything``).
    """
    now = time.time()
    removed: list[CacheEntry] = []
    busy: list[CacheEntry] = []
    for entry in entries(cache):
        stale = (
            everything
            or (older_than is not None and now - entry.last_used >= older_than)
            or not entry.complete
        )
        lock = cache._try_lock(entry.key)
        if lock is None:
            if stale:
                busy.append(entry)
            continue
        try:
            if stale:
                if cache._withdraw(entry.key):
                    _remove_env(cache, entry.key)
                    removed.append(entry)
                else:
                    busy.append(entry)
            elif older_than is not None:
                _prune_layers(cache, entry.key, now - older_than)
        finally:
            lock.release()
    _sweep_leftovers(cache, now)
    if everything:
        _prune_small_records(cache, float("inf"))
    elif older_than is not None:
        _prune_small_records(cache, now - older_than)
    return removed, busy


def verify(cache: EnvCache) -> list[VerifyResult]:
    """Check every complete env and its project layers file by file against their RECORDs.

    A damaged env loses its completion record (a note saying why takes
    its place), and a damaged layer its ``layer.json``, so the next
    session rebuilds them; the files stay, for any session still using
    them. An env being built is reported busy and not checked.
    """
    results: list[VerifyResult] = []
    for entry in entries(cache):
        if not entry.complete:
            continue
        lock = cache._try_lock(entry.key)
        if lock is None:
            results.append(VerifyResult(entry.key, True, (), ()))
            continue
        try:
            results.append(_verify_env(cache, entry.key))
        finally:
            lock.release()
    return results


def _verify_env(cache: EnvCache, key: str) -> VerifyResult:
    env = cache.env_dir(key)
    site = _find_site_packages(env)
    damage = verify_site(site) if site is not None else []
    problems = [str(d) for d in damage] if site is not None else ["site-packages is gone"]
    if problems:
        write_atomic(env / DAMAGED_NAME, json.dumps({"problems": problems}, indent=1).encode())
        (env / RECORD_NAME).unlink(missing_ok=True)
    damaged_layers = []
    for layer in sorted((cache.root / "layers").glob(f"{key}-*")):
        if (layer / LAYER_RECORD_NAME).is_file() and verify_site(layer / "site"):
            damaged_layers.append(layer.name)
            (layer / LAYER_RECORD_NAME).unlink(missing_ok=True)
    changed = sorted({d.distribution for d in damage if d.kind == "changed"})
    return VerifyResult(key, False, tuple(problems), tuple(damaged_layers), tuple(changed))


def _prune_layers(cache: EnvCache, key: str, cutoff: float) -> None:
    """Remove the env's layers unused since ``cutoff``, while no session leases the env.

    As for envs (see ``EnvCache._withdraw``), a layer loses its ``layer.json``
    before leases are looked at again: a session that leased the env in
    between may be about to use the layer, which then stays.
    """
    if cache._lease_in_use(key):
        return
    for layer in (cache.root / "layers").glob(f"{key}-*"):
        record = layer / LAYER_RECORD_NAME
        try:
            used = record.stat().st_mtime
        except OSError:
            used = 0.0
        if used >= cutoff:
            continue
        held = cache._try_lock(f"layer-{layer.name}")
        if held is None:
            continue  # being built right now
        try:
            try:
                saved: bytes | None = record.read_bytes()
            except OSError:
                saved = None
            record.unlink(missing_ok=True)
            if saved is not None and cache._lease_in_use(key):
                write_atomic(record, saved)
                continue
            remove_tree(layer)
        finally:
            held.release()


def _remove_layer(cache: EnvCache, layer: Path) -> None:
    """Remove a layer, unless it is being built or copied right now (a later prune will)."""
    held = cache._try_lock(f"layer-{layer.name}")
    if held is None:
        return
    try:
        (layer / LAYER_RECORD_NAME).unlink(missing_ok=True)
        remove_tree(layer)
    finally:
        held.release()


def _sweep_leftovers(cache: EnvCache, now: float) -> None:
    """Remove what interrupted builds and prunes left: staging and trash dirs, orphan layers."""
    envs = cache.root / "envs"
    for parent in (envs, cache.root / "layers"):
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            path = parent / name
            if name.startswith("."):
                # A staging dir may belong to a build running right now;
                # one untouched for a day belongs to a dead process.
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > 86400 or name.startswith(".trash-"):
                        remove_tree(path)
            elif parent.name == "layers" and not (envs / name.split("-", 1)[0]).is_dir():
                _remove_orphan_layer(cache, path, name.split("-", 1)[0])


#: Cache subdirectories of small files that only save work (one per checkout,
#: per lock check, per probed binary): removing one costs a later session
#: the time to make it again, never a wrong answer.
_SMALL_RECORD_DIRS = ("projects", "checks", "probes", "sdist-sources", "audit-rows")


def _prune_small_records(cache: EnvCache, cutoff: float) -> None:
    """Remove the small records last written before ``cutoff`` (a time stamp).

    They accumulate per checkout: a CI runner that clones into a new
    directory for every job would otherwise leave one of each per job.
    """
    for name in _SMALL_RECORD_DIRS:
        try:
            files = list(os.scandir(cache.root / name))
        except OSError:
            continue
        for entry in files:
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


def _remove_orphan_layer(cache: EnvCache, layer: Path, key: str) -> None:
    """Remove a layer whose env is gone, unless that env is being built right now.

    A layer is built alongside its env and may be complete before uv has
    created the env's directory; removing it then would pull it from
    under the session that is building both.
    """
    lock = cache._try_lock(key)
    if lock is None:
        return
    try:
        if not cache.env_dir(key).is_dir():
            _remove_layer(cache, layer)
    finally:
        lock.release()


def _remove_env(cache: EnvCache, key: str) -> None:
    """Remove an env whose record ``EnvCache._withdraw`` took away, with its layers and leases."""
    env = cache.env_dir(key)
    trash = cache.root / "envs" / f".trash-{key}-{os.getpid()}"
    try:
        os.replace(env, trash)
    except OSError:
        trash = env
    remove_tree(trash)
    for layer in (cache.root / "layers").glob(f"{key}-*"):
        _remove_layer(cache, layer)
    remove_tree(cache.root / "leases" / key)
