"""The inner side of a hermetic run: a pytest session inside the locked env.

This file is executed by path with the env's interpreter
(``python worker.py SPEC.json``); pytest-uvbuild itself is *not* importable
here. It imports only the standard library and pytest, and runs on
Python >= 3.8 with pytest >= 7.

What it does:

* reads the two pipe descriptors from the JSON file named on its command
  line, imports pytest, says ``ready``, and waits for ``configure`` (pytest
  options and the outer session's own arguments, to configure and load the
  initial conftests), then, at session start, for ``collect`` (what to
  collect, which node ids to keep). The outer side can so spawn and
  configure a worker while it still collects; node ids never travel through
  ``argv``;
* runs ``pytest.main`` with :class:`WorkerPlugin`, which collects, keeps the
  requested items and then waits for commands on the *control* pipe:
  ``["run", {"nodeids": [...], "end": bool}]``, ``["stop", {}]`` and
  ``["shutdown", {}]`` (end of file counts as shutdown);
* runs each item only once it knows the next one (or was told the batch
  ends), so that module and session fixtures are torn down exactly as in
  one in-process run;
* streams ``[event, kwargs]`` messages, one JSON document per line, over the
  dedicated *event* pipe. Reports are serialised with pytest's own
  ``pytest_report_to_serializable`` hook. Test output on stdout/stderr can
  therefore never corrupt the protocol.

Events: ``ready``, ``collectreport``, ``collected``, ``logstart``,
``logreport``, ``warning``, ``logfinish``, ``missing``, ``interrupted``,
``internalerror``, ``fatal`` and ``exit``. A test's warnings come before its
``logfinish``. The outer side (:mod:`pytest_uvbuild.runner`) rejects any
other name.
"""

from __future__ import annotations

import json
import os
import sys

# Python puts this file's directory first on sys.path. It is pytest-uvbuild's
# package directory, whose module names (session, project, ...) would shadow
# the project's own top-level modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    del sys.path[0]

import collections  # noqa: E402
import gc  # noqa: E402
import ipaddress  # noqa: E402
import select  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

PROTOCOL_VERSION = 1
#: Set in a serialised report whose longrepr pytest flattened from a repr to text.
TEXT_REPR_KEY = "uvbuild_text_repr"

#: Options of the outer session's own bookkeeping. An ini ``addopts`` may
#: set them inside too; they are reset so that the inner session never writes
#: junitxml, reorders, deselects, stops early or starts xdist workers.
_OUTER_ONLY_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("xmlpath", None),
    ("lf", False),
    ("failedfirst", False),
    ("newfirst", False),
    ("stepwise", False),
    ("stepwise_skip", False),
    ("maxfail", 0),
    ("keyword", ""),
    ("markexpr", ""),
    ("deselect", []),
    ("durations", None),
    ("usepdb", False),
    ("trace", False),
    ("collectonly", False),
    ("numprocesses", None),
    ("dist", "no"),
    ("looponfail", False),
    ("report_log", None),
    ("htmlpath", None),
    ("cacheshow", False),
    ("cacheclear", False),
    ("setupplan", False),
    ("setuponly", False),
    ("setupshow", False),
)


def _jsonable(value: Any) -> Any:
    """Turn a value that JSON cannot carry into something it can (str() as last resort)."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    # str(), as junitxml writes a user property: bytes stay b'\xff', not U+FFFD.
    return str(value)


class EventChannel:
    """The write end of the event pipe: one JSON ``[event, kwargs]`` per line.

    :meth:`send` writes at once; :meth:`queue` leaves the line in the buffer
    until the next :meth:`send` or :meth:`flush`. A test's reports are queued
    and leave before its next phase starts, its ``logfinish`` with the next
    test's ``logstart`` (three writes per test rather than five): a crash
    still finds everything before it delivered.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # Our own buffer, not a buffered file: a test that forks must not
        # hand queued lines to a child whose exit would flush them twice.
        self._pending: list[bytes] = []

    def queue(self, event: str, **kwargs: Any) -> None:
        line = json.dumps([event, kwargs], default=_jsonable, ensure_ascii=True)
        self._pending.append(line.encode("ascii") + b"\n")

    def send(self, event: str, **kwargs: Any) -> None:
        self.queue(event, **kwargs)
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = memoryview(b"".join(self._pending))
        self._pending = []
        while data:
            data = data[os.write(self._fd, data) :]


