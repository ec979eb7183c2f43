"""Locate the uv binary, run it, and turn its failures into our errors.

uv does all resolution, installation, export and building. This module only
finds the binary the way ``uv.find_uv_bin()`` does, runs it with a controlled
environment, and translates uv's exit status and stderr into one clear
:class:`~pytest_uvbuild.errors.UvBuildError` that names the fix (see
:mod:`~pytest_uvbuild.uverrors`, imported when uv fails).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from pytest_uvbuild.errors import (
    InterpreterNotFoundError,
    ProjectNotFoundError,
    UvCommandError,
    UvNotFoundError,
)
from pytest_uvbuild.fsutil import write_atomic
from pytest_uvbuild.probecache import probe, stat_token

__all__ = ["UV_BINARY_ENV", "Uv", "UvProcess", "find_uv", "packaged_version"]

#: Environment variable that points pytest-uvbuild at a specific uv binary.
UV_BINARY_ENV: Final = "PYTEST_UVBUILD_UV"

# Variables of the calling shell that would make uv act on the wrong
# environment or interpreter; we always pass these decisions explicitly.
_STRIPPED_FOR_UV: Final = (
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "UV_PROJECT_ENVIRONMENT",
    "UV_PYTHON",
    "UV_SYSTEM_PYTHON",
    "UV_FROZEN",
    "UV_LOCKED",
    "UV_NO_SYNC",
)


def find_uv(probe_dir: Path | None = None) -> Path:
    """Return the uv binary to use.

    ``$PYTEST_UVBUILD_UV`` wins; otherwise the binary that the ``uv`` PyPI
    package installed (found with its own ``find_uv_bin``), and last ``uv``
    on ``PATH``. With a ``probe_dir``, an answer that cannot have changed is
    read back instead of asked again (see :func:`_remembered_uv`).
    """
    override = os.environ.get(UV_BINARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise UvNotFoundError(
                f"${UV_BINARY_ENV} points at {override!r}, which is not a file. "
                f"Fix: unset {UV_BINARY_ENV} or point it at a uv binary."
            )
        return path
    remembered = _remembered_uv(probe_dir) if probe_dir is not None else None
    if remembered is not None:
        return remembered
    tried: list[str] = []
    try:
        import uv

        found = Path(uv.find_uv_bin())
    except ImportError:
        tried.append("the 'uv' Python package (not installed)")
    except FileNotFoundError as exc:
        tried.append(f"the 'uv' Python package ({str(exc).splitlines()[0]})")
    else:
        if probe_dir is not None:
            _remember_uv(probe_dir, found)
        return found
    on_path = shutil.which("uv")
    if on_path:
        return Path(on_path)
    tried.append("'uv' on PATH")
    raise UvNotFoundError(
        "Could not find the uv binary; tried "
        + ", ".join(tried)
        + ". Fix: `pip install uv` into the environment that runs pytest."
    )


def _venv_uv() -> str | None:
    """Where the ``uv`` package puts its binary in the running virtual environment.

    ``uv.find_uv_bin()`` looks there first (a venv's scripts directory is
    ``<prefix>/bin``), so a binary found there is its answer for as long as
    that file stays. Outside a venv the order of its candidates depends on
    the install scheme, and nothing is remembered.
    """
    if sys.prefix == sys.base_prefix:
        return None
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        return os.path.join(sys.prefix, "Scripts", "uv.exe")
    return os.path.join(sys.prefix, "bin", "uv")


def _location_record(probe_dir: Path) -> Path:
    # One record per venv: several venvs may share one env cache.
    digest = hashlib.sha256(sys.prefix.encode()).hexdigest()[:16]
    return probe_dir / "probes" / f"uv-location-{digest}.json"


def _remembered_uv(probe_dir: Path) -> Path | None:
    """The uv binary found earlier in this venv, if it is still the very same file.

    ``uv.find_uv_bin()`` costs a few milliseconds of ``sysconfig`` lookups,
    more than the rest of a cache hit's uv facts; its answer is kept with
    the binary's stat and trusted while the file is unchanged.
    """
    expected = _venv_uv()
    if expected is None:
        return None
    try:
        data = json.loads(_location_record(probe_dir).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("binary") != expected:
            return None
        if data.get("token") != stat_token(Path(expected)):
            return None
    except (OSError, ValueError):
        return None
    return Path(expected)


def _remember_uv(probe_dir: Path, found: Path) -> None:
    if str(found) != _venv_uv():
        return
    # An unwritable cache only costs speed here; the env cache itself
    # reports unwritable directories with a proper error.
    with contextlib.suppress(OSError):
        record = {"binary": str(found), "token": stat_token(found)}
        write_atomic(_location_record(probe_dir), json.dumps(record).encode(), fsync=False)


def packaged_version(binary: Path) -> str | None:
    """The version of the ``uv`` distribution that installed ``binary``, read from its metadata.

    The ``uv`` PyPI package installs the binary and lists it in its
    ``RECORD`` with its size: a binary at that path with that size is that
    release, whose version is in the ``.dist-info`` directory's name. This
    spares the first session of a new env cache (every CI job without a
    restored cache) a ``uv --version`` process. ``None`` (ask the binary)
    for any other binary, or metadata that does not say.
    """
    import importlib.util

    from pytest_uvbuild.distinfo import dist_infos

    try:
        spec = importlib.util.find_spec("uv")
        if spec is None or spec.origin is None:
            return None
        site = os.path.dirname(os.path.dirname(spec.origin))
        wanted = os.path.abspath(binary)
        size = str(os.stat(wanted).st_size)
        for name, version, dist_info in dist_infos([Path(site)]):
            if name != "uv":
                continue
            with (dist_info / "RECORD").open(encoding="utf-8") as fh:
                for line in fh:
                    path, _, rest = line.rstrip("\n").partition(",")
                    listed = os.path.normpath(os.path.join(site, path))
                    if listed == wanted and rest.rpartition(",")[2] == size:
                        return version
    except (OSError, ValueError, ImportError):
        return None
    return None


# Where uv finds certificate authorities. uv reads them when it sets up its
# HTTP client, which it does even offline: a directory of a few hundred
# certificates costs it several milliseconds (see `local_only` below).
_TLS_SETTINGS: Final = ("SSL_CERT_FILE", "SSL_CERT_DIR", "UV_NATIVE_TLS")


def _uv_environ(extra: Mapping[str, str] | None, *, local_only: bool = False) -> dict[str, str]:
    stripped = (*_STRIPPED_FOR_UV, *_TLS_SETTINGS) if local_only else _STRIPPED_FOR_UV
    env = {k: v for k, v in os.environ.items() if k not in stripped}
    # Never let a missing interpreter trigger a download behind the user's
    # back; interpreters are resolved to real paths before uv is called.
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    env["UV_NO_PROGRESS"] = "1"
    if extra:
        env.update(extra)
    return env


def _reinstall_hint() -> str:
    if os.environ.get(UV_BINARY_ENV):
        return f"Fix: point {UV_BINARY_ENV} at a working uv binary, or unset it."
    return "Fix: reinstall it with `pip install --force-reinstall uv`."


class UvProcess:
    """A uv command that :meth:`Uv.start` started; :meth:`wait` collects it."""

    def __init__(self, proc: subprocess.Popen[str], argv: list[str], what: str) -> None:
        self._proc = proc
        self._argv = argv
        self.what = what

    def wait(self, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Wait for uv to end; on failure raise the translated error unless ``check`` is false."""
        try:
            out, err = self._proc.communicate()
        except BaseException:
            # An interrupt: uv must not outlive the caller's cleanup.
            self._proc.kill()
            self._proc.communicate()
            raise
        proc = subprocess.CompletedProcess(self._argv, self._proc.returncode, out, err)
        if check and proc.returncode != 0:
            from pytest_uvbuild.uverrors import translate_failure

            raise translate_failure(self.what, proc.returncode, proc.stderr)
        return proc


