"""Which tests run hermetically, in which env, and how the outer session drives them.

* ``@pytest.mark.hermetic(...)`` on a function, class or module: its
  arguments are validated (:func:`parse_marker`); a bad one is a collection
  error naming it. ``python=[...]`` collects the test once per interpreter
  (``test_x[py3.12]``), each in its own env.
* ``--hermetic-all``: nothing of the suite is imported here. A worker in the
  main env collects, and this side builds a :class:`HermeticItem` stand-in
  per test, so that ``-k``, ``-m``, ``--lf``, ``-x``, junitxml and the
  terminal behave as in-process.
* :class:`HermeticPlugin` is the per-run object: it plans every hermetic item
  (:class:`ItemPlan`), runs it through :mod:`pytest_uvbuild.runner` in
  ``pytest_runtest_protocol`` and stops the workers at the end.

Without ``--uv-build`` the marker is validated and nothing else happens:
marked tests run in-process as usual.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import tempfile
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import pytest

from pytest_uvbuild.errors import HermeticRunError, UvBuildError
from pytest_uvbuild.outcomes import HERMETIC_OUTCOMES_KEY, HermeticOutcomes
from pytest_uvbuild.passthrough import PASSTHROUGH_KEY
from pytest_uvbuild.request import EnvRequest
from pytest_uvbuild.session import SESSION_KEY, is_xdist_worker

if TYPE_CHECKING:
    from pytest_uvbuild.runner import HermeticRunner, Launch

__all__ = [
    "KEEP_WARM_VARIABLE",
    "MARKER",
    "PYTHON_PARAM",
    "HermeticItem",
    "HermeticOptions",
    "HermeticPlugin",
    "ItemPlan",
    "MarkerError",
    "keep_warm_seconds",
    "parse_marker",
    "with_python_id",
    "without_python_id",
]

MARKER: Final = "hermetic"
#: The parameter ``python=[...]`` adds; its ids are ``py<version>``.
PYTHON_PARAM: Final = "uvbuild_python"
_ARGUMENTS: Final = ("timeout", "env", "python", "groups", "extras", "project", "network")


class MarkerError(UvBuildError, ValueError):
    """A ``hermetic`` marker has an unknown argument or a value of the wrong type."""


class HermeticOptions(NamedTuple):
    """The merged arguments of every ``hermetic`` marker on a test (closest wins)."""

    timeout: float | None = None
    timeout_given: bool = False
    env: tuple[tuple[str, str], ...] = ()
    pythons: tuple[str, ...] = ()
    python_matrix: bool = False
    groups: tuple[str, ...] | None = None
    extras: tuple[str, ...] | None = None
    project: str | None = None
    network: bool = True


def _names(value: Any, argument: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise MarkerError(
        f"{where}: hermetic({argument}=...) must be a string or a list of strings, not {value!r}"
    )


def parse_marker(marks: Iterable[Any], where: str) -> HermeticOptions:
    """Merge ``hermetic`` marks (closest first) into options; raise :class:`MarkerError`."""
    merged: dict[str, Any] = {}
    for mark in marks:
        if mark.args:
            raise MarkerError(
                f"{where}: hermetic takes keyword arguments only "
                f"({', '.join(_ARGUMENTS)}), got positional {list(mark.args)!r}"
            )
        for name, value in mark.kwargs.items():
            if name not in _ARGUMENTS:
                raise MarkerError(
                    f"{where}: hermetic got an unknown argument {name!r}; "
                    f"valid arguments are {', '.join(_ARGUMENTS)}"
                )
            merged.setdefault(name, value)
    options: dict[str, Any] = {}
    if "timeout" in merged:
        timeout = merged["timeout"]
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise MarkerError(
                f"{where}: hermetic(timeout=...) must be a positive number of seconds "
                f"or None, not {timeout!r}"
            )
        options["timeout"] = None if timeout is None else float(timeout)
        options["timeout_given"] = True
    if "env" in merged:
        env = merged["env"]
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise MarkerError(
                f"{where}: hermetic(env=...) must be a dict of strings to strings, not {env!r}"
            )
        options["env"] = tuple(sorted(env.items()))
    if merged.get("python") is not None:
        python = merged["python"]
        options["pythons"] = _names(python, "python", where)
        options["python_matrix"] = not isinstance(python, str)
        if not options["pythons"]:
            raise MarkerError(f"{where}: hermetic(python=[]) names no interpreter")
    for name in ("groups", "extras"):
        if merged.get(name) is not None:
            options[name] = _names(merged[name], name, where)
    if merged.get("project") is not None:
        project = merged["project"]
        if not isinstance(project, (str, os.PathLike)):
            raise MarkerError(f"{where}: hermetic(project=...) must be a path, not {project!r}")
        options["project"] = os.fspath(project)
    if "network" in merged:
        if not isinstance(merged["network"], bool):
            raise MarkerError(
                f"{where}: hermetic(network=...) must be True or False, not {merged['network']!r}"
            )
        options["network"] = merged["network"]
    return HermeticOptions(**options)


def with_python_id(text: str, version: str) -> str:
    """``test_x`` -> ``test_x[py3.12]``; ``test_x[1]`` -> ``test_x[1-py3.12]``."""
    if text.endswith("]") and "[" in text:
        return f"{text[:-1]}-py{version}]"
    return f"{text}[py{version}]"


def without_python_id(text: str, version: str) -> str:
    """Undo :func:`with_python_id`."""
    for suffix, replacement in ((f"[py{version}]", ""), (f"-py{version}]", "]")):
        if text.endswith(suffix):
            return text[: -len(suffix)] + replacement
    return text


class ItemPlan(NamedTuple):
    """How one outer item runs: its inner node id, its batch, its limits."""

    inner_id: str
    key: tuple[EnvRequest, tuple[tuple[str, str], ...]] | None
    timeout: float | None
    network: bool = True
    error: str | None = None


class HermeticItem(pytest.Item):
    """The outer stand-in for a test collected inside the locked env (``--hermetic-all``)."""

    def __init__(
        self,
        *,
        inner_id: str,
        location: Sequence[Any],
        markers: Sequence[Sequence[Any]],
        keywords: Iterable[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.inner_id = inner_id
        self._reportinfo = (self.path, location[1], str(location[2]))
        for name, args, mark_kwargs in markers:
            mark = pytest.Mark(str(name), tuple(args), dict(mark_kwargs), _ispytest=True)
            self.own_markers.append(mark)
            self.keywords.setdefault(str(name), mark)
        self.extra_keyword_matches.update(keywords)

    def runtest(self) -> None:
        """Never called: the test body runs only in the locked env."""
        raise RuntimeError(f"{self.nodeid} runs only inside the locked environment")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """The inner item's location."""
        return self._reportinfo


