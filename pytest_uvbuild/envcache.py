"""The content-addressed cache of uv-locked virtual environments.

Layout under the cache root::

    CACHEDIR.TAG
    envs/<key>/                 the dependency env, built by ``uv sync --locked``
    envs/<key>/pytest-uvbuild.json   completion record, written last
    layers/<key>-<digest>/      the project layer: wheels of the project and local deps
    locks/<key>.lock            held while an env is built, checked or pruned
    leases/<key>/<pid>-<n>.lock held by every session using the env
    probes/                     cached facts about interpreters and uv

An env is trusted only if its completion record names its own key and its
interpreter still runs; anything else is rebuilt under the lock. The
dependency env never contains the project or other local packages, so it is
immutable and shared by every checkout: those live in a per-content *project
layer* that is put on ``sys.path`` via ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from filelock import FileLock, Timeout
from packaging.utils import canonicalize_name

from pytest_uvbuild.errors import CacheError
from pytest_uvbuild.fsutil import remove_tree, write_atomic
from pytest_uvbuild.interpreters import Interpreter, resolve_python
from pytest_uvbuild.project import (
    LocalSource,
    Selection,
    UvProject,
    find_project,
    local_sources,
    read_lock,
)
from pytest_uvbuild.request import EnvRequest, InstallMode
from pytest_uvbuild.uvcli import Uv

__all__ = [
    "CACHE_DIR_ENV",
    "FORMAT_VERSION",
    "CacheEntry",
    "EnvCache",
    "EnvRequest",
    "UvEnv",
    "default_cache_dir",
]

#: Bump when the layout or the meaning of a key changes; old entries are then ignored.
FORMAT_VERSION: Final = 1
#: Environment variable that overrides the default cache location.
CACHE_DIR_ENV: Final = "PYTEST_UVBUILD_CACHE_DIR"
RECORD_NAME: Final = "pytest-uvbuild.json"
LAYER_RECORD_NAME: Final = "layer.json"
#: How long a session waits for another process that is building the same env.
BUILD_WAIT_SECONDS: Final = 1800.0

# Directories never part of a local package's importable content; skipping
# them keeps the project-layer fingerprint cheap and stable across runs.
_FINGERPRINT_SKIP_DIRS: Final = frozenset(
    {
        "__pycache__",
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


def default_cache_dir() -> Path:
    """Return ``$PYTEST_UVBUILD_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-uvbuild``."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-uvbuild"


@dataclass
class UvEnv:
    """A ready, locked environment: what the ``uv_env`` fixture returns."""

    path: Path
    python: Path
    key: str
    project: UvProject
    interpreter: Interpreter
    selection: Selection
    install_mode: InstallMode
    inputs: dict[str, Any]
    #: Extra ``sys.path`` entries: the project layer (wheel mode) or import roots (source mode).
    layer: tuple[Path, ...] = ()
    hit: bool = True
    reason: str = ""
    seconds: float = 0.0
    _lease: FileLock | None = field(default=None, repr=False)

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
        """Normalised distribution name to version, as installed (the project layer wins)."""
        from importlib.metadata import distributions

        found: dict[str, str] = {}
        for dist in distributions(path=[*map(str, self.layer), str(self.site_packages)]):
            name = dist.metadata["Name"]
            if name:
                found.setdefault(canonicalize_name(name), dist.version)
        return dict(sorted(found.items()))

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
        self, args: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command with the env's ``bin/`` first on ``PATH`` and its variables set.

        ``env=`` adds variables; every other keyword goes to :func:`subprocess.run`.
        A bare ``python`` as the program means this env's interpreter.
        """
        argv = [os.fspath(a) for a in args]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = str(self.python)
        env = self.environ(kwargs.pop("env", None))
        check = bool(kwargs.pop("check", False))
        return subprocess.run(argv, env=env, check=check, **kwargs)

    def release(self) -> None:
        """Give up this session's lease, so that ``cache prune`` may remove the env."""
        if self._lease is not None:
            lock_file = Path(self._lease.lock_file)
            self._lease.release()
            lock_file.unlink(missing_ok=True)
            self._lease = None


@dataclass(frozen=True)
class CacheEntry:
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


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _is_test_file(name: str) -> bool:
    return name == "conftest.py" or (
        name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
    )


