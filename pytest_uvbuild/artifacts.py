"""The build record: ``builds/<id>/`` written at the end of a ``--uv-build`` session.

Layout of one record::

    metadata.json        inputs (deterministic), git, run facts, verify result
    requirements.txt     `uv export --frozen` of the selection, with hashes, without the project
    uv.lock              a copy of the lock
    <name>-<ver>.tar.gz  the sdist, carrying requirements.txt and uv.lock, packed reproducibly
    sbom.cdx.json        CycloneDX SBOM of the selection
    audit.json/audit.md  the version audit (see :mod:`pytest_uvbuild.audit`)
    SHA256SUMS           sha256 of every other file, in ``sha256sum -c`` format; written last

The **id** addresses the deterministic inputs only: the env key, the bytes
of ``uv.lock`` and ``pyproject.toml``, the contents of the files that go into
the sdist, and ``SOURCE_DATE_EPOCH``. Equal inputs give the same id on any
machine with the same interpreter layout.

A record is **complete** when ``SHA256SUMS`` exists and names every file.
A new record is assembled in a hidden staging directory and renamed into
place, so a crash leaves nothing that looks complete. When a complete record
exists for the id, its deterministic files (requirements, lock, sdist, SBOM)
are reused; only the per-run files (``metadata.json``, ``audit.*``) are
rewritten, with ``SHA256SUMS`` removed first and written last. Knowing which
files go into the sdist needs a build, so that list is cached per project in
``builds/.index/`` and trusted while ``pyproject.toml`` and the directories
holding those files are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from pytest_uvbuild import __version__
from pytest_uvbuild.audit import (
    AUDIT_SCHEMA,
    AUDIT_SCHEMA_VERSION,
    RECORD_SCHEMA,
    InstalledDist,
    audit_markdown,
    compute_drift,
    compute_host_differences,
    scan_installed,
    verdict,
)
from pytest_uvbuild.distinfo import installed_versions
from pytest_uvbuild.errors import UvBuildError
from pytest_uvbuild.fsutil import hold_flock, remove_tree, write_atomic

if TYPE_CHECKING:
    import pytest

    from pytest_uvbuild.baseline import Baseline
    from pytest_uvbuild.envcache import UvEnv
    from pytest_uvbuild.gitinfo import GitQuery
    from pytest_uvbuild.uvcli import Uv

__all__ = [
    "RECORD_FORMAT",
    "RecordError",
    "RecordOutcome",
    "RecordPlan",
    "append_step_summary",
    "check_builds_root",
    "is_complete",
    "plan_record",
    "read_sums",
    "record_session",
    "run_facts",
]

#: Bump when the record's files change for equal inputs; it is part of the id.
RECORD_FORMAT: Final = 1
METADATA_SCHEMA_VERSION: Final = 1
SUMS: Final = "SHA256SUMS"
REQUIREMENTS: Final = "requirements.txt"
LOCK_COPY: Final = "uv.lock"
SBOM: Final = "sbom.cdx.json"
PER_RUN_FILES: Final = ("audit.json", "audit.md", "metadata.json")
REQUIRED_FILES: Final = (REQUIREMENTS, LOCK_COPY, SBOM, *PER_RUN_FILES)
INDEX_FORMAT: Final = 1


class RecordError(UvBuildError, OSError):
    """The build record cannot be written or read (bad build dir, changed lock...)."""


def source_date_epoch() -> int | None:
    """``$SOURCE_DATE_EPOCH`` as an integer, or ``None`` when unset."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise RecordError(
            "SOURCE_DATE_EPOCH is set but is not a whole number of seconds. "
            "Fix: set it to e.g. $(git log -1 --format=%ct), or unset it."
        ) from None
    if value < 0:
        raise RecordError("SOURCE_DATE_EPOCH is negative. Fix: set it to a Unix time >= 0.")
    return value


# -- which files go into the sdist -------------------------------------------


def _index_path(index_dir: Path, project_root: Path) -> Path:
    digest = hashlib.sha256(str(project_root).encode()).hexdigest()[:16]
    return index_dir / f"{digest}.json"


