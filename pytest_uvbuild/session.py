"""Per-run state: the env request built from options, and the envs this session uses.

One :class:`UvBuildSession` is made in ``pytest_configure`` and kept in
``config.stash``. It turns options and ini values into an
:class:`~pytest_uvbuild.envcache.EnvRequest`, materialises envs on demand,
holds their leases until the session ends, and reports on them in the
terminal summary.
"""

from __future__ import annotations

import os
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from pytest_uvbuild.errors import UvBuildError
from pytest_uvbuild.request import INSTALL_MODES, EnvRequest, InstallMode

if TYPE_CHECKING:
    # The cache machinery (uv, interpreters, packaging) is imported only when an env
    # is needed, so that the installed plugin costs nothing when it is unused.
    from pytest_uvbuild.envcache import EnvCache, UvEnv

__all__ = ["SESSION_KEY", "UvBuildSession", "is_xdist_worker"]


def is_xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (which never writes artifacts)."""
    return hasattr(config, "workerinput")


def _ini_or_option(config: pytest.Config, option: str, ini: str) -> Any:
    value = config.getoption(option)
    if value not in (None, [], False):
        return value
    return config.getini(ini)


def _as_tuple(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    return tuple(str(v) for v in value)


def request_from_config(config: pytest.Config) -> EnvRequest:
    """Build the session's env request from ``--uv-*`` options and their ini twins."""
    project = _ini_or_option(config, "uv_project", "uv_project")
    mode = _ini_or_option(config, "uv_install_project", "uv_install_project") or "wheel"
    if mode not in INSTALL_MODES:
        raise pytest.UsageError(
            f"uv_install_project = {mode!r} is not one of {', '.join(INSTALL_MODES)}. "
            "Fix: set it to wheel, source or no."
        )
    project_dir: Path | None = None
    if project:
        project_dir = Path(str(project))
        if not project_dir.is_absolute():
            # An ini value is relative to the rootdir, an option to the cwd,
            # as pytest does for its own path options.
            base = config.rootpath if config.getoption("uv_project") is None else Path.cwd()
            project_dir = base / project_dir
    install_mode: InstallMode = mode
    downloads = _ini_or_option(config, "uv_python_downloads", "uv_python_downloads") or None
    if downloads is None:
        # A user who told uv itself to download (uv's default is implicit)
        # has opted in; anyone else never gets a download behind their back.
        downloads = "automatic" if os.environ.get("UV_PYTHON_DOWNLOADS") == "automatic" else "never"
    if downloads not in ("never", "automatic"):
        raise pytest.UsageError(
            f"uv_python_downloads = {downloads!r} is not never or automatic. "
            "Fix: set it to never or automatic."
        )
    return EnvRequest(
        project_dir=project_dir,
        python=_ini_or_option(config, "uv_python", "uv_python") or None,
        groups=_as_tuple(_ini_or_option(config, "uv_group", "uv_groups")),
        only_groups=_as_tuple(config.getoption("uv_only_group")),
        no_default_groups=bool(config.getoption("uv_no_default_groups")),
        extras=_as_tuple(_ini_or_option(config, "uv_extra", "uv_extras")),
        all_extras=bool(config.getoption("uv_all_extras")),
        install_project=install_mode,
        offline=bool(_ini_or_option(config, "uv_offline", "uv_offline")),
        python_downloads=downloads == "automatic",
    )


def cache_from_config(config: pytest.Config) -> EnvCache:
    """The env cache at ``--uv-cache-dir``, ini ``uv_cache_dir``, or the default location."""
    from pytest_uvbuild.envcache import EnvCache, default_cache_dir

    option = config.getoption("uv_cache_dir")
    if option:
        return EnvCache(Path(option))
    ini = config.getini("uv_cache_dir")
    if ini:
        path = Path(str(ini)).expanduser()
        return EnvCache(path if path.is_absolute() else config.rootpath / path)
    return EnvCache(default_cache_dir())


class UvBuildSession:
    """The envs of one pytest run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.enabled: bool = bool(config.getoption("uv_build") or config.getini("uv_build"))
        self.request = request_from_config(config)
        # Under xdist the controller rebuilds once, before the workers start;
        # workers rebuilding too would tear down each other's env.
        self.rebuild: bool = bool(config.getoption("uv_rebuild")) and not is_xdist_worker(config)
        self._envs: dict[EnvRequest, UvEnv] = {}
        self._errors: dict[EnvRequest, UvBuildError] = {}
        early = config.stash.get(EARLY_ENV_KEY, None)
        if early is not None:
            # Made before the options were parsed (see passthrough.py): the
            # session's own env, lease and all, unless a conftest changed the options.
            request, env = early
            if request == self.request:
                self._envs[request] = env
            else:
                env.release()
        self.started = time.time()

    @cached_property
    def cache(self) -> EnvCache:
        """The env cache this session uses."""
        return cache_from_config(self.config)

    def _announce(self, message: str) -> None:
        if is_xdist_worker(self.config):
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"uv-build: {message}", yellow=True)

    def env_for(self, request: EnvRequest, *, rebuild: bool = False) -> UvEnv:
        """Materialise (or reuse within this session) the env for ``request``.

        A failure is remembered, so that every test needing the same env gets
        the same error without retrying a slow, failing build.
        """
        if request in self._envs:
            return self._envs[request]
        if request in self._errors:
            raise self._errors[request]
        try:
            env = self.cache.materialise(
                request,
                start_dir=self.config.rootpath,
                rebuild=rebuild,
                announce=self._announce,
            )
        except UvBuildError as exc:
            self._errors[request] = exc
            raise
        self._envs[request] = env
        return env

    @property
    def materialise_at_start(self) -> bool:
        """Whether the main env is made before collection (``--uv-build`` or ``--uv-rebuild``)."""
        return self.enabled or self.rebuild

    @property
    def main_env(self) -> UvEnv:
        """The env selected by the session's options (``--uv-*``)."""
        return self.env_for(self.request, rebuild=self.rebuild)

    def main_env_if_ready(self) -> UvEnv | None:
        """The session's env if it was materialised, without building it."""
        return self._envs.get(self.request)

    def request_with(self, **changes: Any) -> EnvRequest:
        """The session's request with some fields replaced (for markers and the factory)."""
        return self.request._replace(**changes)

    def used_envs(self) -> list[UvEnv]:
        """Every env this session materialised, the main one first."""
        return list(self._envs.values())

    def summary_lines(self) -> list[str]:
        """Lines for the terminal summary: hit or miss, key, location, time."""
        lines = []
        for env in self._envs.values():
            state = "hit" if env.hit else f"miss ({env.reason})"
            lines.append(
                f"env {env.key} {state} in {env.seconds * 1000:.1f} ms: {env.path}"
                f" [{env.interpreter.describe()}, {env.package_count()} packages,"
                f" install {env.install_mode}]"
            )
        return lines

    def close(self) -> None:
        """Release every lease this session holds."""
        for env in self._envs.values():
            env.release()


SESSION_KEY: Final = pytest.StashKey[UvBuildSession]()
#: An env materialised before ``pytest_configure``, with its request.
EARLY_ENV_KEY: Final = pytest.StashKey["tuple[EnvRequest, UvEnv]"]()