class ControlChannel:
    """The read end of the control pipe; end of file reads as ``shutdown``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False

    def _line(self) -> Any:
        if b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            return json.loads(line.decode("utf-8"))
        return None

    def read(self, block: bool) -> Any:
        """Return the next command, or None when none is waiting (non-blocking)."""
        while True:
            command = self._line()
            if command is not None:
                return command
            if self._eof:
                return ["shutdown", {}]
            if not block:
                ready, _, _ = select.select([self._fd], [], [], 0)
                if not ready:
                    return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                self._eof = True
            self._buffer += chunk


class NetworkBlockedError(ConnectionRefusedError):
    """A test marked ``hermetic(network=False)`` tried to reach a non-loopback host."""


def _is_loopback(host: Any) -> bool:
    if host is None or host in ("", "localhost", "localhost.localdomain"):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        return ipaddress.ip_address(str(host).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class NetworkGuard:
    """Refuse every non-loopback connection and name lookup while installed."""

    def __init__(self) -> None:
        self._saved: dict[tuple[Any, str], Any] | None = None

    @staticmethod
    def _refuse(what: str, target: Any) -> None:
        raise NetworkBlockedError(
            "network access is blocked for this test by hermetic(network=False): "
            "%s %r refused (only loopback addresses are allowed)" % (what, target)
        )

    def install(self) -> None:
        sock = socket.socket
        originals: dict[tuple[Any, str], Any] = {
            (sock, "connect"): sock.connect,
            (sock, "connect_ex"): sock.connect_ex,
            (sock, "sendto"): sock.sendto,
            (socket, "getaddrinfo"): socket.getaddrinfo,
            (socket, "gethostbyname"): socket.gethostbyname,
        }
        guard = self

        def check_address(self: socket.socket, address: Any, what: str) -> None:
            if (
                self.family in (socket.AF_INET, socket.AF_INET6)
                and isinstance(address, tuple)
                and not _is_loopback(address[0])
            ):
                guard._refuse(what, address)

        def guarded_connect(self: socket.socket, address: Any) -> Any:
            check_address(self, address, "connect to")
            return originals[sock, "connect"](self, address)

        def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
            check_address(self, address, "connect to")
            return originals[sock, "connect_ex"](self, address)

        def guarded_sendto(self: socket.socket, data: Any, *args: Any) -> Any:
            check_address(self, args[-1], "send to")
            return originals[sock, "sendto"](self, data, *args)

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _is_loopback(host):
                guard._refuse("name lookup of", host)
            return originals[socket, "getaddrinfo"](host, *args, **kwargs)

        def guarded_gethostbyname(host: Any) -> Any:
            if not _is_loopback(host):
                guard._refuse("name lookup of", host)
            return originals[socket, "gethostbyname"](host)

        replacements = {
            (sock, "connect"): guarded_connect,
            (sock, "connect_ex"): guarded_connect_ex,
            (sock, "sendto"): guarded_sendto,
            (socket, "getaddrinfo"): guarded_getaddrinfo,
            (socket, "gethostbyname"): guarded_gethostbyname,
        }
        for (owner, name), replacement in replacements.items():
            setattr(owner, name, replacement)
        self._saved = originals

    def uninstall(self) -> None:
        if self._saved is None:
            return
        for (owner, name), original in self._saved.items():
            setattr(owner, name, original)
        self._saved = None


class JunitxmlRelay:
    """Inside, the outer session's junitxml writer as the fixtures that record into it see it.

    ``record_testsuite_property`` and ``record_xml_attribute`` look for the
    writer in the config's stash and record nothing without one;
    ``record_property`` reads its ``family`` to warn about xunit2. What they
    record here travels with the test's next report (as ``uvbuild_junitxml``)
    and the outer session's writer records it.
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self.pending: list[list[str]] = []

    def add_global_property(self, name: str, value: object) -> None:
        __tracebackhide__ = True
        if not isinstance(name, str):
            raise TypeError(
                "name parameter needs to be a string, but %s given" % type(name).__name__
            )
        self.pending.append(["property", name, str(value)])

    def node_reporter(self, report: Any) -> "JunitxmlRelay":
        return self

    def add_attribute(self, name: object, value: object) -> None:
        self.pending.append(["attribute", str(name), str(value)])

    def take(self) -> list[list[str]]:
        taken, self.pending = self.pending, []
        return taken