def _dir_stamps(project_root: Path, files: Sequence[str]) -> dict[str, int]:
    """mtime of every directory holding a listed file (up to the root): adding or
    removing a file in one of them changes its mtime, which invalidates the list."""
    dirs = {""}
    for rel in files:
        parts = rel.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    stamps = {}
    for rel in sorted(dirs):
        try:
            stamps[rel] = os.stat(project_root / rel if rel else project_root).st_mtime_ns
        except OSError:
            stamps[rel] = -1
    return stamps


def _cached_source_list(index: Path, project_root: Path, pyproject_sha: str) -> list[str] | None:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != INDEX_FORMAT
        or data.get("root") != str(project_root)
        or data.get("pyproject_sha256") != pyproject_sha
        or not isinstance(data.get("files"), list)
        or not isinstance(data.get("dirs"), dict)
    ):
        return None
    files = [str(f) for f in data["files"]]
    if _dir_stamps(project_root, files) != data["dirs"]:
        return None
    return files


def _source_digest(project_root: Path, files: Sequence[str]) -> str:
    """Digest of the names and contents of ``files``; a listed file that is gone counts."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        try:
            content = (project_root / rel).read_bytes()
        except OSError:
            digest.update(f"{rel}\0<missing>\n".encode())
            continue
        digest.update(f"{rel}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    return digest.hexdigest()


# -- planning: the id ----------------------------------------------------------


# NamedTuples, not dataclasses: they cost a tenth as much to define, and every
# --uv-build session imports this module.
class RecordPlan(NamedTuple):
    """The id of the record this session maps to, and what it was computed from."""

    build_id: str
    inputs: dict[str, Any]
    source_files: list[str]
    lock_bytes: bytes
    #: An sdist uv built while listing the sources; reused if the record is new.
    prebuilt_sdist: Path | None = None
    scratch: Path | None = None

    def cleanup(self) -> None:
        """Remove the scratch directory of the prebuilt sdist."""
        if self.scratch is not None:
            remove_tree(self.scratch)


def build_id_of(inputs: Mapping[str, Any]) -> str:
    """The short content address of a record's deterministic inputs."""
    addressed = {
        "record_format": inputs["record_format"],
        "env_key": inputs["env_key"],
        "lock_sha256": inputs["lock_sha256"],
        "pyproject_sha256": inputs["pyproject_sha256"],
        "source_sha256": inputs["source_sha256"],
        "source_date_epoch": inputs["source_date_epoch"],
    }
    blob = json.dumps(addressed, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def python_facts(env: UvEnv) -> dict[str, Any]:
    """The env interpreter's implementation, full ``sys.version_info`` and platform."""
    interp = env.interpreter
    return {
        "implementation": interp.implementation,
        "version": interp.version,
        "version_info": list(interp.version_info),
        "abiflags": interp.abiflags,
        "platform": interp.platform,
        "machine": interp.machine,
    }


def plan_record(index_dir: Path | None, env: UvEnv, uv: Uv, *, offline: bool) -> RecordPlan:
    """Compute the build id; build the sdist only if the list of its files is unknown.

    ``index_dir`` keeps, per project, the list of files that went into the
    last sdist (see the module docstring); ``None`` always builds.
    """
    project = env.project
    try:
        lock_bytes = project.lock_path.read_bytes()
        pyproject_bytes = project.pyproject_path.read_bytes()
    except OSError as exc:
        raise RecordError(f"Cannot read the project's files for the build record: {exc}") from None
    lock_sha = hashlib.sha256(lock_bytes).hexdigest()
    if lock_sha != env.inputs.get("lock_sha256"):
        raise RecordError(
            f"{project.lock_path} changed during the session (the env was built for "
            "another lock), so no build record was written. Fix: rerun pytest."
        )
    pyproject_sha = hashlib.sha256(pyproject_bytes).hexdigest()
    files: list[str] = []
    prebuilt = scratch = None
    if project.is_package:
        index = _index_path(index_dir, project.root) if index_dir is not None else None
        cached = (
            _cached_source_list(index, project.root, pyproject_sha) if index is not None else None
        )
        if cached is not None:
            files = cached
        else:
            from pytest_uvbuild.sdist import build_sdist, sdist_source_files

            scratch = Path(tempfile.mkdtemp(prefix="pytest-uvbuild-sdist-"))
            try:
                prebuilt = build_sdist(
                    uv, project.root, scratch, python=env.interpreter.path, offline=offline
                )
                files = sdist_source_files(prebuilt, project.root)
            except BaseException:
                remove_tree(scratch)
                raise
            if index is not None:
                payload = {
                    "format": INDEX_FORMAT,
                    "root": str(project.root),
                    "pyproject_sha256": pyproject_sha,
                    "files": files,
                    "dirs": _dir_stamps(project.root, files),
                }
                with contextlib.suppress(OSError):
                    write_atomic(index, json.dumps(payload, indent=1).encode(), fsync=False)
    selection = env.selection
    inputs: dict[str, Any] = {
        "plugin_version": __version__,
        "record_format": RECORD_FORMAT,
        "uv_version": str(env.inputs["uv"]) if "uv" in env.inputs else uv.version(),
        "python": python_facts(env),
        "env_key": env.key,
        "lock_sha256": lock_sha,
        "pyproject_sha256": pyproject_sha,
        "source_sha256": _source_digest(project.root, files),
        "source_files": len(files),
        "groups": list(selection.groups),
        "extras": list(selection.extras),
        "only_groups": bool(selection.only_groups),
        "install_mode": env.install_mode,
        "source_date_epoch": source_date_epoch(),
    }
    return RecordPlan(
        build_id=build_id_of(inputs),
        inputs=inputs,
        source_files=files,
        lock_bytes=lock_bytes,
        prebuilt_sdist=prebuilt,
        scratch=scratch,
    )


# -- completeness and the manifest ------------------------------------------


def read_sums(record_dir: Path) -> dict[str, str] | None:
    """Parse ``SHA256SUMS`` into name -> hex digest; ``None`` when missing or malformed."""
    try:
        text = (record_dir / SUMS).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    sums: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or "/" in name:
            return None
        sums[name] = digest
    return sums


def is_complete(record_dir: Path) -> bool:
    """Whether ``record_dir`` is a whole record: a manifest naming files that all exist."""
    sums = read_sums(record_dir)
    return sums is not None and _names_whole_record(record_dir, sums)


def _names_whole_record(record_dir: Path, sums: Mapping[str, str]) -> bool:
    """Whether the manifest ``sums`` names every required file, and each file it names exists."""
    return set(REQUIRED_FILES) <= set(sums) and all((record_dir / n).is_file() for n in sums)


def _sums_text(sums: Mapping[str, str]) -> bytes:
    return "".join(f"{sums[name]}  {name}\n" for name in sorted(sums)).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the session ---------------------------------------------------------------


class RecordOutcome(NamedTuple):
    """What the session's record and audit came to; the plugin reports it."""

    build_id: str
    path: Path | None
    state: str
    env_key: str
    env_hit: bool
    audit: dict[str, Any]
    verify: dict[str, Any] | None
    markdown: str
    seconds: float
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """Whether the record's verdict fails the session."""
        return bool(self.audit["verdict"]["failed"])

    def summary_lines(self) -> list[str]:
        """Lines for the terminal summary section."""
        audit = self.audit
        where = f"{self.state}: {self.path}" if self.path is not None else self.state
        lines = [
            f"key {self.env_key} (env {'hit' if self.env_hit else 'miss'})",
            f"build {self.build_id} {where} in {self.seconds * 1000:.1f} ms",
        ]
        drift = audit["drift"]
        lines.append(
            "drift: none (the env matches uv.lock)"
            if not drift
            else f"drift: {len(drift)} package(s) differ from uv.lock"
        )
        diff = audit["baseline"]
        if diff is None:
            lines.append("baseline: none given")
        else:
            from pytest_uvbuild.baseline import baseline_summary

            lines.append(f"baseline {diff['baseline_id']}: {baseline_summary(diff)}")
        host = audit["host_differences"]
        lines.append(
            f"host: {len(host)} package(s) differ from uv.lock (informational)"
            if host
            else "host: matches uv.lock"
        )
        if self.verify is not None:
            lines.append("verify: " + ("identical bytes" if self.verify["ok"] else "DIFFERENT"))
        lines += self.notes
        return lines

    def failure_lines(self) -> list[str]:
        """The reasons the session fails, with the drift table."""
        audit = self.audit
        lines = [f"- {reason}" for reason in audit["verdict"]["reasons"]]
        if audit["drift"]:
            width = max(len(d["name"]) for d in audit["drift"])
            lines.append(f"  {'package':<{width}}  problem  uv.lock -> env")
            for d in audit["drift"]:
                lines.append(
                    f"  {d['name']:<{width}}  {d['problem']:<7}  {d['lock'] or '-'} -> "
                    f"{d['env'] or '-'}"
                )
        diff = audit["baseline"]
        if audit["verdict"]["gate"] and diff is not None and diff["differences"]:
            from pytest_uvbuild.baseline import diff_detail_lines

            lines += diff_detail_lines(diff)
        return lines


def _host_paths() -> list[Path]:
    return [Path(p) for p in sys.path if p and os.path.isdir(p)]


def _host_python(env: UvEnv) -> dict[str, Any]:
    interp = env.interpreter
    if interp.path != Path(os.path.realpath(sys.executable)):
        from pytest_uvbuild.interpreters import current_interpreter

        interp = current_interpreter()
    return {
        "implementation": interp.implementation,
        "version": interp.version,
        "version_info": list(interp.version_info),
        "platform": interp.platform,
        "machine": interp.machine,
    }


def _installed(env: UvEnv) -> dict[str, InstalledDist]:
    """The distributions installed in the env, its project layer first."""
    return scan_installed([*env.layer, env.site_packages])


def _read(path: Path) -> bytes | None:
    """The bytes of the file at ``path``; ``None`` when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def _rows_of(
    payload: bytes | None, build_id: str, *, plugin_version: str | None = None
) -> list[dict[str, Any]] | None:
    """The lock's package rows in an ``audit.json``-shaped payload made for ``build_id``.

    The rows depend only on what the build id addresses (the env key, the
    lock, pyproject.toml, the sources), so rows of the same id and audit
    schema spare a lock parse. A ``plugin_version``, when given, must match
    too. ``None`` when the payload is missing, not such JSON, or for another id.
    """
    if payload is None:
        return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(data, dict) or (
        data.get("schema"),
        data.get("schema_version"),
        data.get("build_id"),
    ) != (AUDIT_SCHEMA, AUDIT_SCHEMA_VERSION, build_id):
        return None
    if plugin_version is not None and data.get("plugin_version") != plugin_version:
        return None
    rows = data.get("packages")
    return rows if isinstance(rows, list) else None


def _lock_rows(
    rows_dir: Path | None, env: UvEnv, plan: RecordPlan, installed: Mapping[str, InstalledDist]
) -> list[dict[str, Any]]:
    """The lock's package rows for this build id: kept ones, else parsed from the lock and kept.

    ``rows_dir`` keeps the rows of the last build id per project, so that a
    session without a record to read them back from (``--uv-no-artifacts``,
    or a new record) parses no lock when the id has not changed. The kept
    rows outlive an upgrade of this plugin, so they name its version.
    """
    if rows_dir is not None:
        kept = _read(_index_path(rows_dir, env.project.root))
        rows = _rows_of(kept, plan.build_id, plugin_version=__version__)
        if rows is not None:
            return rows
    from pytest_uvbuild.recordfiles import fresh_rows

    rows = fresh_rows(env, plan.lock_bytes, installed)
    _keep_rows(rows_dir, env, plan.build_id, rows)
    return rows


def _keep_rows(
    rows_dir: Path | None, env: UvEnv, build_id: str, rows: list[dict[str, Any]]
) -> None:
    if rows_dir is None:
        return
    payload = {
        "schema": AUDIT_SCHEMA,
        "schema_version": AUDIT_SCHEMA_VERSION,
        "plugin_version": __version__,
        "build_id": build_id,
        "packages": rows,
    }
    # Only a cache: one that cannot be written costs the next session a lock parse.
    with contextlib.suppress(OSError):
        write_atomic(
            _index_path(rows_dir, env.project.root), json.dumps(payload).encode(), fsync=False
        )


def _created(metadata: bytes | None) -> str | None:
    """The ``created`` time of a record's ``metadata.json``; ``None`` when it cannot say."""
    try:
        data = json.loads(metadata.decode("utf-8")) if metadata is not None else None
    except ValueError:
        return None
    return data.get("created") if isinstance(data, dict) else None


def make_audit(
    env: UvEnv,
    build_id: str,
    rows: list[dict[str, Any]],
    installed: Mapping[str, InstalledDist],
    *,
    baseline: Baseline | None,
    gate: bool,
    verify: dict[str, Any] | None,
) -> dict[str, Any]:
    """The audit of this session: drift, host differences, baseline diff, verdict.

    ``installed`` is what the env holds (:func:`_installed`).
    """
    drift = compute_drift(rows, installed)
    # Only versions count on the host: no direct_url.json is read for its packages.
    host = compute_host_differences(rows, installed_versions(_host_paths()))
    python = python_facts(env)
    diff = None
    if baseline is not None:
        from pytest_uvbuild.baseline import baseline_diff

        diff = baseline_diff(baseline, rows, python)
    root = next((r for r in rows if r.get("root")), None)
    return {
        "schema": AUDIT_SCHEMA,
        "schema_version": AUDIT_SCHEMA_VERSION,
        "build_id": build_id,
        "project": {
            "name": env.project.name,
            "version": root["version"] if root else None,
        },
        "env": {
            "key": env.key,
            "python": python,
            "install_mode": env.install_mode,
            "groups": list(env.selection.groups),
            "extras": list(env.selection.extras),
            "only_groups": bool(env.selection.only_groups),
        },
        "host": {"python": _host_python(env)},
        "packages": rows,
        "drift": drift,
        "host_differences": host,
        "baseline": diff,
        "verdict": verdict(drift=drift, baseline=diff, gate=gate, verify=verify),
    }


def _utc(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def run_facts(
    config: pytest.Config, session: pytest.Session, env: UvEnv, started: float, exitstatus: int
) -> dict[str, Any]:
    """What happened in this session: times, counts, hermetic outcomes; no env values."""
    from pytest_uvbuild.outcomes import HERMETIC_OUTCOMES_KEY, HermeticOutcomes

    outcomes = config.stash.get(HERMETIC_OUTCOMES_KEY, None) or HermeticOutcomes()
    finished = time.time()
    return {
        "started": _utc(started),
        "finished": _utc(finished),
        "duration_seconds": round(finished - started, 3),
        "exit_status": int(exitstatus),
        "tests_collected": session.testscollected,
        "tests_failed": session.testsfailed,
        "hermetic": outcomes.as_json(),
        "env_hit": env.hit,
        "project_root": str(env.project.root),
    }


def make_metadata(
    plan: RecordPlan,
    audit: Mapping[str, Any],
    *,
    sdist_name: str | None,
    git: dict[str, Any] | None,
    run: Mapping[str, Any],
    verify: dict[str, Any] | None,
    created: str | None,
) -> dict[str, Any]:
    """``metadata.json``: deterministic inputs apart from git and run facts."""
    return {
        "schema": RECORD_SCHEMA,
        "schema_version": METADATA_SCHEMA_VERSION,
        "id": plan.build_id,
        "created": created,
        "inputs": plan.inputs,
        "project": audit["project"],
        "files": {
            "requirements": REQUIREMENTS,
            "lock": LOCK_COPY,
            "sdist": sdist_name,
            "sbom": SBOM,
            "audit": "audit.json",
            "audit_markdown": "audit.md",
            "manifest": SUMS,
        },
        "packages": [
            {"name": r["name"], "version": r["version"], "source": r["source"]}
            for r in audit["packages"]
            if not r.get("root")
        ],
        "git": git,
        "run": dict(run),
        "verify": verify,
        "audit": {
            "drift": len(audit["drift"]),
            "host_differences": len(audit["host_differences"]),
            "baseline_differences": audit["verdict"]["baseline_differences"],
            "failed": audit["verdict"]["failed"],
        },
    }


def _sdist_name(files: Mapping[str, Any]) -> str | None:
    return next((n for n in sorted(files) if n.endswith(".tar.gz")), None)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()


def check_builds_root(builds_root: Path) -> None:
    """Fail with one clear message when the build directory cannot be a directory."""
    for path in (builds_root, *builds_root.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == builds_root else f"is inside {path}, which is"
                raise RecordError(
                    f"The build directory {builds_root} {what} a file, not a directory. "
                    "Fix: pass --uv-build-dir=DIR (or ini uv_build_dir) naming a directory, "
                    "or --uv-no-artifacts."
                )
            return


def prepare_builds_root(builds_root: Path) -> None:
    """Create the builds directory (with a ``.gitignore`` of ``*`` when we create it)."""
    check_builds_root(builds_root)
    try:
        created = not builds_root.exists()
        builds_root.mkdir(parents=True, exist_ok=True)
        if created:
            # Like uv's own build output: records are artifacts, not sources,
            # and an untracked builds/ would make every later run look dirty.
            write_atomic(builds_root / ".gitignore", b"*\n")
        (builds_root / ".locks").mkdir(exist_ok=True)
    except OSError as exc:
        raise RecordError(
            f"The build directory {builds_root} cannot be created ({exc.strerror or exc}). "
            "Fix: pass --uv-build-dir=DIR naming a writable directory, or --uv-no-artifacts."
        ) from None


def record_session(
    env: UvEnv,
    uv: Uv,
    *,
    builds_root: Path | None,
    index_dir: Path | None,
    baseline: Baseline | None,
    gate: bool,
    verify: bool,
    offline: bool,
    run: dict[str, Any],
    git: GitQuery | None = None,
    rows_dir: Path | None = None,
) -> RecordOutcome:
    """Audit the session and write (or reuse and refresh) its build record.

    With ``builds_root`` ``None`` (``--uv-no-artifacts``) nothing is written,
    but the audit, the gate and ``--uv-verify`` still run. ``git`` is the
    session's git query if it started one (else git is asked here);
    ``rows_dir`` keeps the lock's package rows per project between sessions.
    """
    started = time.perf_counter()
    if builds_root is not None:
        prepare_builds_root(builds_root)
    plan = plan_record(index_dir, env, uv, offline=offline)
    try:
        if builds_root is None:
            return _audit_only(env, uv, plan, baseline, gate, verify, offline, started, rows_dir)
        record_dir = builds_root / plan.build_id
        try:
            lock = hold_flock(builds_root / ".locks" / f"{plan.build_id}.lock", wait=True)
            try:
                return _write_record(
                    env,
                    uv,
                    plan,
                    record_dir,
                    baseline,
                    gate,
                    verify,
                    offline,
                    run,
                    started,
                    git,
                    rows_dir,
                )
            finally:
                lock.release()
        except RecordError:
            raise
        except OSError as exc:
            # A full disk or a file-size limit surfaces here as a plain OSError;
            # the record is written aside and renamed, so nothing half-written
            # is left looking complete, and the user gets one message.
            raise RecordError(
                f"Could not write the build record under {builds_root} "
                f"({exc.strerror or exc}). Fix: free disk space or make it writable, "
                "pass --uv-build-dir=DIR on another disk, or --uv-no-artifacts to run "
                "without a record."
            ) from None
    finally:
        plan.cleanup()


def _audit_only(
    env: UvEnv,
    uv: Uv,
    plan: RecordPlan,
    baseline: Baseline | None,
    gate: bool,
    verify: bool,
    offline: bool,
    started: float,
    rows_dir: Path | None,
) -> RecordOutcome:
    installed = _installed(env)
    rows = _lock_rows(rows_dir, env, plan, installed)
    verify_result = None
    if verify:
        scratch = Path(tempfile.mkdtemp(prefix="pytest-uvbuild-products-"))
        try:
            from pytest_uvbuild.recordfiles import env_products, verify_products

            products = env_products(uv, env, plan, scratch, offline=offline, reuse_sdist=True)
            verify_result = verify_products(uv, env, plan, products, offline=offline)
        finally:
            remove_tree(scratch)
    audit = make_audit(
        env, plan.build_id, rows, installed, baseline=baseline, gate=gate, verify=verify_result
    )
    return RecordOutcome(
        build_id=plan.build_id,
        path=None,
        state="not written (--uv-no-artifacts)",
        env_key=env.key,
        env_hit=env.hit,
        audit=audit,
        verify=verify_result,
        markdown=audit_markdown(audit),
        seconds=time.perf_counter() - started,
    )


def _write_record(
    env: UvEnv,
    uv: Uv,
    plan: RecordPlan,
    record_dir: Path,
    baseline: Baseline | None,
    gate: bool,
    verify: bool,
    offline: bool,
    run: dict[str, Any],
    started: float,
    git: GitQuery | None,
    rows_dir: Path | None,
) -> RecordOutcome:
    from pytest_uvbuild.gitinfo import git_info

    builds_root = record_dir.parent
    manifest = read_sums(record_dir)
    old_sums = (
        manifest if manifest is not None and _names_whole_record(record_dir, manifest) else None
    )
    # Each file of a complete record is read once: the per-run files for
    # their rows and creation time, and to leave unchanged bytes unwritten.
    previous = (
        {name: _read(record_dir / name) for name in PER_RUN_FILES} if old_sums is not None else {}
    )
    rows = _rows_of(previous.get("audit.json"), plan.build_id)
    reuse = old_sums is not None and rows is not None
    created = _created(previous.get("metadata.json")) if reuse else None
    for leftover in builds_root.glob(f".tmp-{plan.build_id}-*"):
        remove_tree(leftover)
    if reuse:
        assert old_sums is not None
        assert rows is not None
        target = record_dir
        kept = {n: d for n, d in old_sums.items() if n not in PER_RUN_FILES}
        products = {n: record_dir / n for n in kept if n != SBOM}
        state = "reused"
    else:
        # mkdir (unlike mkdtemp) honours the umask, so the renamed record
        # gets the same permissions as any directory the user creates.
        import secrets  # only for a new record: its import is not free

        target = builds_root / f".tmp-{plan.build_id}-{os.getpid()}-{secrets.token_hex(4)}"
        target.mkdir()
        created = _utc(time.time())
        state = "written"
    try:
        # One scan of the env serves the audit and, for a new record, the licenses.
        installed = _installed(env)
        if not reuse:
            from pytest_uvbuild.recordfiles import env_products, sbom_bytes

            products = env_products(uv, env, plan, target, offline=offline, reuse_sdist=True)
            rows = _lock_rows(rows_dir, env, plan, installed)
            sbom = sbom_bytes(env, plan, rows)
            (target / SBOM).write_bytes(sbom)
            kept = {name: _sha256(path.read_bytes()) for name, path in products.items()}
            kept[SBOM] = _sha256(sbom)
        assert rows is not None
        verify_result = None
        if verify:
            from pytest_uvbuild.recordfiles import verify_products

            verify_result = verify_products(uv, env, plan, products, offline=offline)
        audit = make_audit(
            env, plan.build_id, rows, installed, baseline=baseline, gate=gate, verify=verify_result
        )
        markdown = audit_markdown(audit)
        run = {**run, "record": state}
        metadata = make_metadata(
            plan,
            audit,
            sdist_name=_sdist_name(kept),
            git=git.result() if git is not None else git_info(env.project.root),
            run=run,
            verify=verify_result,
            created=created,
        )
        per_run = {
            "audit.json": _json_bytes(audit),
            "audit.md": markdown.encode(),
            "metadata.json": _json_bytes(metadata),
        }
        if reuse:
            # The manifest goes first and comes back last: in between the
            # record is visibly incomplete, and a crash makes the next
            # session rebuild it rather than trust it.
            (record_dir / SUMS).unlink(missing_ok=True)
        # Only the manifest waits for the disk: after a power cut a per-run
        # file may be empty, which its hash in SHA256SUMS shows and the next
        # session (which cannot read its rows back) replaces.
        for name, data in per_run.items():
            # An unchanged audit (the usual case) is not written again.
            if not (reuse and previous[name] == data):
                write_atomic(target / name, data, fsync=False)
        sums = {**kept, **{name: _sha256(data) for name, data in per_run.items()}}
        write_atomic(target / SUMS, _sums_text(sums))
        if not reuse:
            _move_into_place(target, record_dir)
    except BaseException:
        if not reuse:
            remove_tree(target)
        raise
    return RecordOutcome(
        build_id=plan.build_id,
        path=record_dir,
        state=state,
        env_key=env.key,
        env_hit=env.hit,
        audit=audit,
        verify=verify_result,
        markdown=markdown,
        seconds=time.perf_counter() - started,
    )


def _move_into_place(staging: Path, record_dir: Path) -> None:
    if record_dir.exists() or record_dir.is_symlink():
        # An incomplete record (a crash, or a file someone damaged): set it
        # aside first, because rename cannot replace a non-empty directory.
        trash = record_dir.with_name(f".trash-{record_dir.name}-{os.getpid()}")
        remove_tree(trash)
        os.replace(record_dir, trash)
        remove_tree(trash)
    os.replace(staging, record_dir)


def append_step_summary(markdown: str) -> bool:
    """Append the audit report to ``$GITHUB_STEP_SUMMARY`` when it is set."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    try:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(markdown.rstrip("\n") + "\n\n")
    except OSError:
        return False
    return True
