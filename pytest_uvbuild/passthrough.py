"""``--hermetic-all``: command-line options that only the locked env's session knows.

The outer session imports no ``conftest.py`` and has none of the lock's
plugins, so it does not know their options (``--timeout``, ``--cov``, a
conftest's ``--runslow``), on the command line or in ini ``addopts``, and
pytest would stop with ``unrecognized arguments``. Before pytest parses the
command line, :func:`learn_inner_options` asks a session in the locked env
(``worker.py --options-table``) which options it knows, and registers the
ones this session lacks as options that only carry their values: they act
inside, where the worker's session reads ``addopts`` itself and gets the
command line's (see :data:`PASSTHROUGH_KEY`).

This costs an interpreter start in the locked env, so it happens only when
the command line or ``addopts`` holds an option this session does not know.
The env it needs is the session's own, materialised here a little earlier
than usual and handed to the session (see :data:`.session.EARLY_ENV_KEY`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

from pytest_uvbuild.errors import UvBuildError

__all__ = ["PASSTHROUGH_KEY", "learn_inner_options"]

#: The option strings registered for the inner session; those given on the
#: command line are forwarded to it.
PASSTHROUGH_KEY: Final = pytest.StashKey[tuple[str, ...]]()
#: How long the locked env's session may take to list its options.
PROBE_TIMEOUT_SECONDS: Final = 120.0


class _EarlyOptions:
    """What :func:`.session.request_from_config` reads, before pytest has parsed options.

    Options come from the known-args namespace of the early parse (ours are
    all known by then); ini values and the rootdir from the config.
    """

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._namespace = config.known_args_namespace
        self.rootpath = config.rootpath

    def getoption(self, name: str, default: Any = None) -> Any:
        return getattr(self._namespace, name, default)

    def getini(self, name: str) -> Any:
        return self._config.getini(name)


def unknown_options(parser: pytest.Parser, args: Sequence[str]) -> list[str]:
    """The option tokens of ``args`` that ``parser`` does not know."""
    _, unknown = parser.parse_known_and_unknown_args(list(args))
    return [arg for arg in unknown if arg.startswith("-") and arg != "-"]


def learn_inner_options(config: pytest.Config, parser: pytest.Parser, args: Sequence[str]) -> None:
    """Register the options that only the locked env's session knows, if ``args`` use any.

    Nothing happens when every option is known here, or when the locked
    env's session cannot list its options (pytest then reports the unknown
    ones as usual). An env that cannot be made is a usage error now, as it
    would be at session start: that error, not the options it left unknown,
    is what the user must fix.
    """
    if not unknown_options(parser, args):
        return
    table = _inner_options_table(config)
    known = _known_option_strings(parser)
    added: list[str] = []
    for row in table:
        names = [str(name) for name in row.get("names", ())]
        if not names or any(name in known for name in names):
            continue  # ours wins; a half-known option stays ours alone
        attrs: dict[str, Any] = {"help": argparse.SUPPRESS}
        if row.get("flag"):
            attrs["action"] = "count"
        else:
            attrs["action"] = "append"
            if row.get("nargs") is not None:
                attrs["nargs"] = row["nargs"]
        dest = "uvbuild_inner_" + names[-1].lstrip("-").replace("-", "_")
        try:
            parser.addoption(*names, dest=dest, **attrs)
        except (ValueError, TypeError):
            continue
        known.update(names)
        added.extend(names)
    config.stash[PASSTHROUGH_KEY] = tuple(added)


def _known_option_strings(parser: pytest.Parser) -> set[str]:
    """Every option string ``parser`` knows (pytest keeps its groups private)."""
    groups = [*getattr(parser, "_groups", ()), getattr(parser, "_anonymous", None)]
    return {
        str(name)
        for group in groups
        for option in getattr(group, "options", ())
        for name in option.names()
    }


def _inner_options_table(config: pytest.Config) -> list[dict[str, Any]]:
    """The options of a session in the locked env, with this command line; [] if it fails."""
    from pytest_uvbuild.runner import WORKER_SCRIPT, scrubbed_environ
    from pytest_uvbuild.session import EARLY_ENV_KEY, cache_from_config, request_from_config

    early: Any = _EarlyOptions(config)
    try:
        request = request_from_config(early)
        env = cache_from_config(early).materialise(
            request,
            start_dir=config.rootpath,
            rebuild=bool(early.getoption("uv_rebuild")) and not hasattr(config, "workerinput"),
            announce=functools.partial(_announce_early, config),
        )
    except UvBuildError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[EARLY_ENV_KEY] = (request, env)
    with tempfile.TemporaryDirectory(prefix="pytest-uvbuild-options-") as scratch:
        out = Path(scratch) / "options.json"
        home = Path(scratch) / "home"
        home.mkdir()
        passenv = [str(p) for p in config.getini("hermetic_passenv")]
        argv = [*_session_args(config), *map(str, config.invocation_params.args)]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [
                    str(env.python),
                    "-s",
                    str(WORKER_SCRIPT),
                    "--options-table",
                    str(out),
                    "--",
                    *argv,
                ],
                cwd=config.invocation_params.dir,
                env=scrubbed_environ(env, home=home, passenv=passenv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=PROBE_TIMEOUT_SECONDS,
                check=False,
            )
        try:
            table = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
    return [row for row in table if isinstance(row, dict)] if isinstance(table, list) else []


def _session_args(config: pytest.Config) -> Iterable[str]:
    """The rootdir and ini file of this session, as the worker's session gets them."""
    yield f"--rootdir={config.rootpath}"
    if config.inipath is not None:
        yield from ("-c", str(config.inipath))


def _announce_early(config: pytest.Config, message: str) -> None:
    """Say what is being built now: no terminal reporter exists yet.

    pytest captures what is written while initial conftests load, and shows
    it only later (or on error): the line goes out past the capture.
    """
    if hasattr(config, "workerinput"):
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    disabled = getattr(capture, "global_and_fixture_disabled", None)
    with disabled() if disabled is not None else contextlib.nullcontext():
        sys.stdout.write(f"uv-build: {message}\n")
        sys.stdout.flush()