def _install_junitxml_relay(config: Any, family: str) -> "JunitxmlRelay | None":
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - pytest >= 7 has it
        return None
    relay = JunitxmlRelay(family)
    config.stash[xml_key] = relay
    # junitxml's pytest_unconfigure unregisters whatever it finds there.
    config.pluginmanager.register(relay, "uvbuild-junitxml-relay")
    return relay


def _keyword_names(item: Any) -> list[str]:
    """The names ``-k`` matches for ``item``, as this pytest computes them."""
    try:
        from _pytest.mark import KeywordMatcher

        return sorted(KeywordMatcher.from_item(item)._names)
    except Exception:  # private API: fall back to the documented rule
        names = set()
        for node in item.listchain()[1:]:
            names.add(node.name)
        names.update(item.listextrakeywords())
        function = getattr(item, "function", None)
        if function is not None:
            names.update(getattr(function, "__dict__", {}))
        names.update(mark.name for mark in item.iter_markers())
        return sorted(names)


def _ini_names(config: Any) -> list[str]:
    """The ini keys this session knows: pytest's, its plugins' and its conftest files'.

    pytest keeps them on its parser, with no public way to list them; an
    empty list (the outer session then warns of keys it does not know, as it
    would anyway) if a pytest keeps them elsewhere.
    """
    parser = getattr(config, "_parser", None)
    names: set[str] = set()
    for table in ("_inidict", "_ini_aliases"):
        known = getattr(parser, table, None)
        if isinstance(known, dict):
            names.update(str(name) for name in known)
    return sorted(names)


def _item_data(item: Any, rootdir: str) -> dict[str, Any]:
    """What the outer session needs to build a stand-in for ``item``."""
    relpath, lineno, domain = item.location
    path = getattr(item, "path", None) or getattr(item, "fspath", None)
    return {
        "nodeid": item.nodeid,
        "name": item.name,
        "location": [relpath, lineno, domain],
        "path": os.fspath(path) if path is not None else rootdir,
        "keywords": _keyword_names(item),
        "markers": [[m.name, list(m.args), dict(m.kwargs)] for m in item.iter_markers()],
    }


