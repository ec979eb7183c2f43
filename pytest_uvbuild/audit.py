"""The version audit: lock against env, lock against host, baseline against now.

* **Lock ↔ env** compares every package installed in the env (and its
  project layer) with what the lock says the env should hold for its
  interpreter: missing, extra, another version, another kind of source. Any
  difference is *drift*, and drift fails the session.
* **Host ↔ lock** compares the interpreter running pytest with the lock:
  informational, the "works on my laptop" story in numbers.
* **Baseline ↔ now** compares this audit with an earlier build record's:
  packages added and removed, upgrades and downgrades by kind, changed
  sources, a changed Python or platform. With ``--uv-gate`` any difference
  fails the session. The comparison lives in :mod:`~pytest_uvbuild.baseline`,
  imported only by sessions that have a baseline.

Each package also says whether it is a direct dependency, through which
parents the lock reaches it, and its license from the installed metadata.
The result is ``audit.json`` (see ``docs/reference/audit-schema.md``) and a
readable ``audit.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from pytest_uvbuild.distinfo import dist_infos, parse_headers
from pytest_uvbuild.project import canonicalize_name

if TYPE_CHECKING:
    # The lock graph is walked only when a record is built; a warm session
    # reads the walk's result from the previous record.
    from pytest_uvbuild.lockgraph import LockGraph

__all__ = [
    "AUDIT_SCHEMA",
    "InstalledDist",
    "audit_markdown",
    "compute_drift",
    "compute_host_differences",
    "lock_packages",
    "read_license",
    "scan_installed",
    "verdict",
]

AUDIT_SCHEMA: Final = "pytest-uvbuild/audit"
AUDIT_SCHEMA_VERSION: Final = 1
RECORD_SCHEMA: Final = "pytest-uvbuild/build-record"


# -- installed distributions -------------------------------------------------


# A NamedTuple, not a dataclass: it costs a tenth as much to define, and every
# warm session imports this module.
class InstalledDist(NamedTuple):
    """One ``*.dist-info`` directory: name, version and where the files came from."""

    name: str
    version: str
    #: ``registry`` when installed from an index (no ``direct_url.json``),
    #: else ``url``, ``git``, ``directory`` or ``editable`` (PEP 610).
    source_kind: str
    commit: str | None
    path: Path


def _source_kind(label: str) -> str:
    """The kind part of a lock source label (``registry``, ``git``, ``editable``...)."""
    return label.split("+", 1)[0]


def _direct_url_kind(dist_info: Path) -> tuple[str, str | None]:
    try:
        data = json.loads((dist_info / "direct_url.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "registry", None
    except (OSError, ValueError):
        return "url", None
    if not isinstance(data, dict):
        return "url", None
    if isinstance(data.get("vcs_info"), dict):
        commit = data["vcs_info"].get("commit_id")
        return "git", commit if isinstance(commit, str) else None
    if isinstance(data.get("dir_info"), dict):
        return ("editable" if data["dir_info"].get("editable") else "directory"), None
    return "url", None


def scan_installed(paths: Iterable[Path]) -> dict[str, InstalledDist]:
    """Find the distributions installed in ``paths``; the first path holding a name wins.

    Names and versions come from the ``*.dist-info`` directory names (see
    :mod:`~pytest_uvbuild.distinfo`), which is fast enough for every session.
    """
    found: dict[str, InstalledDist] = {}
    for key, version, dist_info in dist_infos(paths):
        if key in found:
            continue
        kind, commit = _direct_url_kind(dist_info)
        found[key] = InstalledDist(key, version, kind, commit, dist_info)
    return found


def read_license(dist_info: Path) -> tuple[str, str] | None:
    """The license of an installed distribution as ``(text, kind)``, from its core metadata.

    ``License-Expression`` (PEP 639, kind ``expression``) wins, then the
    first line of ``License``, then the ``License ::`` classifiers (kind
    ``name``).
    """
    try:
        with (dist_info / "METADATA").open(encoding="utf-8", errors="replace") as fh:
            headers = parse_headers(fh)
    except OSError:
        return None
    expression = headers.get("License-Expression")
    if expression and str(expression).strip():
        return str(expression).strip(), "expression"
    text = headers.get("License")
    if text and str(text).strip() and str(text).strip().upper() != "UNKNOWN":
        first = str(text).strip().splitlines()[0].strip()
        return first[:120], "name"
    classifiers = [
        str(c).split("::")[-1].strip()
        for c in headers.get_all("Classifier") or []
        if str(c).startswith("License ::") and str(c).count("::") >= 2
    ]
    return (" AND ".join(sorted(set(classifiers))), "name") if classifiers else None


# -- the lock's view ---------------------------------------------------------


def _versions_equal(a: str, b: str) -> bool:
    if a == b:
        return True  # the usual case, decided without importing packaging
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return False


def lock_packages(
    graph: LockGraph,
    *,
    project: str | None,
    groups: Sequence[str],
    extras: Sequence[str],
    only_groups: bool,
    environment: Mapping[str, str],
    install_mode: str,
    licenses: Mapping[str, tuple[str, str] | None],
) -> list[dict[str, Any]]:
    """The selection's packages as ``audit.json`` lists them (deterministic for a build id).

    ``expected`` says what the env should hold: ``true`` (installed),
    ``false`` (its markers exclude this interpreter, or it is not installed
    in this install mode) or ``null`` (a marker could not be evaluated, so
    it is neither required nor reported as extra).
    """
    from pytest_uvbuild.lockgraph import SelectedPackage

    if project is not None and graph.find(project):
        selected = graph.select(
            project,
            groups=groups,
            extras=extras,
            only_groups=only_groups,
            environment=environment,
        )
    else:
        # A virtual workspace root is not a package of its lock, so there is
        # no walk to make: list every package, neither required nor extra.
        selected = {p.ref: SelectedPackage(p, in_env=None) for p in graph.packages}
    rows = []
    for ref, entry in selected.items():
        package = entry.package
        kind = _source_kind(package.source)
        is_root = project is not None and package.name == canonicalize_name(project)
        expected: bool | None = entry.in_env
        if kind == "virtual":
            expected = False  # a virtual project is never installed
        elif package.is_local and (install_mode == "source" or (is_root and install_mode == "no")):
            # Not a distribution in the env: in source mode local packages are
            # import roots on sys.path, and "no" leaves the project out.
            expected = None
        rows.append(
            {
                "name": package.name,
                "version": package.version,
                "ref": ref,
                "source": package.source,
                "root": is_root,
                "local": package.is_local,
                "direct": entry.direct,
                "via": sorted(entry.via),
                "expected": expected,
                "license": (licenses.get(package.name) or (None, None))[0],
                "license_kind": (licenses.get(package.name) or (None, None))[1],
                "hashes": sorted({a.hash for a in package.artifacts if a.hash}),
                "artifacts": [
                    {"filename": a.filename, "url": a.url, "hash": a.hash}
                    for a in package.artifacts
                ],
            }
        )
    return rows


# -- drift and host ----------------------------------------------------------


def compute_drift(
    packages: Sequence[Mapping[str, Any]], installed: Mapping[str, InstalledDist]
) -> list[dict[str, Any]]:
    """Differences between the lock's expectation and the env: one row per package."""
    drift: list[dict[str, Any]] = []
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for row in packages:
        by_name.setdefault(str(row["name"]), []).append(row)
    for name, rows in sorted(by_name.items()):
        expected = [r for r in rows if r["expected"] is True]
        unknown = any(r["expected"] is None for r in rows)
        dist = installed.get(name)
        if not expected:
            if dist is not None and not unknown:
                drift.append({"name": name, "problem": "extra", "lock": None, "env": dist.version})
            continue
        want = expected[0]
        if dist is None:
            drift.append({"name": name, "problem": "missing", "lock": want["version"], "env": None})
            continue
        if want["version"] is not None and not _versions_equal(str(want["version"]), dist.version):
            drift.append(
                {"name": name, "problem": "version", "lock": want["version"], "env": dist.version}
            )
            continue
        if not want["local"]:
            lock_kind = _source_kind(str(want["source"]))
            lock_kind = {"path": "url"}.get(lock_kind, lock_kind)
            commit_ok = lock_kind != "git" or (
                dist.commit is not None and str(want["source"]).endswith(dist.commit)
            )
            if lock_kind != dist.source_kind or not commit_ok:
                drift.append(
                    {
                        "name": name,
                        "problem": "source",
                        "lock": f"{want['version']} from {want['source']}",
                        "env": f"{dist.version} from {dist.source_kind}"
                        + (f" {dist.commit}" if dist.commit else ""),
                    }
                )
    for name, dist in sorted(installed.items()):
        if name not in by_name:
            drift.append({"name": name, "problem": "extra", "lock": None, "env": dist.version})
    return sorted(drift, key=lambda d: (d["name"], d["problem"]))