def _iter_source_files(directory: Path) -> Iterator[tuple[str, os.stat_result]]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in _FINGERPRINT_SKIP_DIRS
        )
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")) or name.startswith(".") or _is_test_file(name):
                continue
            full = os.path.join(root, name)
            try:
                yield os.path.relpath(full, directory), os.stat(full)
            except OSError:
                continue


def fingerprint_sources(sources: Sequence[LocalSource]) -> str:
    """Digest names, sizes and mtimes of what a wheel of each local package is built from.

    That is the package's ``pyproject.toml`` plus every file under its import
    root (``src/`` or the module root); tests, docs and hidden directories
    are left out, so editing a test does not rebuild the project wheel.
    """
    digest = hashlib.sha256()
    for source in sources:
        digest.update(f"{source.name}\0{source.directory}\0".encode())
        for meta in ("pyproject.toml", "setup.py", "setup.cfg"):
            try:
                st = os.stat(source.directory / meta)
            except OSError:
                continue
            digest.update(f"{meta}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        root = import_root(source)
        for rel, st in _iter_source_files(root):
            digest.update(f"{root}/{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def import_root(source: LocalSource) -> Path:
    """Where a local package's importable modules live in the working tree."""
    pyproject = source.directory / "pyproject.toml"
    if pyproject.is_file():
        from pytest_uvbuild.project import _read_toml

        data = _read_toml(pyproject, "restore it")
        backend = data.get("tool", {}).get("uv", {}).get("build-backend", {})
        module_root = backend.get("module-root") if isinstance(backend, dict) else None
        if isinstance(module_root, str):
            return (source.directory / module_root).resolve()
    src = source.directory / "src"
    return src if src.is_dir() else source.directory


class EnvCache:
    """Materialise, list and prune envs under one cache root."""

    def __init__(self, root: Path, uv: Uv | None = None) -> None:
        self.root = root.expanduser().resolve()
        self._uv = uv

    @property
    def uv(self) -> Uv:
        """The uv binary, located on first use."""
        if self._uv is None:
            self._uv = Uv.locate()
        return self._uv

    @property
    def probe_dir(self) -> Path:
        """Where cached interpreter and uv facts live."""
        return self.root

    def env_dir(self, key: str) -> Path:
        """The directory of the env with ``key``."""
        return self.root / "envs" / key

    def _ensure_root(self) -> None:
        try:
            for sub in ("envs", "locks", "leases", "layers"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                write_atomic(
                    tag,
                    b"Signature: 8a477f597d28d172789f06886806bc55\n"
                    b"# This directory is a cache of pytest-uvbuild environments.\n",
                )
            probe = self.root / "locks" / ".write-probe"
            probe.touch()
        except OSError as exc:
            raise CacheError(
                f"The cache dir {self.root} is not writable ({exc.strerror or exc}). "
                f"Fix: pass --uv-cache-dir=DIR or set {CACHE_DIR_ENV} to a writable directory."
            ) from None

    # -- key ---------------------------------------------------------------

    def resolve(
        self, request: EnvRequest, start_dir: Path
    ) -> tuple[UvProject, Selection, Interpreter, str, dict[str, Any]]:
        """Find the project and interpreter for ``request`` and compute the env key."""
        project = find_project(start_dir, request.project_dir)
        selection = project.select(
            groups=request.groups,
            only_groups=request.only_groups,
            no_default_groups=request.no_default_groups,
            extras=request.extras,
            all_extras=request.all_extras,
        )
        self._ensure_root()
        interpreter = resolve_python(
            request.python,
            project_root=project.root,
            requires_python=project.requires_python,
            probe_dir=self.probe_dir,
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
        return project, selection, interpreter, key, inputs

    # -- materialise -------------------------------------------------------

    def _read_record(self, key: str) -> tuple[dict[str, Any] | None, str]:
        env = self.env_dir(key)
        record_path = env / RECORD_NAME
        if not env.exists():
            return None, "no cached env for this key (new lock hash or settings)"
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, "the cached env is incomplete (no completion record)"
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
        return record, ""

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self.root / "locks" / f"{key}.lock"), timeout=BUILD_WAIT_SECONDS)

    def _take_lease(self, key: str) -> FileLock | None:
        leases = self.root / "leases" / key
        try:
            leases.mkdir(parents=True, exist_ok=True)
            lease = FileLock(str(leases / f"{os.getpid()}-{time.monotonic_ns()}.lock"), timeout=0)
            lease.acquire()
        except (OSError, Timeout):
            # A read-only cache can still serve hits; prune then cannot see us,
            # but nothing can prune a read-only cache either.
            return None
        return lease

    def materialise(
        self,
        request: EnvRequest,
        *,
        start_dir: Path,
        rebuild: bool = False,
        announce: Callable[[str], None] | None = None,
    ) -> UvEnv:
        """Return a ready env for ``request``, building it only if no trusted one exists."""
        started = time.perf_counter()
        project, selection, interpreter, key, inputs = self.resolve(request, start_dir)
        lock = self._lock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if announce:
                announce(f"waiting for another process to finish building env {key}")
            lock.acquire()
        try:
            lease = self._take_lease(key)
            record, reason = (None, "--uv-rebuild was given") if rebuild else self._read_record(key)
            hit = record is not None
            if record is None:
                if announce:
                    announce(
                        f"building env {key} for {project.root} with {interpreter.describe()}: "
                        f"{reason}"
                    )
                record = self._build(project, selection, interpreter, key, inputs, request)
        finally:
            lock.release()
        sources = tuple(
            LocalSource(s["name"], Path(s["directory"]), bool(s["editable"]))
            for s in record.get("local_sources", [])
        )
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
        with contextlib.suppress(OSError):
            os.utime(self.env_dir(key) / RECORD_NAME)
        env.layer = self._project_layer(env, sources, request, announce)
        env.seconds = time.perf_counter() - started
        return env

    def _build(
        self,
        project: UvProject,
        selection: Selection,
        interpreter: Interpreter,
        key: str,
        inputs: dict[str, Any],
        request: EnvRequest,
    ) -> dict[str, Any]:
        env_dir = self.env_dir(key)
        offline = ["--offline"] if request.offline else []
        # `uv sync --locked` creates the env dir before it notices a stale
        # lock, so the lock is checked first and nothing is created on failure.
        self.uv.run(
            ["lock", "--check", "--python", str(interpreter.path), *offline],
            what="`uv lock --check`",
            cwd=project.root,
        )
        sources = local_sources(project, read_lock(project))
        remove_tree(env_dir)
        began = time.perf_counter()
        try:
            self.uv.run(
                [
                    "sync",
                    "--locked",
                    "--no-install-local",
                    "--python",
                    str(interpreter.path),
                    *selection.uv_args,
                    *offline,
                ],
                what="`uv sync --locked`",
                cwd=project.root,
                env={"UV_PROJECT_ENVIRONMENT": str(env_dir)},
            )
        except BaseException:
            # Leave nothing that looks like an env behind; a later session
            # would rebuild anyway, but a failed build should not cost disk.
            remove_tree(env_dir)
            raise
        python = env_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
        if not python.exists():
            remove_tree(env_dir)
            raise CacheError(f"uv sync finished but {python} does not exist; this is a bug.")
        record = {
            "format": FORMAT_VERSION,
            "key": key,
            "inputs": inputs,
            "project": str(project.root),
            "python": str(python),
            "interpreter": interpreter.describe(),
            "local_sources": [
                {"name": s.name, "directory": str(s.directory), "editable": s.editable}
                for s in sources
            ],
            "created": time.time(),
            "build_seconds": round(time.perf_counter() - began, 3),
        }
        write_atomic(env_dir / RECORD_NAME, json.dumps(record, indent=2).encode())
        return record

    # -- the project layer -------------------------------------------------

    def _project_layer(
        self,
        env: UvEnv,
        sources: tuple[LocalSource, ...],
        request: EnvRequest,
        announce: Callable[[str], None] | None,
    ) -> tuple[Path, ...]:
        project_name = env.project.name
        if env.install_mode == "no":
            sources = tuple(s for s in sources if s.name != project_name)
        if not sources:
            return ()
        if env.install_mode == "source":
            return tuple(dict.fromkeys(import_root(s) for s in sources))
        digest = fingerprint_sources(sources)
        layer = self.root / "layers" / f"{env.key}-{digest}"
        if (layer / LAYER_RECORD_NAME).is_file():
            return (layer / "site",)
        with FileLock(str(self.root / "locks" / f"layer-{env.key}-{digest}.lock")):
            if not (layer / LAYER_RECORD_NAME).is_file():
                if announce:
                    names = ", ".join(s.name for s in sources)
                    announce(f"building project layer {digest} ({names}) as wheels")
                self._build_layer(env, sources, layer, request)
        return (layer / "site",)

    def _build_layer(
        self, env: UvEnv, sources: tuple[LocalSource, ...], layer: Path, request: EnvRequest
    ) -> None:
        offline = ["--offline"] if request.offline else []
        staging = Path(tempfile.mkdtemp(prefix=f".{layer.name}.", dir=layer.parent))
        try:
            wheels = staging / "wheels"
            for source in sources:
                self.uv.run(
                    [
                        "build",
                        "--wheel",
                        "--out-dir",
                        str(wheels),
                        "--python",
                        str(env.python),
                        *offline,
                        str(source.directory),
                    ],
                    what=f"`uv build --wheel` of {source.name}",
                    cwd=source.directory,
                )
            built = sorted(str(p) for p in wheels.glob("*.whl"))
            self.uv.run(
                [
                    "pip",
                    "install",
                    "--no-deps",
                    "--python",
                    str(env.python),
                    "--target",
                    str(staging / "site"),
                    *offline,
                    *built,
                ],
                what="`uv pip install` of the project layer",
                cwd=env.project.root,
            )
            shutil.rmtree(wheels)
            write_atomic(
                staging / LAYER_RECORD_NAME,
                json.dumps(
                    {"key": env.key, "sources": [str(s.directory) for s in sources]}
                ).encode(),
            )
            remove_tree(layer)
            os.replace(staging, layer)
        except BaseException:
            remove_tree(staging)
            raise

    # -- list and prune ----------------------------------------------------

    def _lease_in_use(self, key: str) -> bool:
        leases = self.root / "leases" / key
        try:
            names = os.listdir(leases)
        except OSError:
            return False
        busy = False
        for name in names:
            lease = FileLock(str(leases / name), timeout=0)
            try:
                lease.acquire()
            except Timeout:
                busy = True
            except OSError:
                continue
            else:
                lease.release()
                (leases / name).unlink(missing_ok=True)
        return busy

    def entries(self) -> list[CacheEntry]:
        """Return every env directory in the cache, complete or not."""
        envs = self.root / "envs"
        try:
            keys = sorted(os.listdir(envs))
        except OSError:
            return []
        found: list[CacheEntry] = []
        for key in keys:
            path = envs / key
            if not path.is_dir():
                continue
            record, _ = self._read_record(key)
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
                    in_use=self._lease_in_use(key),
                )
            )
        return found

    def prune(
        self, *, older_than: float | None = None, everything: bool = False
    ) -> tuple[list[CacheEntry], list[CacheEntry]]:
        """Remove envs unused for ``older_than`` seconds (or all); return (removed, kept busy).

        An env some session holds a lease on, or that is being built, is never removed.
        """
        now = time.time()
        removed: list[CacheEntry] = []
        busy: list[CacheEntry] = []
        for entry in self.entries():
            stale = (
                everything
                or (older_than is not None and now - entry.last_used >= older_than)
                or not entry.complete
            )
            if not stale:
                continue
            lock = self._lock(entry.key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                busy.append(entry)
                continue
            try:
                if self._lease_in_use(entry.key):
                    busy.append(entry)
                    continue
                self._remove_env(entry.key)
                removed.append(entry)
            finally:
                lock.release()
        return removed, busy

    def _remove_env(self, key: str) -> None:
        env = self.env_dir(key)
        # Invalidate first: once the record is gone nobody trusts the rest.
        (env / RECORD_NAME).unlink(missing_ok=True)
        trash = self.root / "envs" / f".trash-{key}-{os.getpid()}"
        try:
            os.replace(env, trash)
        except OSError:
            trash = env
        remove_tree(trash)
        for layer in (self.root / "layers").glob(f"{key}-*"):
            remove_tree(layer)
        remove_tree(self.root / "leases" / key)


def parse_age(text: str) -> float:
    """Parse ``30d``, ``12h``, ``45m`` or ``90s`` (or a bare number of days) into seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "d")
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an age; use a number with s, m, h, d or w (e.g. 30d)"
        ) from None
    if value < 0:
        raise ValueError(f"{text!r} is negative; use e.g. 30d")
    return value * units[unit]
