"""Find the uv project, read its ``pyproject.toml``, and work out the selection.

Only ``pyproject.toml`` (a few KB) is parsed on every session; ``uv.lock``
is hashed, and parsed only when an environment is being built (see
:func:`lock_local_dirs`). Which local packages an env gets is uv's answer
(``uv export``), read by :func:`local_sources_from_export`, unless the
project is the lock's only local package (:func:`sources_from_lock`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

from pytest_uvbuild.errors import LockfileError, ProjectNotFoundError, SelectionError

# PEP 503 name normalisation, as packaging.utils.canonicalize_name does it;
# importing packaging.utils pulls in packaging.tags, which a cache hit can do
# without.
_SEPARATORS = re.compile(r"[-_.]+")


def canonicalize_name(name: str) -> str:
    """Normalise a distribution, group or extra name (PEP 503): ``Foo_Bar`` -> ``foo-bar``."""
    return _SEPARATORS.sub("-", name).lower()


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "LocalKind",
    "LocalSource",
    "Selection",
    "UvProject",
    "find_project",
    "import_root",
    "load_project",
    "local_selection_digest",
    "local_sources_from_export",
    "lock_local_dirs",
    "nearest_project_dir",
    "read_lock",
    "sources_from_lock",
]


# A NamedTuple, not a dataclass: it costs a tenth as much to define, and every
# warm session imports this module.
class Selection(NamedTuple):
    """The dependency groups and extras an env is built with, as uv will apply them.

    ``uv_args`` are the flags that produce it; the env key uses
    :meth:`key_fields`, in which they do not appear.
    """

    groups: tuple[str, ...]
    extras: tuple[str, ...]
    only_groups: bool
    uv_args: tuple[str, ...]

    def key_fields(self) -> dict[str, Any]:
        """The effective selection, normalised; the uv flags that produce it do not matter."""
        return {"groups": list(self.groups), "extras": list(self.extras), "only": self.only_groups}

    def describe(self) -> str:
        """Say in a few words what is selected, e.g. ``groups dev, extras none``."""
        groups = ", ".join(self.groups) or "none"
        extras = ", ".join(self.extras) or "none"
        only = "only " if self.only_groups else ""
        return f"{only}groups {groups}; extras {extras}"


#: How a local package reaches an env: built from a directory (``directory``,
#: ``editable``) or installed from a wheel or sdist file on disk (``archive``).
LocalKind = Literal["directory", "editable", "archive"]


class LocalSource(NamedTuple):
    """A package that uv installs from this checkout (the project, members, path deps).

    ``relpath`` is as uv writes it, relative to the project root, so that a
    record made in one checkout resolves to the same package in another.
    """

    name: str
    relpath: str
    kind: LocalKind

    def path(self, project_root: Path) -> Path:
        """The package's directory (or archive file) in the checkout at ``project_root``."""
        return (project_root / self.relpath).resolve()

    def as_json(self) -> dict[str, str]:
        """The source as stored in the completion record."""
        return {"name": self.name, "relpath": self.relpath, "kind": self.kind}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalSource:
        """Read a source back from the completion record."""
        kind = str(data["kind"])
        if kind not in ("directory", "editable", "archive"):
            raise ValueError(f"unknown local source kind {kind!r}")
        return cls(str(data["name"]), str(data["relpath"]), kind)  # type: ignore[arg-type]


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except FileNotFoundError:
        raise LockfileError(f"{path} is missing. Fix: {what}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise LockfileError(
            f"{path} is not valid TOML ({exc}). Fix: correct the file"
            + (" or regenerate it with `uv lock`." if path.name == "uv.lock" else ".")
        ) from None
    except OSError as exc:
        raise LockfileError(f"{path} cannot be read ({exc.strerror}).") from None


