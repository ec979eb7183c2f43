"""The content-addressed cache of uv-locked virtual environments.

Layout under the cache root::

    CACHEDIR.TAG
    envs/<key>/                 the dependency env, built by ``uv sync --locked``
    envs/<key>/pytest-uvbuild.json   completion record, written last
    layers/<key>-<digest>/      the project layer: wheels of the project and local deps
    locks/<key>.lock            held while an env is built, withdrawn or pruned
    leases/<key>/<pid>-<n>.lock held by every session using the env
    checks/<token>              `uv lock --check` passed for these pyproject/lock bytes
    projects/<digest>.json      the last env built per project (to say why, and what to build)
    probes/                     cached facts about interpreters and uv
    sdist-sources/, audit-rows/ the build record's per-project caches

An env is trusted only if its completion record names its own key, its
interpreter is still there, and nothing recorded at the top of its
``site-packages`` is gone (see :mod:`~pytest_uvbuild.integrity`; a file
removed deeper down is found by ``cache verify``); anything else is rebuilt
under the lock. A hit runs no uv command, parses no lock and takes no build
lock: it hashes ``uv.lock`` and the pyproject files, takes its lease, reads
one small record and lists one directory. The dependency env never contains
the project or other local packages, so it is immutable and shared by every
checkout: those live in a *project layer*, addressed by their sources, the
interpreter and uv, that is put on ``sys.path`` via ``PYTHONPATH``.

Building lives in :mod:`~pytest_uvbuild.envbuild` and the ``cache``
commands in :mod:`~pytest_uvbuild.cacheadmin`, so that a hit imports neither.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from pytest_uvbuild.distinfo import installed_versions
from pytest_uvbuild.errors import CacheError, UvBuildError
from pytest_uvbuild.fsutil import HeldLock, file_sha256, hold_flock, hold_lock, write_atomic
from pytest_uvbuild.integrity import missing_top_level
from pytest_uvbuild.interpreters import Interpreter, resolve_python
from pytest_uvbuild.project import (
    LocalSource,
    Selection,
    UvProject,
    find_project,
    import_root,
)
from pytest_uvbuild.request import EnvRequest, InstallMode
from pytest_uvbuild.uvcli import Uv

if TYPE_CHECKING:
    from pytest_uvbuild.cacheadmin import CacheEntry, VerifyResult

__all__ = [
    "CACHE_DIR_ENV",
    "FORMAT_VERSION",
    "EnvCache",
    "EnvRequest",
    "ResolvedRequest",
    "UvEnv",
    "default_cache_dir",
]

#: Bump when the layout or the meaning of a key changes; old entries are then ignored.
FORMAT_VERSION: Final = 2
#: Environment variable that overrides the default cache location.
CACHE_DIR_ENV: Final = "PYTEST_UVBUILD_CACHE_DIR"
RECORD_NAME: Final = "pytest-uvbuild.json"
LAYER_RECORD_NAME: Final = "layer.json"
#: Left by ``cache verify`` in place of the completion record of a damaged env.
DAMAGED_NAME: Final = "pytest-uvbuild.damaged.json"
#: How long a session waits for another process that is building the same env.
BUILD_WAIT_SECONDS: Final = 1800.0

# Top-level directories of a flat-layout package that never end up in its
# wheel; skipping them keeps the project-layer fingerprint cheap and stops an
# edited test from rebuilding the project wheel.
_FLAT_TOP_LEVEL_SKIP_DIRS: Final = frozenset(
    {
        "node_modules",
        "build",
        "builds",
        "dist",
        "docs",
        "site",
        "tests",
        "test",
        "examples",
        "bench",
        "venv",
    }
)
#: What a module at the top of a flat layout ends with (sources, stubs, extensions).
_MODULE_SUFFIXES: Final = (".py", ".pyi", ".so", ".pyd")


def default_cache_dir() -> Path:
    """Return ``$PYTEST_UVBUILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-uvbuild``."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-uvbuild"


