"""The baseline comparison: this session against an earlier build record.

``--uv-baseline=PATH`` (a ``builds/<id>/`` directory, its ``audit.json`` or
its ``metadata.json``) is loaded into a :class:`Baseline`, and compared with
the session's packages and Python: packages added and removed, upgrades and
downgrades by kind, changed sources. Only sessions with a baseline, and
``python -m pytest_uvbuild diff``, import this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pytest_uvbuild.audit import AUDIT_SCHEMA, RECORD_SCHEMA
from pytest_uvbuild.errors import UvBuildError
from pytest_uvbuild.project import canonicalize_name

__all__ = [
    "Baseline",
    "BaselineError",
    "baseline_diff",
    "baseline_from_json",
    "baseline_summary",
    "change_kind",
    "diff_detail_lines",
    "diff_records",
    "load_baseline",
]


class BaselineError(UvBuildError, ValueError):
    """The ``--uv-baseline`` path is not an earlier build record."""


class Baseline(NamedTuple):
    """What a baseline comparison needs from an earlier build record."""

    origin: str
    build_id: str | None
    python: Mapping[str, Any]
    #: Normalised name to the sorted versions and sources the record lists.
    packages: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]


def _packages_view(
    rows: Iterable[Mapping[str, Any]],
) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    versions: dict[str, set[str]] = {}
    sources: dict[str, set[str]] = {}
    for row in rows:
        if row.get("root"):
            continue
        name = canonicalize_name(str(row["name"]))
        versions.setdefault(name, set()).add(str(row.get("version")))
        sources.setdefault(name, set()).add(str(row.get("source")))
    return {n: (tuple(sorted(versions[n])), tuple(sorted(sources[n]))) for n in sorted(versions)}


def baseline_from_json(data: Any, origin: str) -> Baseline:
    """Read an ``audit.json`` or ``metadata.json`` payload as a baseline."""
    if not isinstance(data, dict):
        raise BaselineError(f"{origin} is not a pytest-uvbuild build record (not a JSON object).")
    schema = data.get("schema")
    try:
        if schema == AUDIT_SCHEMA:
            return Baseline(
                origin=origin,
                build_id=data.get("build_id"),
                python=dict(data["env"]["python"]),
                packages=_packages_view(data["packages"]),
            )
        if schema == RECORD_SCHEMA:
            rows = [
                {"name": p["name"], "version": p["version"], "source": p["source"]}
                for p in data["packages"]
            ]
            return Baseline(
                origin=origin,
                build_id=data.get("id"),
                python=dict(data["inputs"]["python"]),
                packages=_packages_view(rows),
            )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BaselineError(
            f"{origin} is a pytest-uvbuild record but lacks {exc} "
            "(damaged, or written by another version). Fix: point --uv-baseline at a build "
            "directory written by this version, or at its audit.json or metadata.json."
        ) from None
    raise BaselineError(
        f"{origin} is not a pytest-uvbuild audit.json or metadata.json "
        f"(schema {schema!r}). Fix: point --uv-baseline at a build directory "
        "(builds/<id>/) or at its audit.json or metadata.json."
    )


def load_baseline(path: Path) -> Baseline:
    """Load a baseline from a build directory, its ``audit.json`` or its ``metadata.json``."""
    if path.is_dir():
        candidates = [path / "audit.json", path / "metadata.json"]
        chosen = next((c for c in candidates if c.is_file()), None)
        if chosen is None:
            raise BaselineError(
                f"Baseline {path} is a directory without audit.json or metadata.json. "
                "Fix: point --uv-baseline at a build directory (builds/<id>/) or at its "
                "audit.json or metadata.json."
            )
        path = chosen
    elif not path.exists():
        raise BaselineError(
            f"Baseline {path} does not exist. Fix: point --uv-baseline at an earlier "
            "build directory (builds/<id>/) or its audit.json or metadata.json."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BaselineError(
            f"Baseline {path} is not a text file, let alone JSON. Fix: point --uv-baseline "
            "at a build directory (builds/<id>/) or at its audit.json or metadata.json."
        ) from None
    except OSError as exc:
        raise BaselineError(
            f"Baseline {path} cannot be read ({exc.strerror or exc}). Fix: make it readable, "
            "or point --uv-baseline at another build directory or its audit.json."
        ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BaselineError(
            f"Baseline {path} is not JSON ({exc}). Fix: point --uv-baseline at a build "
            "directory (builds/<id>/) or at its audit.json or metadata.json."
        ) from None
    return baseline_from_json(data, str(path))


def change_kind(old: str, new: str) -> tuple[str, str]:
    """Classify a version change as (``upgrade``/``downgrade``/``changed``, kind).

    The kind is the first release component that differs: ``major``,
    ``minor`` or ``patch``; with equal releases, ``pre-release`` when a pre-
    or dev-release part differs, else ``other`` (post-release, local, or an
    unparseable version).
    """
    from packaging.version import InvalidVersion, Version

    try:
        a, b = Version(old), Version(new)
    except InvalidVersion:
        return "changed", "other"
    direction = "upgrade" if b > a else "downgrade" if b < a else "changed"
    if a.epoch != b.epoch:
        return direction, "major"
    ra = (*a.release, 0, 0, 0)
    rb = (*b.release, 0, 0, 0)
    for index, kind in enumerate(("major", "minor", "patch")):
        if ra[index] != rb[index]:
            return direction, kind
    if a.pre != b.pre or a.dev != b.dev:
        return direction, "pre-release"
    return direction, "other"


def _python_facts(python: Mapping[str, Any]) -> tuple[str, str]:
    impl = str(python.get("implementation", "?"))
    return f"{impl} {python.get('version', '?')}", str(python.get("platform", "?"))


def baseline_diff(
    baseline: Baseline, now_packages: Sequence[Mapping[str, Any]], now_python: Mapping[str, Any]
) -> dict[str, Any]:
    """Differences between a baseline and this build: what a gate fails on."""
    now = Baseline(
        origin="this build", build_id=None, python=now_python, packages=_packages_view(now_packages)
    )
    return diff_records(baseline, now)


def diff_records(baseline: Baseline, current: Baseline) -> dict[str, Any]:
    """Differences from ``baseline`` to ``current``: packages, versions, sources, Python."""
    now = current.packages
    before = baseline.packages
    added = [
        {"name": n, "version": ", ".join(now[n][0]), "source": ", ".join(now[n][1])}
        for n in sorted(set(now) - set(before))
    ]
    removed = [
        {"name": n, "version": ", ".join(before[n][0]), "source": ", ".join(before[n][1])}
        for n in sorted(set(before) - set(now))
    ]
    changed = []
    sources = []
    for name in sorted(set(now) & set(before)):
        old_versions, old_sources = before[name]
        new_versions, new_sources = now[name]
        if old_versions != new_versions:
            if len(old_versions) == 1 and len(new_versions) == 1:
                direction, kind = change_kind(old_versions[0], new_versions[0])
            else:
                direction, kind = "changed", "other"
            changed.append(
                {
                    "name": name,
                    "from": ", ".join(old_versions),
                    "to": ", ".join(new_versions),
                    "direction": direction,
                    "kind": kind,
                }
            )
        if old_sources != new_sources:
            sources.append(
                {"name": name, "from": ", ".join(old_sources), "to": ", ".join(new_sources)}
            )
    old_python, old_platform = _python_facts(baseline.python)
    new_python, new_platform = _python_facts(current.python)
    python = {"from": old_python, "to": new_python} if old_python != new_python else None
    platform = {"from": old_platform, "to": new_platform} if old_platform != new_platform else None
    count = len(added) + len(removed) + len(changed) + len(sources)
    count += (python is not None) + (platform is not None)
    return {
        "baseline": baseline.origin,
        "baseline_id": baseline.build_id,
        "added": added,
        "removed": removed,
        "changed": changed,
        "source_changed": sources,
        "python": python,
        "platform": platform,
        "differences": count,
    }


def baseline_summary(diff: Mapping[str, Any]) -> str:
    """One line such as ``3 differences: 2 upgraded (1 major), 1 added``."""
    if not diff["differences"]:
        return "no differences"
    parts = []
    ups = [c for c in diff["changed"] if c["direction"] == "upgrade"]
    downs = [c for c in diff["changed"] if c["direction"] == "downgrade"]
    others = [c for c in diff["changed"] if c["direction"] == "changed"]
    for label, items in (("upgraded", ups), ("downgraded", downs), ("changed", others)):
        if items:
            kinds: dict[str, int] = {}
            for item in items:
                kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
            detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            parts.append(f"{len(items)} {label} ({detail})")
    for label, key in (("added", "added"), ("removed", "removed")):
        if diff[key]:
            parts.append(f"{len(diff[key])} {label}")
    if diff["source_changed"]:
        parts.append(f"{len(diff['source_changed'])} changed source")
    if diff["python"]:
        parts.append(f"python {diff['python']['from']} -> {diff['python']['to']}")
    if diff["platform"]:
        parts.append(f"platform {diff['platform']['from']} -> {diff['platform']['to']}")
    noun = "difference" if diff["differences"] == 1 else "differences"
    return f"{diff['differences']} {noun}: " + ", ".join(parts)


def diff_detail_lines(diff: Mapping[str, Any]) -> list[str]:
    """One indented line per difference of a :func:`diff_records` result."""
    lines = [
        f"  {c['name']}: {c['from']} -> {c['to']} ({c['direction']}, {c['kind']})"
        for c in diff["changed"]
    ]
    lines += [f"  {a['name']}: added {a['version']}" for a in diff["added"]]
    lines += [f"  {r['name']}: removed (was {r['version']})" for r in diff["removed"]]
    lines += [f"  {s['name']}: source {s['from']} -> {s['to']}" for s in diff["source_changed"]]
    lines += [
        f"  {key}: {diff[key]['from']} -> {diff[key]['to']}"
        for key in ("python", "platform")
        if diff[key]
    ]
    return lines


# -- verdict and report ------------------------------------------------------