def compute_host_differences(
    packages: Sequence[Mapping[str, Any]], host: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Packages the env holds that the host lacks or has in another version.

    ``host`` maps each normalised name installed on the host to its version.
    """
    found = []
    seen: set[str] = set()
    for row in packages:
        name = str(row["name"])
        if row["expected"] is not True or row["local"] or name in seen:
            continue
        seen.add(name)
        version = host.get(name)
        if version is None:
            found.append({"name": name, "problem": "missing", "lock": row["version"], "host": None})
        elif row["version"] is not None and not _versions_equal(str(row["version"]), version):
            found.append(
                {"name": name, "problem": "version", "lock": row["version"], "host": version}
            )
    return found


def _summary(diff: Mapping[str, Any]) -> str:
    from pytest_uvbuild.baseline import baseline_summary  # only when there is a baseline

    return baseline_summary(diff)


def verdict(
    *,
    drift: Sequence[Mapping[str, Any]],
    baseline: Mapping[str, Any] | None,
    gate: bool,
    verify: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Decide whether the session fails, and say why in plain sentences."""
    reasons = []
    if drift:
        reasons.append(
            f"the env differs from uv.lock in {len(drift)} package(s) (drift); "
            "a hermetic run in a drifted env proves nothing. Fix: rerun with --uv-rebuild."
        )
    if gate and baseline is not None and baseline["differences"]:
        reasons.append(
            f"--uv-gate: {_summary(baseline)} against baseline {baseline['baseline']}. "
            "Fix: revert the lock change, or refresh the baseline from this build."
        )
    if verify is not None and not verify.get("ok", False):
        differing = ", ".join(
            name for name, state in sorted(verify.get("files", {}).items()) if state != "identical"
        )
        reasons.append(
            f"--uv-verify: rebuilding gave different bytes for {differing}; "
            "the build is not reproducible."
        )
    return {
        "gate": gate,
        "drift": len(drift),
        "baseline_differences": None if baseline is None else baseline["differences"],
        "failed": bool(reasons),
        "reasons": reasons,
    }


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def audit_markdown(audit: Mapping[str, Any]) -> str:
    """Render ``audit.json`` as the Markdown report ``audit.md``."""
    env = audit["env"]
    project = audit["project"]
    out = [
        f"# uv-build audit: {project.get('name') or 'project'} — build {audit['build_id']}",
        "",
        f"- env key: `{env['key']}` ({env['python']['implementation']} "
        f"{env['python']['version']}, {env['python']['platform']}, install {env['install_mode']})",
        f"- selection: groups {', '.join(env['groups']) or '—'}; "
        f"extras {', '.join(env['extras']) or '—'}",
        f"- host: {audit['host']['python']['implementation']} {audit['host']['python']['version']}",
        "",
    ]
    verdict_ = audit["verdict"]
    if verdict_["failed"]:
        out += ["## Verdict: FAILED", ""] + [f"- {r}" for r in verdict_["reasons"]] + [""]
    else:
        out += ["## Verdict: passed", ""]
    out += ["## Lock ↔ env (drift)", ""]
    if audit["drift"]:
        out += _table(
            ("package", "problem", "uv.lock", "env"),
            ((d["name"], d["problem"], d["lock"], d["env"]) for d in audit["drift"]),
        )
    else:
        out += ["The env matches uv.lock.", ""]
    out += ["## Baseline ↔ now", ""]
    diff = audit["baseline"]
    if diff is None:
        out += ["No baseline given (`--uv-baseline`).", ""]
    else:
        out += [f"Baseline: `{diff['baseline']}` (build {diff['baseline_id']})", ""]
        out += [_summary(diff) + ".", ""]
        if diff["changed"]:
            out += _table(
                ("package", "from", "to", "change", "kind"),
                (
                    (c["name"], c["from"], c["to"], c["direction"], c["kind"])
                    for c in diff["changed"]
                ),
            )
        for key, title in (("added", "Added"), ("removed", "Removed")):
            if diff[key]:
                out += [f"{title}:", ""]
                out += _table(
                    ("package", "version", "source"),
                    ((a["name"], a["version"], a["source"]) for a in diff[key]),
                )
        if diff["source_changed"]:
            out += _table(
                ("package", "source before", "source now"),
                ((s["name"], s["from"], s["to"]) for s in diff["source_changed"]),
            )
        for key in ("python", "platform"):
            if diff[key]:
                out += [f"- {key}: {diff[key]['from']} → {diff[key]['to']}", ""]
    out += ["## Host ↔ lock (informational)", ""]
    if audit["host_differences"]:
        out += _table(
            ("package", "problem", "uv.lock", "host"),
            ((h["name"], h["problem"], h["lock"], h["host"]) for h in audit["host_differences"]),
        )
    else:
        out += ["The host has every package of the env at the locked version.", ""]
    out += ["## Packages", ""]
    out += _table(
        ("package", "version", "dependency", "via", "license", "source"),
        (
            (
                p["name"],
                p["version"],
                "direct" if p["direct"] else "transitive",
                ", ".join(p["via"]),
                p["license"],
                p["source"],
            )
            for p in audit["packages"]
            if not p["root"]
        ),
    )
    return "\n".join(out)