class UvEnv:
    """A ready, locked environment: what the ``uv_env`` fixture returns.

    A plain class rather than a dataclass: defining one costs about 0.6 ms
    here, which every session that asks for an env would pay on import.
    """

    def __init__(
        self,
        *,
        path: Path,
        python: Path,
        key: str,
        project: UvProject,
        interpreter: Interpreter,
        selection: Selection,
        install_mode: InstallMode,
        inputs: dict[str, Any],
        layer: tuple[Path, ...] = (),
        hit: bool = True,
        reason: str = "",
        seconds: float = 0.0,
        _lease: HeldLock | None = None,
    ) -> None:
        self.path = path
        self.python = python
        self.key = key
        self.project = project
        self.interpreter = interpreter
        self.selection = selection
        self.install_mode: InstallMode = install_mode
        self.inputs = inputs
        #: Extra ``sys.path`` entries: the project layer (wheel mode) or import roots (source).
        self.layer = layer
        self.hit = hit
        self.reason = reason
        self.seconds = seconds
        self._lease = _lease

    def __repr__(self) -> str:
        state = "hit" if self.hit else "miss"
        return f"UvEnv(key={self.key!r}, path={str(self.path)!r}, {state})"

    @property
    def bin_dir(self) -> Path:
        """The env's scripts directory."""
        return self.path / ("Scripts" if sys.platform == "win32" else "bin")

    @cached_property
    def site_packages(self) -> Path:
        """The env's ``site-packages`` directory."""
        if sys.platform == "win32":
            return self.path / "Lib" / "site-packages"
        found = sorted(self.path.glob("lib/*/site-packages"))
        if not found:
            raise CacheError(f"The env at {self.path} has no site-packages; rebuild it.")
        return found[0]

    @cached_property
    def packages(self) -> dict[str, str]:
        """Normalised distribution name to version, as installed (the project layer wins).

        Read from the ``*.dist-info`` directory names, which the wheel spec
        makes ``{name}-{version}`` (see :mod:`~pytest_uvbuild.distinfo`).
        """
        return installed_versions([*self.layer, self.site_packages])

    def package_count(self) -> int:
        """How many distributions are installed (for the terminal summary)."""
        return len(self.packages)

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return ``os.environ`` adjusted so that commands resolve into this env."""
        env = dict(os.environ)
        for name in ("PYTHONHOME", "PYTHONPATH", "CONDA_PREFIX", "__PYVENV_LAUNCHER__"):
            env.pop(name, None)
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")]).rstrip(os.pathsep)
        if self.layer:
            env["PYTHONPATH"] = os.pathsep.join(map(str, self.layer))
        if extra:
            env.update(extra)
        return env

    def run(
        self,
        args: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command with the env's ``bin/`` first on ``PATH`` and its variables set.

        ``args`` is a list, or one string as :func:`subprocess.run` takes it (a
        command line with ``shell=True``). ``env=`` adds variables; every other
        keyword goes to :func:`subprocess.run`. A bare ``python`` as the
        program means this env's interpreter.
        """
        argv: str | list[str]
        if isinstance(args, (str, os.PathLike)):
            argv = os.fspath(args)
            if argv in ("python", "python3"):
                argv = str(self.python)
        else:
            argv = [os.fspath(a) for a in args]
            if argv and argv[0] in ("python", "python3"):
                argv[0] = str(self.python)
        env = self.environ(kwargs.pop("env", None))
        check = bool(kwargs.pop("check", False))
        return subprocess.run(argv, env=env, check=check, **kwargs)

    def release(self) -> None:
        """Give up this session's lease, so that ``cache prune`` may remove the env."""
        if self._lease is not None:
            _release_lease(self._lease)
            self._lease = None


def compute_key(
    *,
    lock_sha256: str,
    interpreter: Interpreter,
    selection: Selection,
    install_mode: InstallMode,
    uv_version: str,
) -> tuple[str, dict[str, Any]]:
    """Return the env key and the inputs it addresses (see docs/reference/env-key.md)."""
    inputs = {
        "format": FORMAT_VERSION,
        "lock_sha256": lock_sha256,
        "python": interpreter.key_fields,
        "selection": selection.key_fields(),
        "install_mode": install_mode,
        "uv": uv_version,
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16], inputs