class WorkerPlugin:
    """Collect, keep the requested items, run them on command, stream every event."""

    def __init__(self, events: EventChannel, control: ControlChannel) -> None:
        self.spec: dict[str, Any] = {}
        self.events = events
        self.control = control
        self.config: Any = None
        self.items: dict[str, Any] = {}
        self.missing: list[str] = []
        self.no_network: set[str] = set()
        self.current: str | None = None
        self.guard = NetworkGuard()
        self._devnull = None
        #: The outer session's junit_family when it writes junitxml, else None.
        self.junit_family: str | None = None
        self.junitxml: JunitxmlRelay | None = None

    # -- configuration ---------------------------------------------------

    def pytest_configure(self, config: Any) -> None:
        self.config = config
        # pytest-uvbuild is not installed here, yet --strict-markers must
        # accept the marker that sent the test here.
        config.addinivalue_line("markers", "hermetic: runs inside the uv-locked env")
        for name, value in _OUTER_ONLY_OPTIONS:
            if hasattr(config.option, name):
                setattr(config.option, name, value)
        if self.junit_family:
            self.junitxml = _install_junitxml_relay(config, self.junit_family)

    def _serialise(self, report: Any) -> Any:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        # pytest flattens a longrepr without a traceback (a doctest's, a
        # missing fixture's, a collection error's) to its text. The outer side
        # must know it was no plain string: the short summary quotes a string
        # longrepr after the test's id (all of it on CI), never such a repr.
        if (
            isinstance(data, dict)
            and isinstance(data.get("longrepr"), str)
            and hasattr(report.longrepr, "toterminal")
        ):
            data[TEXT_REPR_KEY] = True
        return data

    # -- collection ------------------------------------------------------

    def pytest_sessionstart(self, session: Any) -> None:
        # Configured early (while the outer session was still collecting),
        # the worker learns only now what to collect: set it as the args.
        name, kwargs = self.control.read(block=True)
        if name in ("shutdown", "stop"):
            import pytest

            pytest.exit("the outer session needs no tests from this worker", returncode=0)
        if name != "collect":
            raise ValueError("expected a collect command, got %r" % (name,))
        self.spec = kwargs
        self.no_network.update(kwargs.get("no_network", ()))
        session.config.args = list(kwargs["collect"])

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            self.events.send("collectreport", report=self._serialise(report))

    def pytest_collection_modifyitems(self, session: Any, config: Any, items: list[Any]) -> None:
        wanted = self.spec.get("nodeids")
        for item in items:
            self.items.setdefault(item.nodeid, item)
        if wanted is None:
            return
        wanted_set = set(wanted)
        items[:] = [item for item in items if item.nodeid in wanted_set]
        self.missing = [nodeid for nodeid in dict.fromkeys(wanted) if nodeid not in self.items]

    # -- running ---------------------------------------------------------

    def pytest_runtestloop(self, session: Any) -> bool:
        rootdir = str(session.config.rootpath) if hasattr(session.config, "rootpath") else ""
        item_data = None
        if self.spec.get("report_items"):
            item_data = [_item_data(item, rootdir) for item in session.items]
        markers = ini_names = None
        if self.spec.get("report_items"):
            markers = [str(line) for line in session.config.getini("markers")]
            ini_names = _ini_names(session.config)
        self.events.send(
            "collected", missing=self.missing, items=item_data, markers=markers, ini_names=ini_names
        )
        self._command_loop(session)
        return True

    def _command_loop(self, session: Any) -> None:
        queue: collections.deque[str] = collections.deque()
        ended = False
        shutdown = False
        while True:
            # Take whatever is waiting, then block only if the next item's
            # successor is still unknown: it decides which fixtures survive.
            block = False
            while True:
                command = self.control.read(block=block)
                if command is None:
                    if len(queue) >= 2 or ended or shutdown:
                        break
                    # About to wait: what is queued must reach the outer side first.
                    self.events.flush()
                    block = True
                    continue
                name, kwargs = command
                if name == "run":
                    queue.extend(kwargs["nodeids"])
                    self.no_network.update(kwargs.get("no_network", ()))
                    ended = bool(kwargs.get("end", False))
                elif name in ("shutdown", "stop"):
                    shutdown = True
                    if name == "stop":
                        queue.clear()
                        session.shouldstop = "stopped by the outer pytest session"
                    ended = True
                    break
                else:
                    raise ValueError("unknown control command %r" % (name,))
                block = False
            if not queue:
                if shutdown:
                    return
                ended = False
                continue
            nodeid = queue.popleft()
            item = self.items.get(nodeid)
            if item is None:
                self.events.send("missing", nodeid=nodeid)
                continue
            nextitem = None
            for candidate in queue:
                nextitem = self.items.get(candidate)
                if nextitem is not None:
                    break
            self._run_one(item, nextitem)

    def _run_one(self, item: Any, nextitem: Any) -> None:
        guarded = item.nodeid in self.no_network
        if guarded:
            self.guard.install()
        try:
            item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        finally:
            if guarded:
                self.guard.uninstall()
        # Sent once the whole protocol has returned, not from the logfinish
        # hook: the warnings plugin records a test's warnings (an unraisable
        # exception's, say) after that hook, and the outer side stops
        # listening for a test at its logfinish.
        self.events.queue("logfinish", nodeid=item.nodeid)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.current = nodeid
        # Where this test's own output starts in the worker's log, for a crash report.
        try:
            offset = os.lseek(2, 0, os.SEEK_CUR)  # type: int | None
        except OSError:
            offset = None
        self.events.send("logstart", nodeid=nodeid, started=time.time(), log_offset=offset)

    def pytest_runtest_logreport(self, report: Any) -> None:
        data = self._serialise(report)
        if self.junitxml is not None and self.junitxml.pending:
            data["uvbuild_junitxml"] = self.junitxml.take()
        self.events.queue("logreport", report=data)

    def pytest_warning_recorded(
        self, warning_message: Any, when: str, nodeid: str, location: Any
    ) -> None:
        category = warning_message.category
        self.events.send(
            "warning",
            message=str(warning_message.message),
            category=category.__name__,
            module=category.__module__,
            filename=warning_message.filename,
            lineno=warning_message.lineno,
            when=when,
            nodeid=nodeid,
        )

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        crash = getattr(excinfo.getrepr(style="short"), "reprcrash", None)
        where = "%s:%s" % (crash.path, crash.lineno) if crash is not None else "?"
        self.events.send("interrupted", nodeid=self.current, where=where)

    def pytest_internalerror(self, excrepr: Any, excinfo: Any) -> None:
        self.events.send("internalerror", text=str(excrepr))