def _hermetic_timeout(config: pytest.Config) -> float | None:
    value = config.getoption("hermetic_timeout", None)
    if value is None:
        raw = config.getini("hermetic_timeout")
        if raw in (None, ""):
            return None
        try:
            value = float(str(raw))
        except ValueError:
            raise pytest.UsageError(
                f"hermetic_timeout = {raw!r} is not a number of seconds. "
                "Fix: set it to e.g. 60, or remove it."
            ) from None
    return float(value) if value and float(value) > 0 else None


#: Overrides ini ``hermetic_keep_warm`` (``0`` turns warm workers off).
KEEP_WARM_VARIABLE: Final = "PYTEST_UVBUILD_KEEP_WARM"
#: How long a zygote waits for the next session unless configured otherwise.
DEFAULT_KEEP_WARM_SECONDS: Final = 120.0


def keep_warm_seconds(config: pytest.Config) -> float:
    """How long a zygote left by this session waits (0: none is left, none is used).

    ``PYTEST_UVBUILD_KEEP_WARM`` wins over ini ``hermetic_keep_warm``; either
    is a number of seconds or ``auto`` (the default): 120, or 0 on CI (the
    ``CI`` or ``BUILD_NUMBER`` variable set, as pytest itself tells), since a
    CI job rarely runs a second session.
    """
    raw = os.environ.get(KEEP_WARM_VARIABLE)
    if raw is None:
        raw = str(config.getini("hermetic_keep_warm") or "auto")
    raw = raw.strip().lower()
    if raw in ("", "auto"):
        on_ci = any(os.environ.get(name) for name in ("CI", "BUILD_NUMBER"))
        return 0.0 if on_ci else DEFAULT_KEEP_WARM_SECONDS
    try:
        seconds = float(raw)
        if not math.isfinite(seconds):
            raise ValueError(raw)  # a zygote cannot wait forever (nor NaN seconds)
    except ValueError:
        raise pytest.UsageError(
            f"hermetic_keep_warm must be a number of seconds or 'auto', not {raw!r}. "
            f"Fix: set it (or {KEEP_WARM_VARIABLE}) to e.g. 120, or 0 to turn it off."
        ) from None
    return max(0.0, seconds)