def _layer_intact(layer: Path) -> bool:
    """Whether a project layer is complete and nothing recorded at its top is gone."""
    try:
        data = json.loads((layer / LAYER_RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    entries = data.get("entries") if isinstance(data, dict) else None
    return not (isinstance(entries, list) and missing_top_level(layer / "site", entries))


def _is_test_file(name: str) -> bool:
    return name == "conftest.py" or (
        name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
    )


def _iter_source_files(directory: Path, *, flat: bool) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, stat) of what a wheel of the package may contain.

    Caches and hidden entries never count. In a flat layout (the import root
    is the package directory) the top level also holds tests, docs, reports
    and build output: there only Python modules count (not test files), and
    directories that hold Python code somewhere (packages, namespace packages),
    except those that are never packaged. Deeper down every file counts, so
    that a sub-package called ``test`` or ``build``, or a data file, is never
    stale.
    """
    if not flat:
        yield from _walk_files(directory, directory)
        return
    try:
        top = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in top:
        name = entry.name
        if name.startswith(".") or name == "__pycache__":
            continue
        if entry.is_dir():
            if name in _FLAT_TOP_LEVEL_SKIP_DIRS:
                continue
            found = list(_walk_files(Path(entry.path), directory))
            # A report or coverage directory holds no Python code: it is not packaged.
            if any(rel.endswith(_MODULE_SUFFIXES) for rel, _ in found):
                yield from found
        elif name.endswith(_MODULE_SUFFIXES) and not _is_test_file(name):
            with contextlib.suppress(OSError):
                yield name, entry.stat()


def _walk_files(start: Path, base: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every file under ``start`` but caches and hidden ones, relative to ``base``, sorted."""
    for root, dirs, files in os.walk(start):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            full = os.path.join(root, name)
            try:
                yield os.path.relpath(full, base), os.stat(full)
            except OSError:
                continue


def fingerprint_sources(
    project_root: Path,
    sources: Sequence[LocalSource],
    known_pyprojects: Mapping[Path, Mapping[str, Any]] | None = None,
) -> str:
    """Digest names, sizes and mtimes of what each local package's wheel is built from.

    For a directory that is its ``pyproject.toml`` (or ``setup.py``/``setup.cfg``)
    plus every file under its import root; for a wheel or sdist on disk, the
    file itself. Any edit changes the digest, so the layer is rebuilt.
    """
    digest = hashlib.sha256()
    for source in sources:
        path = source.path(project_root)
        digest.update(f"{source.name}\0{source.kind}\0{path}\0".encode())
        if source.kind == "archive":
            try:
                st = os.stat(path)
            except OSError:
                digest.update(b"missing\n")
            else:
                digest.update(f"{st.st_size}\0{st.st_mtime_ns}\n".encode())
            continue
        for label, _, st in _package_files(path, (known_pyprojects or {}).get(path)):
            digest.update(f"{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _package_files(
    path: Path, pyproject: Mapping[str, Any] | None
) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(label, path, stat) of each file a local package directory's wheel is built from."""
    for meta in ("pyproject.toml", "setup.py", "setup.cfg"):
        try:
            st = os.stat(path / meta)
        except OSError:
            continue
        yield meta, path / meta, st
    root = import_root(path, pyproject)
    for rel, st in _iter_source_files(root, flat=root == path):
        yield f"{root}/{rel}", root / rel, st


@contextlib.contextmanager
def same_bytes_keep_mtimes(package_dirs: Sequence[Path]) -> Iterator[None]:
    """Around a build in the working tree: a source file it rewrote byte for byte keeps its mtime.

    Build backends write into the package: setuptools its ``*.egg-info``,
    setuptools-scm (``version_file``) and hatch-vcs (``version-file``) a
    version module, the same bytes on every build. Their new mtimes would
    change the fingerprint (see :func:`fingerprint_sources`), so every
    session would build the project layer again, and a warm worker, whose
    ``PYTHONPATH`` names the layer, would never serve the next session. A
    file whose bytes did change keeps its new mtime.
    """
    before: dict[Path, tuple[os.stat_result, str]] = {}
    for directory in package_dirs:
        for _, path, st in _package_files(directory, None):
            with contextlib.suppress(OSError):
                before[path] = (st, file_sha256(path))
    try:
        yield
    finally:
        for path, (old, sha) in before.items():
            with contextlib.suppress(OSError):
                now = os.stat(path)
                rewritten = now.st_mtime_ns != old.st_mtime_ns and now.st_size == old.st_size
                if rewritten and file_sha256(path) == sha:
                    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))