class Uv:
    """A located uv binary and the way we run it."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    @classmethod
    def locate(cls, probe_dir: Path | None = None) -> Uv:
        """Find the uv binary (see :func:`find_uv`)."""
        return cls(find_uv(probe_dir))

    def version(self, probe_dir: Path | None = None) -> str:
        """Return uv's version string, e.g. ``"0.13.9"``; cached by the binary's stat."""

        def compute() -> dict[str, str]:
            packaged = packaged_version(self.binary)
            if packaged is not None:
                return {"version": packaged}
            try:
                proc = subprocess.run(
                    [str(self.binary), "--version"],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=60,
                )
            except OSError as exc:
                raise UvNotFoundError(
                    f"The uv binary at {self.binary} does not run ({exc.strerror}). "
                    + _reinstall_hint()
                ) from None
            parts = proc.stdout.split()
            if proc.returncode != 0 or len(parts) < 2 or parts[0] != "uv":
                from pytest_uvbuild.uverrors import exit_description

                ended = (
                    f"exited {proc.returncode}"
                    if proc.returncode >= 0
                    else f"was {exit_description(proc.returncode)}"
                )
                raise UvNotFoundError(
                    f"The uv binary at {self.binary} does not run (`uv --version` {ended}). "
                    + _reinstall_hint()
                )
            return {"version": parts[1]}

        return str(probe(probe_dir, "uv", self.binary, compute)["version"])

    def start(
        self,
        args: Sequence[str],
        *,
        what: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        local_only: bool = False,
    ) -> UvProcess:
        """Start ``uv *args`` and return at once; :meth:`UvProcess.wait` collects it.

        ``local_only`` says the command reads local files only (the caller
        passes ``--offline``): it runs without the certificate settings
        (``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``UV_NATIVE_TLS``), which uv
        would load for nothing.
        """
        argv = [str(self.binary), *args]
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=_uv_environ(env, local_only=local_only),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        except OSError as exc:
            if cwd is not None and not os.path.isdir(cwd):
                # Popen reports a missing working directory as its own
                # failure; the binary is fine, the directory went away.
                raise ProjectNotFoundError(
                    f"{what} cannot run: the directory {cwd} does not exist "
                    "(was it removed or renamed while pytest ran?). "
                    "Fix: restore it, or run pytest again from the project as it is now."
                ) from None
            raise UvNotFoundError(
                f"The uv binary at {self.binary} does not run ({exc.strerror}). "
                + _reinstall_hint()
            ) from None
        return UvProcess(proc, argv, what)

    def run(
        self,
        args: Sequence[str],
        *,
        what: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        local_only: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``uv *args``; on failure raise the translated error unless ``check`` is false.

        ``local_only``: as for :meth:`start`.
        """
        return self.start(args, what=what, cwd=cwd, env=env, local_only=local_only).wait(
            check=check
        )

    def install_python(self, request: str, *, offline: bool = False) -> Path:
        """Download a Python matching ``request`` with uv and return its interpreter path.

        Only called when the user opted in to downloads and nothing on this
        machine matched. uv does the download; we ask it where the result is,
        restricted to uv-managed Pythons so that no shim can be returned.
        """
        downloads = {"UV_PYTHON_DOWNLOADS": "automatic"}
        offline_args = ["--offline"] if offline else []
        try:
            self.run(
                ["python", "install", *offline_args, request],
                what=f"`uv python install {request}`",
                env=downloads,
            )
            found = self.run(
                ["python", "find", "--managed-python", *offline_args, request],
                what=f"`uv python find {request}`",
                env=downloads,
            )
        except UvCommandError as exc:
            from pytest_uvbuild.uverrors import first_error_lines

            raise InterpreterNotFoundError(
                f"No Python matching {request!r} is installed, and uv could not download one:\n"
                f"{first_error_lines(exc.stderr)}\n"
                "Fix: install that Python yourself (e.g. `pyenv install`), "
                "or pass --uv-python=/path/to/python."
            ) from None
        return Path(found.stdout.strip().splitlines()[-1])