def _quiet_terminal_plugins(pytest: Any) -> list[Any]:
    """Two plugins that hand the inner terminal reporter /dev/null while it is made.

    The inner session's progress output is of no use: the outer session
    reports. The terminal reporter takes ``sys.stdout`` in its
    ``pytest_configure``; the first plugin swaps in /dev/null before every
    other ``pytest_configure``, the second restores the real stream after them
    all, so that the tests' own output (captured, or shown with ``-s``) is
    untouched. (``pytest_configure`` is historic: it takes no hook wrapper.)
    """
    saved: list[Any] = []

    class Silence:
        @pytest.hookimpl(tryfirst=True)  # type: ignore[untyped-decorator]
        def pytest_configure(self, config: Any) -> None:
            saved.append(sys.stdout)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the reporter

    class Restore:
        @pytest.hookimpl(trylast=True)  # type: ignore[untyped-decorator]
        def pytest_configure(self, config: Any) -> None:
            if saved:
                sys.stdout = saved.pop()
            _detach_terminal_reporter(config)

    return [Silence(), Restore()]


def _phase_flushing_plugin(pytest: Any, events: EventChannel) -> Any:
    """A plugin that delivers a test's queued reports before its next phase runs.

    A test whose call or teardown ends the process must leave the outer side
    knowing which phases passed, so that it blames the right one.
    """

    class FlushBeforePhase:
        @pytest.hookimpl(tryfirst=True)  # type: ignore[untyped-decorator]
        def pytest_runtest_call(self, item: Any) -> None:
            events.flush()

        @pytest.hookimpl(tryfirst=True)  # type: ignore[untyped-decorator]
        def pytest_runtest_teardown(self, item: Any, nextitem: Any) -> None:
            events.flush()

    return FlushBeforePhase()


class _DetachedReporter:
    """The inner terminal reporter without its hooks: same attributes, no per-test work.

    Assertion rewriting (``config.get_terminal_writer()``) and plugins that
    write through the reporter still find it under its name; it just no
    longer formats every report for a terminal nobody reads.
    """

    def __init__(self, reporter: Any) -> None:
        self.__dict__["_reporter"] = reporter

    def __getattr__(self, name: str) -> Any:
        if name.startswith("pytest_"):
            raise AttributeError(name)
        return getattr(self._reporter, name)


def _detach_terminal_reporter(config: Any) -> None:
    manager = config.pluginmanager
    reporter = manager.get_plugin("terminalreporter")
    if reporter is None or isinstance(reporter, _DetachedReporter):
        return
    manager.unregister(reporter)
    manager.register(_DetachedReporter(reporter), "terminalreporter")


