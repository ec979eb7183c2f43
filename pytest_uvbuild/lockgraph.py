"""The package graph of ``uv.lock``, and the part of it a selection uses.

uv resolved everything already; this module only reads the result. It parses
the lock's ``[[package]]`` tables into :class:`LockPackage` values and walks
the dependency edges from the project (its dependencies, the selected extras
and dependency groups) to find which packages a selection contains, which
are direct, and through which parents ("via") each one is reached. Edge
markers are kept, so that the same walk can say which packages an env built
for one interpreter should hold.

Parsing a lock costs milliseconds; the build record parses it only when a
record is built, never on a warm session.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from pytest_uvbuild.gitinfo import redact_url

if TYPE_CHECKING:
    # Marker parsing is only needed when a record is built; a warm session
    # reads the result from the previous record instead.
    from packaging.markers import Marker

__all__ = [
    "Edge",
    "LockGraph",
    "LockPackage",
    "SelectedPackage",
    "marker_environment",
    "source_label",
]

#: Source kinds whose packages are built from a directory of this machine.
LOCAL_KINDS = frozenset({"editable", "directory", "virtual"})


def source_label(source: Mapping[str, Any]) -> str:
    """Return a lock ``source`` table as one comparable string, e.g. ``registry+https://…``.

    URLs lose any credentials, so the label is safe to write into a record.
    """
    for kind in ("registry", "git", "url", "path", "directory", "editable", "virtual"):
        value = source.get(kind)
        if isinstance(value, str):
            return f"{kind}+{redact_url(value, keep_query=True)}"
    return "unknown"


def source_kind(label: str) -> str:
    """The kind part of a :func:`source_label` (``registry``, ``git``, ``editable``...)."""
    return label.split("+", 1)[0]


@dataclass(frozen=True)
class Edge:
    """One dependency edge of the lock: ``target`` (with extras) under ``marker``."""

    target: str
    extras: tuple[str, ...] = ()
    marker: str | None = None
    version: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Artifact:
    """One sdist or wheel the lock pins, with its hash when the lock has one."""

    url: str | None
    filename: str | None
    hash: str | None


@dataclass(frozen=True)
class LockPackage:
    """One ``[[package]]`` table of ``uv.lock``."""

    name: str
    version: str | None
    source: str
    dependencies: tuple[Edge, ...] = ()
    optional: Mapping[str, tuple[Edge, ...]] = field(default_factory=dict)
    groups: Mapping[str, tuple[Edge, ...]] = field(default_factory=dict)
    artifacts: tuple[Artifact, ...] = ()

    @property
    def is_local(self) -> bool:
        """Whether uv builds this package from a directory of the working tree."""
        return source_kind(self.source) in LOCAL_KINDS

    @property
    def ref(self) -> str:
        """A unique, readable id such as ``toyalpha@1.0``."""
        return f"{self.name}@{self.version}" if self.version else self.name


@dataclass
class SelectedPackage:
    """A package of the selection: how it is reached and whether an env should hold it."""

    package: LockPackage
    direct: bool = False
    #: Parents it is reached from: package names, or ``demo``, ``demo[extra]``, ``demo (group)``.
    via: set[str] = field(default_factory=set)
    #: Whether some path to it has every marker true for the env's interpreter;
    #: ``None`` when a marker on every path could not be evaluated.
    in_env: bool | None = False


def _edges(items: Any) -> tuple[Edge, ...]:
    if not isinstance(items, list):
        return ()
    found = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        extras = item.get("extra", [])
        source = item.get("source")
        found.append(
            Edge(
                target=canonicalize_name(item["name"]),
                extras=tuple(canonicalize_name(e) for e in extras if isinstance(e, str))
                if isinstance(extras, list)
                else (),
                marker=item["marker"] if isinstance(item.get("marker"), str) else None,
                version=item["version"] if isinstance(item.get("version"), str) else None,
                source=source_label(source) if isinstance(source, dict) else None,
            )
        )
    return tuple(found)


def _artifacts(table: Mapping[str, Any]) -> tuple[Artifact, ...]:
    found = []
    entries = [table["sdist"]] if isinstance(table.get("sdist"), dict) else []
    wheels = table.get("wheels")
    entries += [w for w in wheels if isinstance(w, dict)] if isinstance(wheels, list) else []
    for entry in entries:
        url = entry.get("url") if isinstance(entry.get("url"), str) else None
        path = entry.get("path") if isinstance(entry.get("path"), str) else None
        name = entry.get("filename") if isinstance(entry.get("filename"), str) else None
        if name is None and (url or path):
            name = str(url or path).rstrip("/").rsplit("/", 1)[-1]
        digest = entry.get("hash") if isinstance(entry.get("hash"), str) else None
        found.append(
            Artifact(
                url=redact_url(url, keep_query=True) if url else None, filename=name, hash=digest
            )
        )
    return tuple(found)


def marker_environment(
    *, implementation: str, version: str, machine: str | None = None
) -> dict[str, str]:
    """Marker variables for an interpreter of this machine described by its facts.

    The operating system is this machine's; the Python facts are the
    interpreter's, which may differ from the one running pytest.
    """
    from packaging.markers import default_environment

    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    major_minor = ".".join(version.split(".")[:2])
    env.update(
        implementation_name=implementation,
        implementation_version=version,
        python_version=major_minor,
        python_full_version=version,
        platform_python_implementation={"cpython": "CPython", "pypy": "PyPy"}.get(
            implementation, implementation
        ),
        platform_machine=machine or platform.machine(),
        extra="",
    )
    return env


class LockGraph:
    """The packages of one ``uv.lock`` and the edges between them."""

    def __init__(self, packages: Iterable[LockPackage]) -> None:
        self.packages: list[LockPackage] = sorted(
            packages, key=lambda p: (p.name, p.version or "", p.source)
        )
        self._by_name: dict[str, list[LockPackage]] = {}
        for package in self.packages:
            self._by_name.setdefault(package.name, []).append(package)
        self._marker_cache: dict[str, Marker | None] = {}

    @classmethod
    def from_lock(cls, lock: Mapping[str, Any]) -> LockGraph:
        """Build the graph from a parsed ``uv.lock``."""
        raw = lock.get("package", [])
        packages = []
        for table in raw if isinstance(raw, list) else []:
            if not isinstance(table, dict) or not isinstance(table.get("name"), str):
                continue
            source = table.get("source")
            optional = table.get("optional-dependencies")
            groups = table.get("dev-dependencies")
            packages.append(
                LockPackage(
                    name=canonicalize_name(table["name"]),
                    version=str(table["version"]) if "version" in table else None,
                    source=source_label(source) if isinstance(source, dict) else "unknown",
                    dependencies=_edges(table.get("dependencies")),
                    optional={canonicalize_name(k): _edges(v) for k, v in optional.items()}
                    if isinstance(optional, dict)
                    else {},
                    groups={canonicalize_name(k): _edges(v) for k, v in groups.items()}
                    if isinstance(groups, dict)
                    else {},
                    artifacts=_artifacts(table),
                )
            )
        return cls(packages)

    def find(self, name: str) -> list[LockPackage]:
        """Every locked package called ``name`` (more than one only in forked locks)."""
        return self._by_name.get(canonicalize_name(name), [])

    def _targets(self, edge: Edge) -> list[LockPackage]:
        candidates = self.find(edge.target)
        if len(candidates) > 1:
            narrowed = [
                p
                for p in candidates
                if (edge.version is None or p.version == edge.version)
                and (edge.source is None or p.source == edge.source)
            ]
            return narrowed or candidates
        return candidates

    def _marker_true(self, marker: str | None, env: Mapping[str, str] | None) -> bool | None:
        if marker is None:
            return True
        if env is None:
            return None
        if marker not in self._marker_cache:
            from packaging.markers import InvalidMarker, Marker

            try:
                self._marker_cache[marker] = Marker(marker)
            except InvalidMarker:
                self._marker_cache[marker] = None
        parsed = self._marker_cache[marker]
        if parsed is None:
            return None
        try:
            return parsed.evaluate(dict(env))
        except Exception:  # packaging raises several types for uv-specific names
            return None

    def select(
        self,
        project: str | None,
        *,
        groups: Iterable[str] = (),
        extras: Iterable[str] = (),
        only_groups: bool = False,
        environment: Mapping[str, str] | None = None,
    ) -> dict[str, SelectedPackage]:
        """Walk from ``project`` through the selection; return the packages reached by ref.

        The project itself is part of the result when it is in the lock and
        its own dependencies are selected (that is, unless ``only_groups``).
        ``environment`` decides :attr:`SelectedPackage.in_env`.
        """
        roots = self.find(project) if project else []
        root = roots[0] if roots else None
        selected: dict[str, SelectedPackage] = {}
        # (edge, parent label, direct, parent in env)
        pending: list[tuple[Edge, str, bool, bool | None]] = []
        if root is not None:
            if not only_groups:
                entry = selected.setdefault(root.ref, SelectedPackage(root))
                entry.in_env = True
                pending += [(e, root.name, True, True) for e in root.dependencies]
                for extra in sorted({canonicalize_name(x) for x in extras}):
                    pending += [
                        (e, f"{root.name}[{extra}]", True, True)
                        for e in root.optional.get(extra, ())
                    ]
            for group in sorted({canonicalize_name(g) for g in groups}):
                pending += [
                    (e, f"{root.name} ({group})", True, True) for e in root.groups.get(group, ())
                ]
        # A package can be reached first on a path whose markers are false and
        # later on one where they hold; it is then walked again with the better
        # verdict, which terminates because a verdict only ever improves.
        rank = {False: 0, None: 1, True: 2}
        seen: dict[tuple[str, tuple[str, ...]], bool | None] = {}
        while pending:
            edge, parent, direct, parent_in_env = pending.pop()
            here = self._marker_true(edge.marker, environment)
            in_env: bool | None
            if parent_in_env is False or here is False:
                in_env = False
            elif parent_in_env is None or here is None:
                in_env = None
            else:
                in_env = True
            for target in self._targets(edge):
                entry = selected.setdefault(target.ref, SelectedPackage(target))
                entry.via.add(parent)
                entry.direct = entry.direct or direct
                if rank[in_env] > rank[entry.in_env]:
                    entry.in_env = in_env
                visit = (target.ref, edge.extras)
                if visit in seen and rank[seen[visit]] >= rank[in_env]:
                    continue
                seen[visit] = in_env
                pending += [(e, target.name, False, in_env) for e in target.dependencies]
                for wanted in edge.extras:
                    pending += [
                        (e, target.name, False, in_env) for e in target.optional.get(wanted, ())
                    ]
        return dict(sorted(selected.items()))