class _LayerPlan(NamedTuple):
    """What goes next to an env for one checkout: import roots and packages to install.

    The digest addresses what decides the layer's files: the local packages'
    sources (names, sizes and mtimes), the interpreter and uv. It leaves the
    lock out, since a wheel is built from the working tree alone; that is how
    a new lock with unchanged sources reuses the layer of the previous env.
    """

    root: Path
    key: str
    import_roots: tuple[Path, ...]
    to_install: tuple[LocalSource, ...]
    digest: str

    @classmethod
    def make(
        cls,
        project: UvProject,
        key: str,
        install_mode: InstallMode,
        only_groups: bool,
        sources: Sequence[LocalSource],
        inputs: Mapping[str, Any],
    ) -> _LayerPlan:
        """Split the selected local packages by install mode and fingerprint what is installed."""
        root = project.root
        in_selection = any(s.name == project.name for s in sources)
        if install_mode == "no":
            sources = [s for s in sources if s.name != project.name]
        import_roots: list[Path] = []
        to_install: list[LocalSource] = []
        for source in sources:
            if source.kind == "archive" or install_mode != "source":
                to_install.append(source)
            else:
                import_roots.append(import_root(source.path(root)))
        # uv installs nothing for a project with `package = false`; as
        # `source` it still puts its import root on the path, unless the
        # selection leaves the project out (`--only-group`).
        if (
            install_mode == "source"
            and not project.is_package
            and not in_selection
            and not only_groups
        ):
            import_roots.insert(0, import_root(root, project.pyproject))
        fingerprint = fingerprint_sources(root, to_install, {root: project.pyproject})
        addressed = {
            "format": FORMAT_VERSION,
            "python": inputs.get("python"),
            "uv": inputs.get("uv"),
            "sources": fingerprint,
        }
        blob = json.dumps(addressed, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(blob).hexdigest()[:16]
        return cls(root, key, tuple(dict.fromkeys(import_roots)), tuple(to_install), digest)

    def layer_dir(self, cache_root: Path) -> Path | None:
        """Where the installed packages live, or ``None`` if nothing is installed."""
        if not self.to_install:
            return None
        return cache_root / "layers" / f"{self.key}-{self.digest}"

    def names(self) -> str:
        """The installed packages' names, for messages."""
        return ", ".join(s.name for s in self.to_install)


class ResolvedRequest(NamedTuple):
    """What an env request comes to: project, selection, interpreter, the key and its inputs."""

    project: UvProject
    selection: Selection
    interpreter: Interpreter
    key: str
    inputs: dict[str, Any]


class EnvCache:
    """Materialise, list and prune envs under one cache root."""

    def __init__(self, root: Path, uv: Uv | None = None) -> None:
        self.root = root.expanduser().resolve()
        self._uv = uv

    @property
    def uv(self) -> Uv:
        """The uv binary, located on first use."""
        if self._uv is None:
            self._uv = Uv.locate(self.probe_dir)
        return self._uv

    @property
    def probe_dir(self) -> Path:
        """Where cached interpreter and uv facts live."""
        return self.root

    def env_dir(self, key: str) -> Path:
        """The directory of the env with ``key``."""
        return self.root / "envs" / key

    def _not_writable(self, exc: OSError) -> CacheError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return CacheError(
                f"Cannot write to the cache dir {self.root}: {exc.strerror or exc} (the disk is "
                "full, or a quota or file size limit stops writes). Fix: free disk space there, "
                f"or pass --uv-cache-dir=DIR (or set {CACHE_DIR_ENV}) on a disk with room."
            )
        return CacheError(
            f"The cache dir {self.root} is not writable ({exc.strerror or exc}). "
            f"Fix: pass --uv-cache-dir=DIR or set {CACHE_DIR_ENV} to a writable directory."
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn an OSError while writing into the cache into one error that names the fix."""
        try:
            yield
        except UvBuildError:
            raise
        except OSError as exc:
            raise self._not_writable(exc) from None

    def _ensure_root(self) -> None:
        try:
            for sub in ("envs", "locks", "leases", "layers", "checks", "projects"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                write_atomic(
                    tag,
                    b"Signature: 8a477f597d28d172789f06886806bc55\n"
                    b"# This directory is a cache of pytest-uvbuild environments.\n",
                )
            # mkdir with exist_ok succeeds on a read-only tree that exists;
            # only writing a file proves that builds can happen here.
            (self.root / "locks" / ".write-probe").touch()
        except OSError as exc:
            raise self._not_writable(exc) from None

    # -- key ---------------------------------------------------------------

    def resolve(self, request: EnvRequest, start_dir: Path) -> ResolvedRequest:
        """Find the project and interpreter for ``request`` and compute the env key."""
        project = find_project(start_dir, request.project_dir)
        selection = project.select(
            groups=request.groups,
            only_groups=request.only_groups,
            no_default_groups=request.no_default_groups,
            extras=request.extras,
            all_extras=request.all_extras,
        )
        interpreter = resolve_python(
            request.python,
            project_root=project.root,
            requires_python=project.requires_python,
            probe_dir=self.probe_dir,
            download=(
                (lambda wanted: self.uv.install_python(wanted, offline=request.offline))
                if request.python_downloads
                else None
            ),
        )
        mode: InstallMode = request.install_project
        if mode == "wheel" and not project.is_package:
            mode = "source"
        key, inputs = compute_key(
            lock_sha256=project.lock_sha256(),
            interpreter=interpreter,
            selection=selection,
            install_mode=mode,
            uv_version=self.uv.version(self.probe_dir),
        )
        return ResolvedRequest(project, selection, interpreter, key, inputs)

    # -- materialise -------------------------------------------------------

    def _read_record(self, key: str) -> tuple[dict[str, Any] | None, str]:
        env = self.env_dir(key)
        record_path = env / RECORD_NAME
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not env.exists():
                return None, ""
            if (env / DAMAGED_NAME).is_file():
                return None, "`cache verify` found the cached env damaged"
            return None, "the cached env is incomplete (no completion record: a build was cut off)"
        except (OSError, ValueError):
            return None, "the cached env's completion record is unreadable"
        if not isinstance(record, dict) or record.get("key") != key:
            return None, "the cached env's completion record belongs to another key"
        if record.get("format") != FORMAT_VERSION:
            return None, "the cached env was made by another pytest-uvbuild format"
        python = Path(str(record.get("python", "")))
        if not python.is_absolute() or not python.exists():
            return None, "the cached env is damaged (its interpreter is gone)"
        if not (env / "pyvenv.cfg").is_file():
            return None, "the cached env is damaged (pyvenv.cfg is gone)"
        entries = record.get("site_entries")
        if isinstance(entries, list):
            gone = missing_top_level(env / str(record.get("site_packages")), entries)
            if gone:
                more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
                shown = ", ".join(gone[:3]) + more
                return None, f"the cached env is damaged ({shown} gone from site-packages)"
        return record, ""

    def _try_lock(self, name: str) -> HeldLock | None:
        """Take ``locks/<name>.lock`` now, or ``None`` if a builder holds it (prune never waits)."""
        return hold_lock(self.root / "locks" / f"{name}.lock")

    def _acquire(self, name: str, what: str, announce: Callable[[str], None] | None) -> HeldLock:
        """Take the build lock ``locks/<name>.lock`` (an env key, or ``layer-<layer>``).

        Another builder is waited for up to ``BUILD_WAIT_SECONDS``, with an
        announcement first.
        """
        path = self.root / "locks" / f"{name}.lock"
        try:
            held = hold_lock(path)
            if held is not None:
                return held
            if announce:
                announce(f"waiting for another process to finish building {what}")
            held = hold_lock(path, timeout=BUILD_WAIT_SECONDS)
            if held is not None:
                return held
        except OSError as exc:
            raise self._not_writable(exc) from None
        raise CacheError(
            f"Gave up after {BUILD_WAIT_SECONDS:.0f} s waiting for another process to finish "
            f"building {what} (lock {path}). Fix: wait for that pytest run to end "
            "and try again, or use a separate cache with --uv-cache-dir=DIR."
        )

    def _take_lease(self, key: str) -> HeldLock:
        leases = self.root / "leases" / key
        try:
            while True:
                leases.mkdir(parents=True, exist_ok=True)
                try:
                    lease = hold_flock(leases / f"{os.getpid()}-{time.monotonic_ns()}.lock")
                except FileNotFoundError:
                    continue  # the directory was removed as empty just now: make it again
                if lease is not None:
                    return lease
                # `cache prune` holds this brand-new file for a moment (it takes
                # every lease it can, to clear those of dead sessions): use a new name.
        except OSError as exc:
            raise self._not_writable(exc) from None

    def materialise(
        self,
        request: EnvRequest,
        *,
        start_dir: Path,
        rebuild: bool = False,
        announce: Callable[[str], None] | None = None,
    ) -> UvEnv:
        """Return a ready env for ``request``, building it only if no trusted one exists.

        The caller holds a lease on the env until :meth:`UvEnv.release`, so
        that ``cache prune`` leaves it alone while it is in use.
        """
        started = time.perf_counter()
        resolved = self.resolve(request, start_dir)
        env = None if rebuild else self._reuse(resolved, request, announce)
        if env is None:
            env = self._build_or_wait(resolved, request, rebuild, announce)
        env.seconds = time.perf_counter() - started
        return env

    def _reuse(
        self,
        resolved: ResolvedRequest,
        request: EnvRequest,
        announce: Callable[[str], None] | None,
    ) -> UvEnv | None:
        """The cache hit: a trusted env, leased without taking the build lock; else ``None``.

        The lease is taken before the record is read. Whatever removes or
        replaces an env withdraws its record first and looks for leases after
        (see :meth:`_withdraw`): either it sees this lease and keeps the env,
        or this session finds no record and builds (or waits) under the lock.
        """
        key = resolved.key
        if not os.path.exists(self.env_dir(key) / RECORD_NAME):
            return None
        lease = self._take_lease(key)
        try:
            record, _ = self._read_record(key)
            if record is None:
                _release_lease(lease)
                with contextlib.suppress(OSError):
                    os.rmdir(self.root / "leases" / key)  # leave leases/ as it was
                return None
            self._check_lock_fresh(resolved.project, resolved.interpreter, record, request)
        except BaseException:
            _release_lease(lease)
            raise
        return self._ready(resolved, record, request, lease, True, "", announce)

    def _build_or_wait(
        self,
        resolved: ResolvedRequest,
        request: EnvRequest,
        rebuild: bool,
        announce: Callable[[str], None] | None,
    ) -> UvEnv:
        """Under the env's build lock: reuse what another process built meanwhile, or build."""
        project, selection, interpreter, key, inputs = resolved
        # A hit writes nothing but its lease; the layout and the write check
        # are for builds.
        self._ensure_root()
        lock = self._acquire(key, f"env {key}", announce)
        try:
            if rebuild:
                if not self._withdraw(key):
                    # Rebuilding deletes the env first: a session using it would
                    # lose its interpreter and packages mid-run.
                    raise CacheError(
                        f"--uv-rebuild would replace env {key} while another running session "
                        "uses it. Fix: let that pytest run end, then rerun with --uv-rebuild "
                        "(`python -m pytest_uvbuild cache list` marks envs in use)."
                    )
                record, reason = None, "--uv-rebuild was given"
            else:
                record, reason = self._read_record(key)
            hit = record is not None
            plan: _LayerPlan | None = None
            if record is None:
                from pytest_uvbuild.envbuild import build_env, last_build, why_new

                last = last_build(self, project)
                reason = reason or why_new(last, inputs)
                if announce:
                    announce(
                        f"building env {key} for {project.root} with {interpreter.describe()}, "
                        f"{selection.describe()}, install {inputs['install_mode']}: {reason}"
                    )
                with self._writing():
                    record, plan = build_env(self, resolved, request, last, rebuild=rebuild)
            else:
                self._check_lock_fresh(project, interpreter, record, request)
            # Taken last, still under the lock (so prune cannot slip in): a
            # session that failed above leaves no trace in leases/.
            lease = self._take_lease(key)
        finally:
            lock.release()
        return self._ready(resolved, record, request, lease, hit, reason, announce, plan)

    def _ready(
        self,
        resolved: ResolvedRequest,
        record: Mapping[str, Any],
        request: EnvRequest,
        lease: HeldLock,
        hit: bool,
        reason: str,
        announce: Callable[[str], None] | None,
        plan: _LayerPlan | None = None,
    ) -> UvEnv:
        """The env for a trusted record (the caller's lease passes to it), with its layer.

        ``plan`` is the layer plan a build just made; otherwise it is made here.
        """
        project, selection, interpreter, key, inputs = resolved
        try:
            sources = tuple(LocalSource.from_json(s) for s in record.get("local_sources", []))
            env = UvEnv(
                path=self.env_dir(key),
                python=Path(record["python"]),
                key=key,
                project=project,
                interpreter=interpreter,
                selection=selection,
                install_mode=inputs["install_mode"],
                inputs=inputs,
                hit=hit,
                reason=reason,
                _lease=lease,
            )
            if isinstance(record.get("site_packages"), str):
                env.site_packages = env.path / record["site_packages"]
            with contextlib.suppress(OSError):
                os.utime(self.env_dir(key) / RECORD_NAME)
            if plan is None:
                plan = _LayerPlan.make(
                    project, key, env.install_mode, selection.only_groups, sources, inputs
                )
            # A cold build made the layer alongside the env and already said
            # so; the layer is announced on its own only when it alone is built.
            with self._writing():
                env.layer = self._ensure_layer(
                    plan, interpreter, request, announce if hit else None
                )
        except BaseException:
            _release_lease(lease)
            raise
        return env

    def _withdraw(self, key: str) -> bool:
        """Take the env's completion record away, unless a running session holds a lease on it.

        Called under the build lock before an env is removed or rebuilt. A
        cache hit takes its lease without that lock and reads the record
        after, so leases are looked at again once the record is gone: a
        session that leased the env in between may have read the record, and
        then the record goes back and the env stays.
        """
        if self._lease_in_use(key):
            return False
        record = self.env_dir(key) / RECORD_NAME
        try:
            saved = record.read_bytes()
        except OSError:
            return True  # nothing that a session could trust
        record.unlink(missing_ok=True)
        if self._lease_in_use(key):
            write_atomic(record, saved)
            return False
        return True

    # -- is the lock still in sync with pyproject.toml? --------------------

    def _freshness_token(
        self, project: UvProject, lock_dirs: Sequence[str], inputs: Mapping[str, Any]
    ) -> str:
        """Digest the files that decide whether ``uv lock --check`` passes.

        That is uv.lock (its hash, and uv's version, from the env key's
        ``inputs``: the lock is not read again) plus every ``pyproject.toml``
        (and ``uv.toml``) of the project and its local packages. While the
        token is unchanged, the check uv once passed still holds, so the hit
        path does not ask again.
        """
        lock_sha256, uv_version = inputs.get("lock_sha256", ""), inputs.get("uv", "")
        digest = hashlib.sha256(f"{uv_version}\0{lock_sha256}\0".encode())
        dirs = dict.fromkeys([".", *lock_dirs])
        for rel in dirs:
            for name in ("pyproject.toml", "uv.toml"):
                path = project.root / rel / name
                try:
                    data = path.read_bytes()
                except OSError:
                    data = b"\0missing"
                digest.update(f"{rel}/{name}\0".encode())
                digest.update(hashlib.sha256(data).digest())
        return digest.hexdigest()[:32]

    def _check_lock_fresh(
        self,
        project: UvProject,
        interpreter: Interpreter,
        record: Mapping[str, Any],
        request: EnvRequest,
    ) -> None:
        """On a hit, make sure pyproject.toml was not edited without re-locking."""
        lock_dirs = [str(d) for d in record.get("lock_dirs", [])]
        token = self._freshness_token(project, lock_dirs, record.get("inputs", {}))
        marker = self.root / "checks" / token
        if marker.exists():
            return
        self.uv.run(
            ["lock", "--check", "--python", str(interpreter.path), *_offline(request)],
            what="`uv lock --check`",
            cwd=project.root,
        )
        with contextlib.suppress(OSError):
            marker.touch()

    def _project_record(self, project: UvProject) -> Path:
        name = hashlib.sha256(str(project.root).encode()).hexdigest()[:16]
        return self.root / "projects" / f"{name}.json"

    # -- building ----------------------------------------------------------

    # -- the project layer -------------------------------------------------

    def _ensure_layer(
        self,
        plan: _LayerPlan,
        interpreter: Interpreter,
        request: EnvRequest,
        announce: Callable[[str], None] | None,
        *,
        rebuild: bool = False,
    ) -> tuple[Path, ...]:
        """Return the layer's path entries, making its files first if they are missing.

        ``wheel`` builds each local package as a wheel of the working tree and
        installs them into ``layers/<key>-<digest>/site``; ``source`` puts
        their import roots on the path instead. Wheels or sdists on disk are
        installed into the layer in every mode. The digest covers every
        source file, so an edit always yields a fresh layer. When another
        env already has a layer with the same digest (the same sources,
        interpreter and uv, another lock), its files are hard-linked instead
        of built again.
        """
        layer = plan.layer_dir(self.root)
        if layer is None:
            return plan.import_roots
        if rebuild or not _layer_intact(layer):
            from pytest_uvbuild.envbuild import make_layer

            make_layer(self, plan, layer, interpreter, request, announce, rebuild=rebuild)
        with contextlib.suppress(OSError):
            os.utime(layer / LAYER_RECORD_NAME)
        return (*plan.import_roots, layer / "site")

    # -- leases ------------------------------------------------------------

    def _lease_in_use(self, key: str) -> bool:
        """Whether a running session holds a lease on the env."""
        leases = self.root / "leases" / key
        try:
            names = os.listdir(leases)
        except OSError:
            return False
        busy = False
        for name in names:
            try:
                lease = hold_lock(leases / name)
            except OSError:
                continue
            if lease is None:
                busy = True
            else:
                # Its session ended without releasing it (killed): clean up.
                lease.release(unlink=True)
        return busy

    # -- list, prune, verify: the `cache` commands (see cacheadmin) --------

    def entries(self) -> list[CacheEntry]:
        """Every env in the cache, complete or not. See :func:`.cacheadmin.entries`."""
        from pytest_uvbuild.cacheadmin import entries

        return entries(self)

    def prune(
        self, *, older_than: float | None = None, everything: bool = False
    ) -> tuple[list[CacheEntry], list[CacheEntry]]:
        """Remove unused envs; return (removed, kept busy). See :func:`.cacheadmin.prune`."""
        from pytest_uvbuild.cacheadmin import prune

        with self._writing():
            return prune(self, older_than=older_than, everything=everything)

    def verify(self) -> list[VerifyResult]:
        """Check every env and its layers file by file. See :func:`.cacheadmin.verify`."""
        from pytest_uvbuild.cacheadmin import verify

        with self._writing():
            return verify(self)


def _offline(request: EnvRequest) -> list[str]:
    return ["--offline"] if request.offline else []


def _release_lease(lease: HeldLock) -> None:
    lease.release(unlink=True)