def _keep_capture_files(directory: str) -> None:
    """Make pytest's fd capture write the global stdout/stderr capture to named files.

    After a crash (os._exit, segfault, SIGKILL) the outer side reads them to
    show what the test had printed so far. Only the first file for each of fd
    1 and 2 (the session-wide capture) is redirected; capfd's are not.
    """
    try:
        from _pytest import capture
    except ImportError:  # pragma: no cover - pytest always has it
        return
    original = getattr(capture, "TemporaryFile", None)  # pytest imports it by name
    if original is None:
        return
    taken: set[str] = set()

    def temporary_file(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_locals
        target = caller.get("targetfd")
        label = {1: "stdout", 2: "stderr"}.get(target) if isinstance(target, int) else None
        if label is None or label in taken:
            return original(*args, **kwargs)
        taken.add(label)
        return open(os.path.join(directory, label), "w+b", buffering=0)

    setattr(capture, "TemporaryFile", temporary_file)  # noqa: B010 - not re-exported


def _dump_tracebacks_on_signal() -> Any:
    """Let the outer side ask for every thread's stack (before a timeout kill)."""
    try:
        import faulthandler
        import signal

        stream = os.fdopen(os.dup(2), "w")
        faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
        return stream
    except (ImportError, AttributeError, OSError, ValueError):
        return None


def main(argv: list[str]) -> int:
    """Run the worker whose boot spec (pipes, capture dir) is the JSON file ``argv[1]``.

    ``worker.py --options-table OUT -- ARGS...`` instead writes the options
    a session of ``ARGS`` knows once its initial conftests are loaded.
    """
    if len(argv) > 3 and argv[1] == "--options-table" and argv[3] == "--":
        return options_table(argv[2], argv[4:])
    with open(argv[1], encoding="utf-8") as fh:
        boot = json.load(fh)
    return run(boot)


#: argparse actions whose option takes no value.
_FLAG_ACTIONS = ("store_true", "store_false", "store_const", "append_const", "count", "help")


def _option_groups(parser: Any) -> list[Any]:
    """pytest's option groups, each once, with the anonymous one (plugins' and conftests').

    pytest keeps them private; from pytest 9 the anonymous group is among
    the others, before it only next to them.
    """
    groups = list(getattr(parser, "_groups", ()))
    anonymous = getattr(parser, "_anonymous", None)
    if anonymous is not None and all(group is not anonymous for group in groups):
        groups.append(anonymous)
    return groups


def options_table(out_path: str, args: list[str]) -> int:
    """Write to ``out_path`` the command-line options a session of ``args`` knows, as JSON.

    That is pytest's, its plugins' and the initial conftest files' options:
    one ``{"names": [...], "flag": bool, "nargs": ...}`` each. The session
    stops right after its initial conftests are loaded, before it parses the
    command line (which may hold options of the outer session only).
    """
    import pytest

    class OptionTable:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_load_initial_conftests(self, parser: Any) -> Any:
            yield
            rows = []
            for group in _option_groups(parser):
                for option in getattr(group, "options", ()):
                    attrs = option.attrs()
                    action = attrs.get("action")
                    nargs = attrs.get("nargs")
                    flag = nargs == 0 or (isinstance(action, str) and action in _FLAG_ACTIONS)
                    names = [str(name) for name in option.names()]
                    rows.append({"names": names, "flag": flag, "nargs": None if flag else nargs})
            with open(out_path, "w", encoding="utf-8") as fh:
                json.dump(rows, fh)
            # Nothing else of the session is needed (nor wanted: it would
            # refuse the outer session's own options).
            sys.stdout.flush()
            os._exit(0)

    pytest.main(args, plugins=[OptionTable()])
    return 0


def run(boot: dict[str, Any]) -> int:
    """Import pytest, say ``ready``, configure when told to and run the inner session.

    A warm interpreter (``zygote.py``) calls this in a forked child, with
    pytest already imported and the pipes it was handed in ``boot``.
    """
    events = EventChannel(boot["event_fd"])
    try:
        import pytest
    except ImportError as exc:
        events.send("fatal", kind="no-pytest", message=str(exc), python=sys.executable)
        return 3
    # What exists now (the standard library's and pytest's modules) lives
    # until exit: out of the collector's sight, each full collection of the
    # session (pytest makes two at its end) skips it.
    gc.freeze()
    control = ControlChannel(boot["control_fd"])
    version = tuple(int(p) for p in pytest.__version__.split(".")[:2] if p.isdigit())
    events.send(
        "ready",
        protocol=PROTOCOL_VERSION,
        pid=os.getpid(),
        python=sys.version.split()[0],
        pytest=pytest.__version__,
    )
    if version < (7, 0):
        events.send(
            "fatal",
            kind="old-pytest",
            message="pytest %s is too old for hermetic runs (need >= 7)" % pytest.__version__,
            python=sys.executable,
        )
        return 3
    # The outer side may spawn us before it knows what to run: wait for it.
    name, kwargs = control.read(block=True)
    if name == "shutdown":
        return 0
    if name != "configure":
        raise ValueError("expected a configure command, got %r" % (name,))
    stack_dump = _dump_tracebacks_on_signal()
    _keep_capture_files(boot["capture_dir"])
    plugin = WorkerPlugin(events, control)
    plugin.junit_family = kwargs.get("junit_family")
    args = list(kwargs["args"]) + list(kwargs["initial"])
    try:
        plugins = [*_quiet_terminal_plugins(pytest), _phase_flushing_plugin(pytest, events), plugin]
        status = pytest.main(args, plugins=plugins)
    finally:
        if stack_dump is not None:
            stack_dump.close()
    events.send("exit", status=int(status))
    return 0


def _exit_without_finalising(status: int) -> None:
    """End the process as a normal exit would, minus the interpreter's teardown.

    The outer session waits for this process to end; tearing down every
    module of a pytest session costs tens of milliseconds that nobody needs.
    What a normal exit promises still happens: threads that are not daemons
    are joined, ``atexit`` handlers (logging, multiprocessing, the user's
    own) run and the standard streams are flushed.
    """
    import atexit
    import contextlib

    # As the interpreter's own exit does first: join the threads a test left
    # running (non-daemon ones) and run threading's exit hooks.
    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":
    _exit_without_finalising(main(sys.argv))
