"""Read existing build records: ``show``, ``diff`` and ``verify`` of the command line.

``verify`` is the reproducibility proof after the fact: it re-checks every
file against ``SHA256SUMS``, then rebuilds the requirements export and the
sdist from the project's working tree (which must still have the record's
``uv.lock`` and ``pyproject.toml``) in a fresh temporary directory, and
compares the bytes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_uvbuild.artifacts import LOCK_COPY, REQUIREMENTS, SUMS, RecordError, read_sums
from pytest_uvbuild.audit import RECORD_SCHEMA
from pytest_uvbuild.baseline import baseline_summary, load_baseline
from pytest_uvbuild.fsutil import file_sha256, remove_tree
from pytest_uvbuild.recordfiles import build_products, compare_products

__all__ = [
    "VerifyResult",
    "check_sums",
    "diff_lines",
    "load_metadata",
    "show_lines",
    "verify_lines",
    "verify_record",
]


def load_metadata(record_dir: Path) -> dict[str, Any]:
    """Read a record's ``metadata.json``; one clear error when it is not a record."""
    if not record_dir.is_dir():
        what = "does not exist" if not record_dir.exists() else "is not a directory"
        raise RecordError(
            f"{record_dir} {what}. Fix: pass a build record directory such as builds/<id>/."
        )
    path = record_dir / "metadata.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(
            f"{record_dir} has no metadata.json, so it is not a build record. "
            "Fix: pass a directory such as builds/<id>/."
        ) from None
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path} cannot be read as JSON ({exc}).") from None
    if not isinstance(data, dict) or data.get("schema") != RECORD_SCHEMA:
        raise RecordError(f"{path} is not a pytest-uvbuild build record.")
    return data


def check_sums(record_dir: Path) -> list[tuple[str, str]]:
    """Check every file against ``SHA256SUMS``.

    Each file gets one state: ``ok``, ``MODIFIED``, ``MISSING`` or ``UNLISTED``.
    """
    sums = read_sums(record_dir)
    if sums is None:
        return [(SUMS, "MISSING")]
    states = []
    for name, digest in sorted(sums.items()):
        path = record_dir / name
        if not path.is_file():
            states.append((name, "MISSING"))
        else:
            states.append((name, "ok" if file_sha256(path) == digest else "MODIFIED"))
    for name in sorted(os.listdir(record_dir)):
        if name != SUMS and name not in sums and (record_dir / name).is_file():
            states.append((name, "UNLISTED"))
    return states


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    return f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB"


def show_lines(record_dir: Path) -> list[str]:
    """A readable summary of one record."""
    meta = load_metadata(record_dir)
    inputs = meta.get("inputs", {})
    python = inputs.get("python", {})
    project = meta.get("project") or {}
    run = meta.get("run") or {}
    hermetic = run.get("hermetic") or {}
    sums = check_sums(record_dir)
    intact = all(state == "ok" for _, state in sums)
    lines = [
        f"build     {meta.get('id')} ({'complete' if intact else 'INCOMPLETE or modified'})",
        f"project   {project.get('name')} {project.get('version')}",
        f"python    {python.get('implementation')} {python.get('version')} "
        f"({python.get('platform')})",
        f"env key   {inputs.get('env_key')} (install {inputs.get('install_mode')}, "
        f"groups {', '.join(inputs.get('groups', [])) or '-'}, "
        f"extras {', '.join(inputs.get('extras', [])) or '-'})",
        f"uv        {inputs.get('uv_version')}, pytest-uvbuild {inputs.get('plugin_version')}",
        f"created   {meta.get('created')}; last run {run.get('started')} "
        f"({run.get('duration_seconds')} s, exit status {run.get('exit_status')})",
        "hermetic  "
        + ", ".join(f"{hermetic.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped")),
    ]
    for node in hermetic.get("failing", []):
        lines.append(f"          failing: {node}")
    git = meta.get("git")
    if git:
        state = "dirty" if git.get("dirty") else "clean"
        # A repository with no commit yet has a branch but no commit.
        commit = git.get("commit") or "no commit yet"
        lines.append(
            f"git       {commit} ({git.get('branch') or 'detached'}, {state})"
            + (f" {git.get('remote_url')}" if git.get("remote_url") else "")
        )
    else:
        lines.append("git       not a git checkout")
    packages = meta.get("packages", [])
    lines.append(f"packages  {len(packages)}")
    audit = meta.get("audit") or {}
    lines.append(
        f"audit     drift {audit.get('drift')}, host differences "
        f"{audit.get('host_differences')}, baseline differences "
        f"{audit.get('baseline_differences')}, " + ("FAILED" if audit.get("failed") else "passed")
    )
    verify = meta.get("verify")
    lines.append(
        "verify    "
        + ("not run" if verify is None else "identical" if verify.get("ok") else "DIFFERENT")
    )
    lines.append("files")
    for name, state in sums:
        lines.append(f"  {name:<28} {_size(record_dir / name):>10}  {state}")
    return lines