class _Plans:
    """The selected hermetic items by batch key: their inner ids, and which are offline."""

    def __init__(self) -> None:
        self.members: dict[object, list[str]] = {}
        self.no_network: dict[object, set[str]] = {}


_PLAN_KEY: Final = pytest.StashKey[ItemPlan]()
#: The session's parser under ``--hermetic-all`` (see :meth:`HermeticPlugin._know_inner_ini`).
INI_PARSER_KEY: Final = pytest.StashKey[pytest.Parser]()
#: ``config.cache`` entry: per command line, the files of the main env's hermetic tests.
_HINT_CACHE_KEY: Final = "uvbuild/hermetic-main-env"
#: How many command lines the hint remembers (the oldest goes first).
_HINT_LIMIT: Final = 32


class HermeticPlugin:
    """Per-run wiring of hermetic tests; registered by the plugin in ``pytest_configure``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.uvbuild = config.stash[SESSION_KEY]
        self.enabled = self.uvbuild.enabled
        self.hermetic_all = bool(config.getoption("hermetic_all", False)) and self.enabled
        self.default_timeout = _hermetic_timeout(config)
        self.passenv = tuple(str(p) for p in config.getini("hermetic_passenv"))
        self.keep_warm = 0.0
        if self.enabled and not is_xdist_worker(config):
            # Read here, not in prewarm (which a session without hermetic
            # tests never imports), so that a bad value is an error at once.
            self.keep_warm = keep_warm_seconds(config)
        self._runner: HermeticRunner | None = None
        self._scratch: Path | None = None
        self._plans = _Plans()
        self._launches: dict[object, Launch] = {}
        self._prestarted = False
        #: Set at session finish: whether the session ended well enough to keep workers warm.
        self._leave_warm = False
        #: The cache's hints, once read (see _hints_by_arguments).
        self._hints: dict[str, Any] | None = None
        #: What the cache said at session start (None: nothing, or not asked).
        self._hinted: list[str] | Literal[False] | None = None
        self._main_key: tuple[EnvRequest, tuple[tuple[str, str], ...]] = (
            self.uvbuild.request,
            (),
        )
        if HERMETIC_OUTCOMES_KEY not in config.stash:
            config.stash[HERMETIC_OUTCOMES_KEY] = HermeticOutcomes()

    # -- scratch space and the runner ------------------------------------

    @property
    def scratch(self) -> Path:
        """Per-session scratch: worker specs, logs, capture files and the scrubbed HOME."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="pytest-uvbuild-"))
            (self._scratch / "home").mkdir()
        return self._scratch

    @property
    def runner(self) -> HermeticRunner:
        """The session's runner, made on first use."""
        if self._runner is None:
            from pytest_uvbuild.runner import HermeticRunner

            self._runner = HermeticRunner(
                self.config, scratch=self.scratch, forward_collection_warnings=self.hermetic_all
            )
        return self._runner

    def _conftest_option_strings(self) -> list[str]:
        """Long option strings registered by conftest.py files (forwarded as given)."""
        found: list[str] = []
        recorder = _OptionRecorder(found)
        for plugin in self.config.pluginmanager.get_plugins():
            path = getattr(plugin, "__file__", None)
            addoption = getattr(plugin, "pytest_addoption", None)
            if not path or os.path.basename(path) != "conftest.py" or addoption is None:
                continue
            try:
                addoption(
                    **{
                        name: value
                        for name, value in (
                            ("parser", recorder),
                            ("pluginmanager", self.config.pluginmanager),
                        )
                        if name in addoption.__code__.co_varnames
                    }
                )
            except Exception:  # noqa: S112 - best effort: the worker registers them anyway
                continue
        return found

    def _passthrough_options(self) -> tuple[str, ...]:
        """Option strings that only the inside knows (see :mod:`.passthrough`)."""
        registered: tuple[str, ...] = self.config.stash.get(PASSTHROUGH_KEY, ())
        return registered

    def launch_for(self, key: tuple[EnvRequest, tuple[tuple[str, str], ...]]) -> Launch:
        """Materialise the env of ``key`` and describe how to start its workers (once)."""
        launch = self._launches.get(key)
        if launch is None:
            launch = self._launches[key] = self._make_launch(key)
        return launch

    def _make_launch(self, key: tuple[EnvRequest, tuple[tuple[str, str], ...]]) -> Launch:
        from pytest_uvbuild.runner import (
            Launch,
            collection_options,
            forwarded_options,
            scrubbed_environ,
        )

        request, env_vars = key
        env = self.uvbuild.env_for(request)
        environ = scrubbed_environ(
            env, home=self.scratch / "home", passenv=self.passenv, extra=dict(env_vars)
        )
        options = forwarded_options(
            self.config,
            scratch=self.scratch,
            extra_option_strings=(
                self._passthrough_options()
                if self.hermetic_all
                else self._conftest_option_strings()
            ),
        )
        return Launch(
            python=env.python,
            environ=environ,
            cwd=self.config.invocation_params.dir,
            options=tuple(options),
            label=f"{env.key} ({env.interpreter.describe()})",
            inherit_output=self.config.getoption("capture", "fd") == "no",
            collect_options=tuple(collection_options(self.config)),
            keep_warm=self.keep_warm,
            junit_family=getattr(self._junitxml, "family", None),
        )

    @property
    def _junitxml(self) -> Any:
        """This session's junitxml writer (``LogXML``), if it writes one."""
        from _pytest.junitxml import xml_key

        return self.config.stash.get(xml_key, None)

    @property
    def _may_prestart(self) -> bool:
        """Whether a worker may be spawned before this session knows it needs one."""
        return (
            self.enabled
            and not self.hermetic_all
            and not self.config.getoption("collectonly", False)
            # An xdist controller runs no test itself.
            and not self.config.pluginmanager.has_plugin("dsession")
        )

    def _prestart(self, files: Sequence[str] = ()) -> None:
        self._prestarted = True
        root = self.config.rootpath
        try:
            # The session's own way first: it may have to rebuild (--uv-rebuild).
            self.uvbuild.main_env  # noqa: B018 - materialising is the point
            self.runner.prestart(
                self._main_key,
                self.launch_for(self._main_key),
                list(self.config.args),
                # A file deleted since the hint was written would stop the worker.
                collect=[str(root / name) for name in files if (root / name).is_file()],
            )
        except UvBuildError:
            return  # reported by the session start or against the tests that need the env

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Spawn the main env's worker now if the last such session ran hermetic tests.

        Python and pytest start inside while this side collects: the worker's
        start-up is the longest wait of a hermetic run. It also starts
        collecting the files that held the last session's hermetic tests; if
        this session needs others, a fresh worker takes over. Without a hint
        (the first run, or no cache plugin) the worker starts at the first
        hermetic test collected instead.
        """
        if self._may_prestart and not is_xdist_worker(self.config):
            self._hinted = self._hint()
            if self._hinted:
                self._prestart(self._hinted)

    def pytest_itemcollected(self, item: pytest.Item) -> None:
        """At the first hermetic test, spawn the main env's worker: it configures meanwhile.

        Not when the last session with these arguments ran no hermetic test
        (they were deselected, say): the worker then starts when one runs.
        """
        if (
            self._prestarted
            or self._hinted is False
            or not self._may_prestart
            or item.get_closest_marker(MARKER) is None
        ):
            return
        self._prestart()

    def _hints_by_arguments(self) -> dict[str, Any] | None:
        """The early-spawn hints in pytest's cache (None without the cache plugin).

        One entry per command line: the files (relative to the rootdir) that
        held that session's hermetic tests in the main env, or False. Read
        once a session: at its start, and reused at its end.
        """
        cache = getattr(self.config, "cache", None)
        if cache is None:
            return None
        if self._hints is None:
            loaded = cache.get(_HINT_CACHE_KEY, {})
            self._hints = loaded if isinstance(loaded, dict) else {}
        return self._hints

    @property
    def _hint_key(self) -> str:
        """The arguments, and the options that select among their tests (-k, -m, --lf, --deselect).

        Runs that select differently hold their hermetic tests in other
        files, so each keeps its own hint. Options that do not select (a
        ``--basetemp``, a report path) stay out: they would make every run new.
        """
        option = self.config.option
        selecting = [
            f"-k={getattr(option, 'keyword', '')}",
            f"-m={getattr(option, 'markexpr', '')}",
            f"--lf={bool(getattr(option, 'lf', False))}",
            *(f"--deselect={nodeid}" for nodeid in sorted(getattr(option, "deselect", None) or ())),
        ]
        return "\0".join([*self.config.args, *selecting])

    def _hint(self) -> list[str] | Literal[False] | None:
        """What the last session with these arguments left: its files, False, or None."""
        hints = self._hints_by_arguments()
        known = None if hints is None else hints.get(self._hint_key)
        if known is False or (
            isinstance(known, list) and all(isinstance(name, str) for name in known)
        ):
            return known
        return None

    def _remember(self, value: list[str] | Literal[False]) -> None:
        """Record this session's hint; the cache file is written only when it changes."""
        hints = self._hints_by_arguments()
        key = self._hint_key
        if hints is None or hints.get(key) == value:
            return
        hints.pop(key, None)
        hints[key] = value
        while len(hints) > _HINT_LIMIT:
            hints.pop(next(iter(hints)))
        self.config.cache.set(_HINT_CACHE_KEY, hints)

    # -- planning ------------------------------------------------------

    def _key(self, options: HermeticOptions, python: str | None) -> tuple[EnvRequest, Any]:
        changes: dict[str, Any] = {}
        if python is not None:
            changes["python"] = python
        if options.groups is not None:
            changes["groups"] = options.groups
        if options.extras is not None:
            changes["extras"] = options.extras
        if options.project is not None:
            project = Path(options.project)
            changes["project_dir"] = (
                project if project.is_absolute() else self.config.rootpath / project
            ).resolve()
        request = self.uvbuild.request_with(**changes) if changes else self.uvbuild.request
        return (request, options.env)

    def plan(self, options: HermeticOptions, inner_id: str, python: str | None) -> ItemPlan:
        """The plan of one item with these marker options."""
        timeout = options.timeout if options.timeout_given else self.default_timeout
        return ItemPlan(
            inner_id=inner_id,
            key=self._key(options, python),
            timeout=timeout,
            network=options.network,
        )

    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Validate hermetic markers; with --uv-build, expand ``python=[...]``."""
        marks = list(metafunc.definition.iter_markers(MARKER))
        if not marks:
            return
        try:
            options = parse_marker(marks, metafunc.definition.nodeid)
        except MarkerError as exc:
            raise pytest.Collector.CollectError(str(exc)) from None
        if not (self.enabled and options.python_matrix):
            return
        if PYTHON_PARAM not in metafunc.fixturenames:
            metafunc.fixturenames.append(PYTHON_PARAM)
        metafunc.parametrize(
            PYTHON_PARAM,
            list(options.pythons),
            ids=[f"py{p}" for p in options.pythons],
        )

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Plan every hermetic item that has no plan yet (the marker mode)."""
        if not self.enabled:
            return
        for item in items:
            if _PLAN_KEY in item.stash:
                continue
            marks = list(item.iter_markers(MARKER))
            if not marks and not self.hermetic_all:
                continue
            callspec = getattr(item, "callspec", None)
            python = callspec.params.get(PYTHON_PARAM) if callspec is not None else None
            inner_id = item.nodeid if python is None else without_python_id(item.nodeid, python)
            try:
                options = parse_marker(marks, item.nodeid)
            except MarkerError as exc:
                item.stash[_PLAN_KEY] = ItemPlan(inner_id, None, None, error=str(exc))
                continue
            if python is None and options.pythons:
                python = options.pythons[0]
            item.stash[_PLAN_KEY] = self.plan(options, inner_id, python)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Group the selected hermetic items into batches; refuse --pdb and --trace."""
        if not self.enabled:
            return
        plans = _Plans()
        for item in session.items:
            plan = item.stash.get(_PLAN_KEY, None)
            if plan is None or plan.key is None:
                continue
            plans.members.setdefault(plan.key, []).append(plan.inner_id)
            if not plan.network:
                plans.no_network.setdefault(plan.key, set()).add(plan.inner_id)
        self._plans = plans
        if self._runner is not None:
            # A batch made before the plans (the worker that collected for
            # --hermetic-all) learns its tests now: without them each test
            # would run as the batch's last, tearing down every fixture.
            for key, batch in self._runner.batches.items():
                batch.members = list(plans.members.get(key, ()))
                batch.no_network = frozenset(plans.no_network.get(key, ()))
        if plans.members and not (
            self.config.getoption("usepdb", False) or self.config.getoption("trace", False)
        ):
            self._start_first_batch(session)
        if plans.members and (
            self.config.getoption("usepdb", False) or self.config.getoption("trace", False)
        ):
            raise pytest.UsageError(
                "--pdb and --trace cannot reach hermetic tests: they run in another process, "
                "inside the locked environment. Fix: run the test without --uv-build "
                "(in-process) to debug it, or deselect the hermetic tests."
            )

    def _start_first_batch(self, session: pytest.Session) -> None:
        """Start the first hermetic test's worker now: it collects while plain tests run.

        Without xdist it also gets its tests and runs ahead. An xdist worker
        only learns its share one test at a time, so its worker just collects.
        """
        for item in session.items:
            plan = item.stash.get(_PLAN_KEY, None)
            if plan is None or plan.key is None:
                continue
            if plan.key == self._main_key and self.runner.standby:
                batch = self._batch(plan.key, plan)
                with contextlib.suppress(UvBuildError):  # reported when the test runs
                    if batch.preplanned:
                        batch.submit(plan.inner_id, None)
                    else:
                        batch.start_worker(list(batch.members))
            return

    def _batch(self, key: Any, plan: ItemPlan) -> Any:
        return self.runner.batch(
            key,
            lambda: self.launch_for(key),
            members=self._plans.members.get(key, [plan.inner_id]),
            no_network=self._plans.no_network.get(key, ()),
            preplanned=not is_xdist_worker(self.config),
        )

    # -- --hermetic-all collection -------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool | None:
        """With --hermetic-all, collect inside the locked env and build stand-ins here."""
        if not self.hermetic_all or self.config.pluginmanager.has_plugin("dsession"):
            return None
        hook = self.config.hook
        batch = self.runner.batch(
            self._main_key,
            lambda: self.launch_for(self._main_key),
            members=(),
            no_network=(),
            preplanned=not is_xdist_worker(self.config),
        )
        try:
            batch.start_worker(None, collect=list(self.config.args), report_items=True)
            batch.wait_collected()
        except UvBuildError as exc:
            # pytest checks the ini file's keys as this hook ends, and its
            # "Unknown config option" (with --strict-config) would replace
            # this error: keys the inside might know are let be here.
            self._know_inner_ini(self._ini_file_keys())
            raise pytest.UsageError(str(exc)) from None
        # Markers that the suite's conftest.py files register exist only inside;
        # -m and --strict-markers need them here too.
        known = set(self.config.getini("markers"))
        for line in batch.collected_markers:
            if line not in known:
                self.config.addinivalue_line("markers", line)
        self._know_inner_ini(batch.collected_ini_names)
        items: list[pytest.Item] = []
        for report in batch.collect_errors:
            hook.pytest_collectreport(report=report)
        for data in batch.collected_items or ():
            items.extend(self._stand_ins(session, data))
        hook.pytest_collectreport(report=pytest.CollectReport("", "passed", None, list(items)))
        for item in items:
            item.ihook.pytest_itemcollected(item=item)
        session.items = items
        try:
            hook.pytest_collection_modifyitems(session=session, config=self.config, items=items)
        finally:
            hook.pytest_collection_finish(session=session)
        session.testscollected = len(items)
        return True

    def _know_inner_ini(self, names: Iterable[str]) -> None:
        """Register here the ini keys that only the inner session knows.

        Plugins that only the lock has, and the suite's conftest.py files,
        register ini keys (``asyncio_mode``, say) inside. pytest checks the
        ini file's keys once collection ends: unregistered, this session would
        warn of them, or fail with ``--strict-config``, where an in-process
        run passes. Keys this side knows keep their own definitions.
        """
        parser = self.config.stash.get(INI_PARSER_KEY, None)
        # pytest has no public way to ask which keys a parser knows.
        known = getattr(parser, "_inidict", None)
        aliases = getattr(parser, "_ini_aliases", None)
        if parser is None or not isinstance(known, dict) or not isinstance(aliases, dict):
            return
        for name in names:
            if name not in known and name not in aliases:
                parser.addini(name, "(registered inside the locked environment)")

    def _ini_file_keys(self) -> list[str]:
        """The keys set in the ini file and by ``-o`` (pytest 9 keeps them private)."""
        table = getattr(self.config, "_inicfg", None)
        if not isinstance(table, Mapping):
            table = getattr(self.config, "inicfg", None)  # pytest 8
        return [str(name) for name in table] if isinstance(table, Mapping) else []

    def _stand_ins(self, session: pytest.Session, data: Mapping[str, Any]) -> Iterator[pytest.Item]:
        inner_id = str(data["nodeid"])
        marks = [
            pytest.Mark(str(n), tuple(a), dict(k), _ispytest=True)
            for n, a, k in data["markers"]
            if n == MARKER
        ]
        try:
            options = parse_marker(marks, inner_id)
        except MarkerError as exc:
            session.config.hook.pytest_collectreport(
                report=pytest.CollectReport(inner_id, "failed", str(exc), [])
            )
            return
        variants: Sequence[str | None] = options.pythons if options.python_matrix else [None]
        for python in variants:
            nodeid, name = inner_id, str(data["name"])
            location = list(data["location"])
            keywords = list(data["keywords"])
            if python is not None:
                nodeid, name = with_python_id(nodeid, python), with_python_id(name, python)
                location[2] = with_python_id(str(location[2]), python)
                keywords += [name, f"py{python}"]
            item = HermeticItem.from_parent(
                session,
                name=name,
                nodeid=nodeid,
                path=Path(str(data["path"])),
                inner_id=inner_id,
                location=location,
                markers=data["markers"],
                keywords=keywords,
            )
            chosen = python if python is not None else (options.pythons or (None,))[0]
            item.stash[_PLAN_KEY] = self.plan(options, inner_id, chosen)
            yield item

    # -- running ---------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> bool | None:
        """Run a hermetic item in its env's worker and log the streamed reports."""
        plan = item.stash.get(_PLAN_KEY, None) if self.enabled else None
        if plan is None:
            return None
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        torn_down = False
        try:
            for report in self._reports(item, plan, nextitem):
                if report.when == "teardown" and not torn_down:
                    torn_down = True
                    self._log(item, self._with_outer_teardown(item, nextitem, report))
                else:
                    self._log(item, report)
        except HermeticRunError as exc:
            raise pytest.UsageError(str(exc)) from None
        if not torn_down:
            outer = self._teardown_outer(item, nextitem)
            if outer is not None:
                self._log(item, outer)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _reports(
        self, item: pytest.Item, plan: ItemPlan, nextitem: pytest.Item | None
    ) -> Iterator[Any]:
        if plan.error is not None or plan.key is None:
            yield from self._made_error(item, plan.error or "hermetic test without an env")
            return
        key = plan.key
        batch = self._batch(key, plan)
        successor = None
        if nextitem is not None:
            next_plan = nextitem.stash.get(_PLAN_KEY, None)
            if next_plan is not None and next_plan.key == key:
                successor = next_plan.inner_id
        try:
            yield from batch.run(plan.inner_id, successor, plan.timeout)
        except HermeticRunError:
            raise
        except UvBuildError as exc:
            batch.broken = str(exc)
            yield from self._made_error(item, str(exc))

    def _made_error(self, item: pytest.Item, message: str) -> Iterator[Any]:
        runner = self.runner
        yield runner.make_report(item.nodeid, "setup", "failed", message, start=0.0, stop=0.0)
        yield runner.make_report(item.nodeid, "teardown", "passed", None, start=0.0, stop=0.0)

    def _log(self, item: pytest.Item, report: Any) -> None:
        report.nodeid = item.nodeid
        report.location = item.location
        if not report.keywords:
            report.keywords = dict.fromkeys(item.keywords, 1)
        # Travels with the report through xdist, so that the controller (which
        # writes the build record) can count hermetic outcomes too.
        report.uvbuild_hermetic = True
        recorded = report.__dict__.pop("uvbuild_junitxml", None)
        xml = self._junitxml
        if recorded and xml is not None:
            # What record_testsuite_property and record_xml_attribute recorded inside.
            for kind, name, value in recorded:
                if kind == "property":
                    xml.add_global_property(name, value)
                else:
                    xml.node_reporter(report).add_attribute(name, value)
        if not is_xdist_worker(self.config):
            self.config.stash[HERMETIC_OUTCOMES_KEY].record(report)
        item.ihook.pytest_runtest_logreport(report=report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On an xdist controller, count the hermetic reports its workers send."""
        if getattr(report, "uvbuild_hermetic", False) and self.config.pluginmanager.has_plugin(
            "dsession"
        ):
            self.config.stash[HERMETIC_OUTCOMES_KEY].record(report)

    def _teardown_outer(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> pytest.TestReport | None:
        """Tear down here what the next item does not share; its report, or None.

        In-process tests before this one may have left module or session
        fixtures set up here: pytest's own protocol would tear them down in
        this test's teardown, capturing their output and log, as here.
        """
        setupstate = getattr(item.session, "_setupstate", None)
        if setupstate is None or not getattr(setupstate, "stack", None):
            return None
        with _captured(item, "teardown"):
            call = pytest.CallInfo.from_call(
                functools.partial(setupstate.teardown_exact, nextitem),
                when="teardown",
                reraise=(pytest.exit.Exception, KeyboardInterrupt),
            )
        report: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
        return report

    def _with_outer_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None, report: Any
    ) -> Any:
        """The inner teardown ``report`` with the outer teardown's output, time and error.

        In-process both are one teardown, with one report: a second one
        would be a second testcase in junitxml. Only when both fail is the
        outer one logged on its own, so that neither error is lost.
        """
        outer = self._teardown_outer(item, nextitem)
        if outer is None:
            return report
        if outer.failed and report.failed:
            self._log(item, report)
            return outer
        merged: dict[str, str] = dict(report.sections)
        for name, content in outer.sections:
            merged[name] = f"{merged[name]}{content}" if name in merged else content
        report.sections = list(merged.items())
        report.duration += outer.duration
        if outer.failed:
            report.outcome = outer.outcome
            report.longrepr = outer.longrepr
        return report

    # A wrapper, and the innermost (trylast): the workers stop before the
    # build record is written, and what they say while ending reaches the
    # terminal reporter's summary, which comes after every other wrapper.
    @pytest.hookimpl(wrapper=True, trylast=True)
    def pytest_sessionfinish(
        self, session: pytest.Session, exitstatus: int
    ) -> Generator[None, object, object]:
        """Stop every worker: after its current test, or at once when interrupted.

        Workers that ran all their tests end their own sessions meanwhile;
        under ``--hermetic-all`` their warnings from then are taken before
        the summary. Also
        remember, for the next session with these arguments, whether this
        one ran hermetic tests in the main env.
        """
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        if self._may_prestart and not is_xdist_worker(self.config) and not interrupted:
            members = self._plans.members.get(self._main_key, ())
            files = sorted({nodeid.split("::", 1)[0] for nodeid in members})
            self._remember(files or False)
        runner = self._runner
        if runner is not None:
            runner.stop(interrupt=interrupted)
            self._leave_warm = not interrupted
        result = yield
        if runner is not None and not (interrupted or session.shouldstop or session.shouldfail):
            runner.take_last_words()
        return result

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        """Kill what is left and remove the scratch directory; leave warm workers behind.

        The zygotes start when the interpreter exits: their own start-up
        then does not compete with this session's end for the CPU.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.reap()
        if self._scratch is not None:
            from pytest_uvbuild.runner import remove_scratch

            remove_scratch(self._scratch)
            self._scratch = None
        if runner is not None and self._leave_warm:
            runner.leave_warm_workers()


@contextlib.contextmanager
def _captured(item: pytest.Item, when: str) -> Iterator[None]:
    """Capture output and log records around ``when`` into the item's sections, as pytest does."""
    manager = item.config.pluginmanager
    capture = manager.get_plugin("capturemanager")
    logs = manager.get_plugin("logging-plugin")
    # pytest's order: output is captured inside the log capture, so its
    # sections come first.
    with contextlib.ExitStack() as stack:
        if logs is not None:
            stack.enter_context(_log_section(item, when, logs.formatter, logs.log_level))
        if capture is not None:
            stack.enter_context(capture.item_capture(when, item))
        yield


@contextlib.contextmanager
def _log_section(
    item: pytest.Item, when: str, formatter: logging.Formatter, level: int | None
) -> Iterator[None]:
    """Add the log records of the block to the item's ``log`` section of ``when``."""
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    saved = root.level
    if level is not None:
        handler.setLevel(level)
        root.setLevel(min(saved, level))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
        item.add_report_section(when, "log", handler.stream.getvalue().strip())


class _OptionRecorder:
    """Stands in for pytest's parser to learn which options a conftest.py adds."""

    def __init__(self, found: list[str]) -> None:
        self._found = found

    def addoption(self, *names: str, **attrs: Any) -> None:
        self._found.extend(n for n in names if n.startswith("--"))

    _addoption = addoption

    def getgroup(self, *args: Any, **kwargs: Any) -> _OptionRecorder:
        return self

    def addini(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