class UvProject(NamedTuple):
    """A directory with ``pyproject.toml`` and ``uv.lock``, and what its pyproject says."""

    root: Path
    pyproject: Mapping[str, Any]

    @property
    def pyproject_path(self) -> Path:
        """Path of the project's ``pyproject.toml``."""
        return self.root / "pyproject.toml"

    @property
    def lock_path(self) -> Path:
        """Path of the project's ``uv.lock``."""
        return self.root / "uv.lock"

    @property
    def name(self) -> str | None:
        """The normalised project name, or ``None`` for a virtual workspace root."""
        raw = self.pyproject.get("project", {}).get("name")
        return canonicalize_name(raw) if isinstance(raw, str) else None

    @property
    def requires_python(self) -> str | None:
        """The ``requires-python`` specifier, if declared."""
        value = self.pyproject.get("project", {}).get("requires-python")
        return value if isinstance(value, str) else None

    @property
    def _tool_uv(self) -> Mapping[str, Any]:
        tool = self.pyproject.get("tool", {})
        value = tool.get("uv", {}) if isinstance(tool, dict) else {}
        return value if isinstance(value, dict) else {}

    @property
    def is_package(self) -> bool:
        """Whether uv builds and installs the project itself (``[tool.uv] package``)."""
        explicit = self._tool_uv.get("package")
        if isinstance(explicit, bool):
            return explicit
        return "build-system" in self.pyproject and "project" in self.pyproject

    @property
    def dependency_groups(self) -> frozenset[str]:
        """Normalised names of the project's dependency groups (PEP 735 and legacy dev)."""
        groups: set[str] = {
            canonicalize_name(g) for g in self.pyproject.get("dependency-groups", {})
        }
        if self._tool_uv.get("dev-dependencies"):
            groups.add("dev")
        return frozenset(groups)

    @property
    def extras(self) -> frozenset[str]:
        """Normalised names of the project's optional-dependency extras."""
        optional = self.pyproject.get("project", {}).get("optional-dependencies", {})
        return frozenset(canonicalize_name(e) for e in optional)

    @property
    def default_groups(self) -> tuple[str, ...]:
        """The groups uv installs by default: ``[tool.uv] default-groups``, else ``dev``."""
        declared = self._tool_uv.get("default-groups")
        if declared == "all":
            return tuple(sorted(self.dependency_groups))
        if isinstance(declared, list):
            return tuple(sorted({canonicalize_name(str(g)) for g in declared}))
        return ("dev",) if "dev" in self.dependency_groups else ()

    def lock_sha256(self) -> str:
        """Return the sha256 of ``uv.lock``'s bytes."""
        try:
            return hashlib.sha256(self.lock_path.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise LockfileError(
                f"{self.lock_path} is missing. Fix: run `uv lock` in {self.root} "
                "and commit uv.lock."
            ) from None

    def select(
        self,
        *,
        groups: Sequence[str] = (),
        only_groups: Sequence[str] = (),
        no_default_groups: bool = False,
        extras: Sequence[str] = (),
        all_extras: bool = False,
    ) -> Selection:
        """Validate a group/extra request and return the effective selection.

        It follows uv: default groups unless ``no_default_groups``, plus
        ``groups``; ``only_groups`` replaces all of that (and the project's
        own dependencies).
        """
        known = self.dependency_groups
        unknown = sorted({g for g in (*groups, *only_groups) if canonicalize_name(g) not in known})
        if unknown:
            listing = ", ".join(sorted(known)) or "none"
            raise SelectionError(
                f"Unknown dependency group(s) {', '.join(unknown)} for project {self.root}. "
                f"Defined: {listing}. Fix: add it under [dependency-groups] in pyproject.toml "
                "(e.g. `uv add --group NAME ...`) or pick a defined group."
            )
        unknown_extras = sorted({e for e in extras if canonicalize_name(e) not in self.extras})
        if unknown_extras:
            listing = ", ".join(sorted(self.extras)) or "none"
            raise SelectionError(
                f"Unknown extra(s) {', '.join(unknown_extras)} for project {self.root}. "
                f"Defined: {listing}. Fix: declare it under [project.optional-dependencies] "
                "or pick a defined extra."
            )
        if only_groups and (groups or extras or all_extras):
            # uv refuses these combinations with a usage error of its own.
            raise SelectionError(
                f"--uv-only-group {', '.join(only_groups)} installs only those groups, without "
                f"the project {self.root} and its extras, so it cannot be combined with "
                "--uv-group, --uv-extra or --uv-all-extras (uv refuses that too). Fix: name "
                "every group with --uv-only-group and drop the others, or use --uv-group "
                "(with --uv-no-default-groups) instead of --uv-only-group."
            )
        uv_args: list[str] = []
        if only_groups:
            effective: set[str] = {canonicalize_name(g) for g in only_groups}
            for g in only_groups:
                uv_args += ["--only-group", g]
        else:
            effective = set() if no_default_groups else set(self.default_groups)
            effective |= {canonicalize_name(g) for g in groups}
            if no_default_groups:
                uv_args.append("--no-default-groups")
            for g in groups:
                uv_args += ["--group", g]
        chosen_extras = set(self.extras) if all_extras else {canonicalize_name(e) for e in extras}
        if all_extras:
            uv_args.append("--all-extras")
        else:
            for e in extras:
                uv_args += ["--extra", e]
        return Selection(
            groups=tuple(sorted(effective)),
            extras=tuple(sorted(chosen_extras)),
            only_groups=bool(only_groups),
            uv_args=tuple(uv_args),
        )


def load_project(root: Path) -> UvProject:
    """Read the project at ``root``; its pyproject must parse and its lock must exist."""
    root = root.resolve()
    if not root.is_dir():
        raise ProjectNotFoundError(
            f"Project directory {root} does not exist. Fix: point --uv-project (or "
            "`key --project`) at a directory with pyproject.toml and uv.lock."
        )
    pyproject = _read_toml(root / "pyproject.toml", f"create it, e.g. with `uv init {root}`")
    if not (root / "uv.lock").is_file():
        workspace = _workspace_root_of(root)
        if workspace is not None:
            # `uv lock` in a member updates the workspace's lock: it never makes this one.
            raise ProjectNotFoundError(
                f"{root} is a member of the uv workspace at {workspace} and has no uv.lock of "
                "its own; envs are built for the workspace root. Fix: pass "
                f"--uv-project={workspace}, or leave --uv-project out when running inside the "
                "workspace (the root's env holds the members it depends on)."
            )
        raise LockfileError(
            f"{root / 'uv.lock'} is missing. Fix: run `uv lock` in {root} and commit uv.lock."
        )
    return UvProject(root=root, pyproject=pyproject)


def _workspace_root_of(member: Path) -> Path | None:
    """The uv workspace above ``member`` whose ``members`` globs include it (minus ``exclude``)."""
    import glob

    for directory in member.parents:
        try:
            with (directory / "pyproject.toml").open("rb") as fh:
                workspace = tomllib.load(fh).get("tool", {}).get("uv", {}).get("workspace")
        except (OSError, tomllib.TOMLDecodeError, AttributeError):
            continue
        if not isinstance(workspace, dict):
            continue

        def matched(key: str, root: Path = directory, table: dict[str, Any] = workspace) -> bool:
            patterns = table.get(key, [])
            return isinstance(patterns, list) and any(
                (root / found).resolve() == member
                for pattern in patterns
                if isinstance(pattern, str)
                for found in glob.glob(pattern, root_dir=root, recursive=True)
            )

        return directory if matched("members") and not matched("exclude") else None
    return None


def nearest_project_dir(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` that holds ``pyproject.toml`` and ``uv.lock``."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file() and (directory / "uv.lock").is_file():
            return directory
    return None


def find_project(start: Path, explicit: Path | None = None) -> UvProject:
    """Return the explicit project, else the nearest dir at or above ``start`` with both files."""
    if explicit is not None:
        return load_project(explicit)
    found = nearest_project_dir(start)
    if found is not None:
        return load_project(found)
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / "pyproject.toml").is_file():
            raise LockfileError(
                f"{directory / 'pyproject.toml'} has no uv.lock next to it. "
                f"Fix: run `uv lock` in {directory} and commit uv.lock."
            )
    raise ProjectNotFoundError(
        f"No uv project (pyproject.toml with uv.lock) at or above {start}. "
        "Fix: run pytest inside a uv project, or pass --uv-project=DIR."
    )


def read_lock(project: UvProject) -> dict[str, Any]:
    """Parse ``uv.lock`` (only on the cold path: it can take tens of milliseconds)."""
    return _read_toml(project.lock_path, f"run `uv lock` in {project.root}")


def import_root(directory: Path, pyproject: Mapping[str, Any] | None = None) -> Path:
    """Where a local package's importable modules live in the working tree.

    That is ``[tool.uv.build-backend] module-root`` when set, else ``src/``
    if it exists, else the package directory itself (flat layout).
    """
    if pyproject is None:
        path = directory / "pyproject.toml"
        pyproject = _read_toml(path, "restore it") if path.is_file() else {}
    tool = pyproject.get("tool", {})
    uv = tool.get("uv", {}) if isinstance(tool, dict) else {}
    backend = uv.get("build-backend", {}) if isinstance(uv, dict) else {}
    module_root = backend.get("module-root") if isinstance(backend, dict) else None
    if isinstance(module_root, str):
        return (directory / module_root).resolve()
    src = directory / "src"
    return src if src.is_dir() else directory


#: The ``source`` keys of a local directory package in ``uv.lock``.
_LOCAL_DIR_KINDS: Final = ("editable", "directory", "virtual")
#: The ``source`` keys of any local package: a directory, or a wheel or sdist file.
_LOCAL_SOURCE_KINDS: Final = (*_LOCAL_DIR_KINDS, "path")
#: The ``source`` keys of the local packages uv installs (a virtual one is never installed).
_INSTALLED_LOCAL_KINDS: Final = ("editable", "directory", "path")


def lock_local_dirs(lock: Mapping[str, Any]) -> tuple[str, ...]:
    """Relative paths of every local directory package in the lock, virtual ones included.

    Their ``pyproject.toml`` files decide, with the root's, whether the lock
    is stale; the cache-hit path hashes them to know when to ask uv again.
    """
    found: set[str] = set()
    for package in _packages(lock):
        source = package.get("source", {})
        if not isinstance(source, dict):
            continue
        for kind in _LOCAL_DIR_KINDS:
            rel = source.get(kind)
            if isinstance(rel, str):
                found.add(rel)
    return tuple(sorted(found))


def local_selection_digest(lock: Mapping[str, Any]) -> str:
    """A digest of all in ``uv.lock`` that can decide which local packages a selection installs.

    That is the lock's header (its version, ``requires-python``, resolution
    markers, ``[manifest]``) and every package entry from which a local
    package can be reached, local packages included. Reaching is followed
    by name through every dependency list (plain, optional, dev), markers
    and extras ignored, so the set is never smaller than uv's: an edit that
    could change uv's answer for any selection changes the digest. Registry
    packages seldom lead to a local one, so a new lock that only moves
    registry versions keeps its digest.
    """
    packages = list(_packages(lock))
    parents: dict[str, set[int]] = {}
    local: set[str] = set()
    for index, package in enumerate(packages):
        source = package.get("source")
        if isinstance(source, dict) and any(
            isinstance(source.get(kind), str) for kind in _LOCAL_SOURCE_KINDS
        ):
            local.add(canonicalize_name(str(package.get("name", ""))))
        for dependency in _dependency_entries(package):
            name = dependency.get("name")
            if isinstance(name, str):
                parents.setdefault(canonicalize_name(name), set()).add(index)
    kept = {
        index
        for index, package in enumerate(packages)
        if canonicalize_name(str(package.get("name", ""))) in local
    }
    reached, frontier = set(local), list(local)
    while frontier:
        for index in parents.get(frontier.pop(), ()):
            kept.add(index)
            name = canonicalize_name(str(packages[index].get("name", "")))
            if name not in reached:
                reached.add(name)
                frontier.append(name)
    relevant = {
        "header": {key: value for key, value in lock.items() if key != "package"},
        "packages": [packages[index] for index in sorted(kept)],
    }
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _dependency_entries(package: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every dependency a lock entry lists: plain, per extra and per group."""
    plain = package.get("dependencies")
    lists: list[Any] = [plain] if isinstance(plain, list) else []
    for table in ("optional-dependencies", "dev-dependencies"):
        grouped = package.get(table)
        if isinstance(grouped, dict):
            lists.extend(grouped.values())
    for entries in lists:
        if isinstance(entries, list):
            yield from (entry for entry in entries if isinstance(entry, dict))


def _lock_local_packages(lock: Mapping[str, Any], root: Path) -> dict[Path, tuple[str, str, bool]]:
    """Map each local package's resolved path to (name, relpath, is_archive)."""
    found: dict[Path, tuple[str, str, bool]] = {}
    for package in _packages(lock):
        source = package.get("source", {})
        if not isinstance(source, dict):
            continue
        name = canonicalize_name(str(package.get("name", "")))
        for kind in _INSTALLED_LOCAL_KINDS:
            rel = source.get(kind)
            if isinstance(rel, str):
                found[(root / rel).resolve()] = (name, rel, kind == "path")
    return found


def sources_from_lock(
    lock: Mapping[str, Any], selection: Selection
) -> tuple[LocalSource, ...] | None:
    """Return the local packages a selection installs when the lock alone tells; else ``None``.

    The lock alone tells when the project itself is its only local package
    (no path dependency, no other workspace member): ``uv sync`` installs
    it whatever the groups, extras and markers, unless the lock has it
    virtual (``package = false``) or the selection is ``--only-group``.
    With any other local package, which of them the selection reaches is
    uv's answer, so ``None`` (see :func:`local_sources_from_export`).
    """
    root: tuple[str, str] | None = None
    for package in _packages(lock):
        source = package.get("source")
        if not isinstance(source, dict):
            continue
        for kind in _LOCAL_SOURCE_KINDS:
            if kind not in source:
                continue
            if source[kind] != "." or root is not None:
                return None
            root = (canonicalize_name(str(package.get("name", ""))), kind)
    if root is None or root[1] not in ("editable", "virtual"):
        return None  # not a project lock as uv writes them: ask uv
    name, kind = root
    if kind == "virtual" or selection.only_groups:
        return ()
    return (LocalSource(name, ".", "editable"),)


def local_sources_from_export(
    requirements: str,
    project: UvProject,
    lock: Mapping[str, Any],
    marker_environment: Mapping[str, str],
) -> tuple[LocalSource, ...]:
    """Return the local packages that uv selected, from ``uv export --format requirements-txt``.

    uv has applied the groups, extras and ``--only-group``: its export lists
    exactly what ``uv sync`` would install, local packages as paths
    (``-e ./member``, ``../dep``, ``./pkg.whl``). Their names come from the
    lock. What is left are PEP 508 environment markers, evaluated for the
    env's interpreter; one that cannot be evaluated keeps its package.
    """
    from packaging.markers import InvalidMarker, Marker, UndefinedEnvironmentName

    known = _lock_local_packages(lock, project.root)
    found: dict[str, LocalSource] = {}
    for raw in requirements.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        editable = line.startswith("-e ")
        requirement, _, marker = line.removeprefix("-e ").strip().partition(" ; ")
        requirement = requirement.strip()
        if requirement.startswith("file://"):
            from urllib.parse import unquote, urlsplit

            requirement = unquote(urlsplit(requirement).path)
        elif not (editable or requirement.startswith((".", "/"))):
            continue  # a registry, URL or VCS requirement: uv installs it into the env
        if marker.strip():
            try:
                if not Marker(marker).evaluate(dict(marker_environment)):
                    continue
            except (InvalidMarker, UndefinedEnvironmentName):
                pass
        path = (project.root / requirement).resolve()
        name, relpath, is_archive = known.get(
            path,
            (canonicalize_name(path.name), os.path.relpath(path, project.root), path.is_file()),
        )
        kind: LocalKind = "archive" if is_archive else ("editable" if editable else "directory")
        found[name] = LocalSource(name, relpath, kind)
    return tuple(found[name] for name in sorted(found))


def _packages(lock: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    packages = lock.get("package", [])
    return [p for p in packages if isinstance(p, dict)] if isinstance(packages, list) else []