def diff_lines(a: Path, b: Path) -> tuple[bool, list[str]]:
    """The audit difference from record ``a`` to record ``b``; (differs, lines)."""
    from pytest_uvbuild.baseline import diff_detail_lines, diff_records

    diff = diff_records(load_baseline(a), load_baseline(b))
    lines = [f"{a} -> {b}: {baseline_summary(diff)}", *diff_detail_lines(diff)]
    return bool(diff["differences"]), lines


@dataclass
class VerifyResult:
    """The outcome of ``verify``: manifest states and rebuild comparison."""

    sums: list[tuple[str, str]]
    rebuild: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Whether every file matches its manifest and the rebuild is byte-identical."""
        return all(s == "ok" for _, s in self.sums) and bool(self.rebuild.get("ok"))


def verify_record(
    record_dir: Path, *, project_dir: Path | None = None, offline: bool = False
) -> VerifyResult:
    """Re-check ``SHA256SUMS`` and rebuild the requirements and sdist to prove byte identity."""
    from pytest_uvbuild.project import find_project
    from pytest_uvbuild.uvcli import Uv

    meta = load_metadata(record_dir)
    inputs = meta["inputs"]
    sums = check_sums(record_dir)
    recorded_root = (meta.get("run") or {}).get("project_root")
    if project_dir is None and recorded_root and Path(recorded_root).is_dir():
        project_dir = Path(recorded_root)
    project = find_project(Path.cwd(), project_dir)
    for label, path, key in (
        ("uv.lock", project.lock_path, "lock_sha256"),
        ("pyproject.toml", project.pyproject_path, "pyproject_sha256"),
    ):
        if file_sha256(path) != inputs.get(key):
            commit = (meta.get("git") or {}).get("commit")
            hint = f" (check out commit {commit})" if commit else ""
            raise RecordError(
                f"{path} is not the {label} this record was built from, so a rebuild "
                f"cannot prove anything. Fix: verify from a checkout of the record's "
                f"sources{hint}, or pass --project DIR."
            )
    expected = {REQUIREMENTS: record_dir / REQUIREMENTS, LOCK_COPY: record_dir / LOCK_COPY}
    sdist = (meta.get("files") or {}).get("sdist")
    if sdist:
        expected[sdist] = record_dir / sdist
    scratch = Path(tempfile.mkdtemp(prefix="pytest-uvbuild-verify-"))
    try:
        rebuilt = build_products(
            Uv.locate(),
            project.root,
            bool(sdist),
            inputs,
            project.lock_path.read_bytes(),
            scratch / "out",
            python=Path(sys.executable),
            offline=offline,
        )
        comparison = compare_products(expected, rebuilt)
    finally:
        remove_tree(scratch)
    return VerifyResult(sums=sums, rebuild=comparison)


def verify_lines(result: VerifyResult) -> Sequence[str]:
    """Human lines for a :class:`VerifyResult`."""
    lines = ["manifest (SHA256SUMS):"]
    lines += [f"  {name:<28} {state}" for name, state in result.sums]
    lines.append("rebuild in a fresh temporary directory:")
    lines += [f"  {name:<28} {state}" for name, state in result.rebuild["files"].items()]
    lines.append("verified: byte-identical" if result.ok else "NOT verified")
    return lines
