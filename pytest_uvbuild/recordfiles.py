"""The deterministic files of a new build record, and what proves them.

``requirements.txt`` (``uv export --frozen`` of the selection), the copy of
``uv.lock``, the repacked sdist carrying both, the SBOM and the lock's
package rows are made only when a record is new (or for ``--uv-verify``);
a session that reuses its record never imports this module (see
:mod:`~pytest_uvbuild.artifacts`).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_uvbuild import __version__
from pytest_uvbuild.artifacts import (
    LOCK_COPY,
    REQUIREMENTS,
    RecordError,
    RecordPlan,
    _json_bytes,
)
from pytest_uvbuild.audit import lock_packages, read_license
from pytest_uvbuild.fsutil import remove_tree

if TYPE_CHECKING:
    from pytest_uvbuild.audit import InstalledDist
    from pytest_uvbuild.envcache import UvEnv
    from pytest_uvbuild.uvcli import Uv

__all__ = [
    "build_products",
    "compare_products",
    "env_products",
    "export_args",
    "export_requirements",
    "fresh_rows",
    "sbom_bytes",
    "verify_products",
]


def export_args(groups: Sequence[str], extras: Sequence[str], only_groups: bool) -> list[str]:
    """uv flags selecting exactly ``groups`` and ``extras``, spelled one canonical way.

    The record stores the effective selection, not the user's flags, so a
    later ``verify`` rebuilds the same export from the metadata alone.
    """
    args: list[str] = []
    if only_groups:
        for group in groups:
            args += ["--only-group", group]
    else:
        args.append("--no-default-groups")
        for group in groups:
            args += ["--group", group]
    for extra in extras:
        args += ["--extra", extra]
    return args


def export_requirements(
    uv: Uv, project_root: Path, inputs: Mapping[str, Any], *, offline: bool
) -> bytes:
    """``uv export --frozen`` of the recorded selection, with hashes, without the project."""
    args = [
        "export",
        "--frozen",
        "--format",
        "requirements-txt",
        "--no-emit-project",
        "--no-header",
        *export_args(inputs["groups"], inputs["extras"], bool(inputs["only_groups"])),
    ]
    if offline:
        args.append("--offline")
    proc = uv.run(args, what="`uv export --frozen`", cwd=project_root)
    return proc.stdout.encode()


def build_products(
    uv: Uv,
    project_root: Path,
    is_package: bool,
    inputs: Mapping[str, Any],
    lock_bytes: bytes,
    out_dir: Path,
    *,
    python: Path | None,
    offline: bool,
    prebuilt_sdist: Path | None = None,
) -> dict[str, Path]:
    """Write requirements.txt, the lock copy and the repacked sdist into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    requirements = export_requirements(uv, project_root, inputs, offline=offline)
    made = {REQUIREMENTS: out_dir / REQUIREMENTS, LOCK_COPY: out_dir / LOCK_COPY}
    made[REQUIREMENTS].write_bytes(requirements)
    made[LOCK_COPY].write_bytes(lock_bytes)
    if is_package:
        from pytest_uvbuild.sdist import build_sdist, repack_sdist

        scratch = None
        sdist = prebuilt_sdist
        try:
            if sdist is None:
                scratch = Path(tempfile.mkdtemp(prefix="pytest-uvbuild-sdist-"))
                sdist = build_sdist(uv, project_root, scratch, python=python, offline=offline)
            dest = out_dir / sdist.name
            repack_sdist(
                sdist,
                dest,
                {REQUIREMENTS: requirements, LOCK_COPY: lock_bytes},
                mtime=inputs["source_date_epoch"] or 0,
            )
            made[sdist.name] = dest
        finally:
            if scratch is not None:
                remove_tree(scratch)
    return made


def compare_products(expected: Mapping[str, Path], rebuilt: Mapping[str, Path]) -> dict[str, Any]:
    """Compare two sets of products byte for byte."""
    states = {}
    for name in sorted(set(expected) | set(rebuilt)):
        if name not in rebuilt:
            states[name] = "missing from the rebuild"
        elif name not in expected:
            states[name] = "missing from the record"
        else:
            same = expected[name].read_bytes() == rebuilt[name].read_bytes()
            states[name] = "identical" if same else "different"
    return {"ok": all(s == "identical" for s in states.values()), "files": states}


def fresh_rows(
    env: UvEnv, lock_bytes: bytes, installed: Mapping[str, InstalledDist]
) -> list[dict[str, Any]]:
    """Package rows from the lock graph (the cold path: parses uv.lock).

    ``installed`` is what the env holds (:func:`~pytest_uvbuild.audit.scan_installed`),
    where the licenses are read.
    """
    from pytest_uvbuild.lockgraph import LockGraph, marker_environment

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        lock = tomllib.loads(lock_bytes.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecordError(
            f"{env.project.lock_path} cannot be parsed ({exc}). Fix: run `uv lock`."
        ) from None
    graph = LockGraph.from_lock(lock)
    licenses = {name: read_license(dist.path) for name, dist in installed.items()}
    return lock_packages(
        graph,
        project=env.project.name,
        groups=env.selection.groups,
        extras=env.selection.extras,
        only_groups=bool(env.selection.only_groups),
        environment=marker_environment(
            implementation=env.interpreter.implementation,
            version=env.interpreter.version,
            machine=env.interpreter.machine,
        ),
        install_mode=env.install_mode,
        licenses=licenses,
    )


def env_products(
    uv: Uv, env: UvEnv, plan: RecordPlan, out_dir: Path, *, offline: bool, reuse_sdist: bool
) -> dict[str, Path]:
    return build_products(
        uv,
        env.project.root,
        env.project.is_package,
        plan.inputs,
        plan.lock_bytes,
        out_dir,
        python=env.interpreter.path,
        offline=offline,
        prebuilt_sdist=plan.prebuilt_sdist if reuse_sdist else None,
    )


def verify_products(
    uv: Uv, env: UvEnv, plan: RecordPlan, products: Mapping[str, Path], *, offline: bool
) -> dict[str, Any]:
    """Rebuild in a fresh temporary directory (never reusing an sdist) and compare bytes."""
    fresh = Path(tempfile.mkdtemp(prefix="pytest-uvbuild-verify-"))
    try:
        rebuilt = env_products(uv, env, plan, fresh / "out", offline=offline, reuse_sdist=False)
        return compare_products(products, rebuilt)
    finally:
        remove_tree(fresh)


def sbom_bytes(env: UvEnv, plan: RecordPlan, rows: list[dict[str, Any]]) -> bytes:
    """The record's CycloneDX SBOM, made from the lock's package rows and the plan's inputs."""
    from pytest_uvbuild.sbom import build_sbom

    root = next((r for r in rows if r.get("root")), None)
    bom = build_sbom(
        rows,
        project_name=env.project.name,
        project_version=root["version"] if root else None,
        tool_versions={"pytest-uvbuild": __version__, "uv": plan.inputs["uv_version"]},
        properties={
            "pytest-uvbuild:build-id": plan.build_id,
            "pytest-uvbuild:env-key": env.key,
            "pytest-uvbuild:groups": ",".join(plan.inputs["groups"]),
            "pytest-uvbuild:extras": ",".join(plan.inputs["extras"]),
        },
        source_date_epoch=plan.inputs["source_date_epoch"],
    )
    return _json_bytes(bom)
