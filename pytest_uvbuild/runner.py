"""The outer side of hermetic runs: worker processes in locked envs, and their events.

All hermetic tests that share an env (and the same ``env=`` variables) run
in one long-lived worker: the env's interpreter executing
:mod:`pytest_uvbuild.worker` by path. The worker is told which node ids to
collect through a JSON spec file, is fed node ids to run over a *control*
pipe, and streams ``[event, kwargs]`` messages back over a dedicated *event*
pipe (``pass_fds``), so nothing a test prints can corrupt the protocol.
Reports cross the boundary through pytest's ``pytest_report_to_serializable``
and ``pytest_report_from_serializable`` hooks only.

The worker runs ahead; the outer session consumes events in its own item
order and buffers the rest. When a worker dies (``os._exit``, a signal) or a
test overruns its timeout, that test gets a failed report naming the exit
status or signal, with the output captured so far, and the rest of the batch
continues in a fresh worker.

The worker's environment is scrubbed (see :func:`scrubbed_environ` and
``docs/explanation/runner.md``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NamedTuple

import pytest

from pytest_uvbuild.errors import HermeticRunError

if TYPE_CHECKING:
    from pytest_uvbuild.envcache import UvEnv
    from pytest_uvbuild.prewarm import WarmChild

__all__ = [
    "WORKER_SCRIPT",
    "Batch",
    "HermeticRunner",
    "Launch",
    "WorkerGone",
    "WorkerProcess",
    "collection_options",
    "describe_exit",
    "deserialise",
    "forwarded_options",
    "remove_scratch",
    "scrubbed_environ",
]

#: The inner side, executed by path with the env's interpreter.
WORKER_SCRIPT: Final = Path(__file__).with_name("worker.py")
PROTOCOL_VERSION: Final = 1
#: The worker's mark on a report whose longrepr pytest flattened from a repr to text.
TEXT_REPR_KEY: Final = "uvbuild_text_repr"

#: Variables that pass into the worker unchanged (plus every ``LC_*``).
ALLOWED_VARIABLES: Final = (
    "PATH",
    "TMPDIR",
    "TEMP",
    "TMP",
    "LANG",
    "LANGUAGE",
    "COLUMNS",
    "LINES",
    "TERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "PY_COLORS",
    # pytest reads these to decide how much of an assertion diff to show (it
    # never truncates on CI); without them a hermetic report would differ
    # from the in-process one exactly where it matters, in CI.
    "CI",
    "BUILD_NUMBER",
    # Windows cannot start a process without these.
    "SYSTEMROOT",
    "COMSPEC",
    "PATHEXT",
    "WINDIR",
)
#: 1980-01-01, the earliest time a zip file can hold: used unless the user sets one.
DEFAULT_SOURCE_DATE_EPOCH: Final = "315532800"
#: How long a stopping worker may take to finish its current test and tear down.
STOP_GRACE_SECONDS: Final = 10.0
#: How long an interrupted worker may take to unwind.
INTERRUPT_GRACE_SECONDS: Final = 5.0
#: How long the outer session waits, before its summary, for workers that
#: ran all their tests to end their own sessions (see ``take_last_words``).
LAST_WORDS_SECONDS: Final = 5.0
#: How much of a dead worker's own output goes into the crash report.
OUTPUT_LIMIT_BYTES: Final = 16000


class WorkerGone(Exception):
    """The worker's event pipe closed: the process has ended."""


class ProtocolError(RuntimeError):
    """The worker sent something the outer side does not understand."""


def scrubbed_environ(
    env: UvEnv,
    *,
    home: Path,
    passenv: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return the worker's environment: an allow-list of ``source`` plus fixed settings.

    * ``PATH``, ``TMPDIR``, the locale (``LANG``, ``LC_*``), terminal size and
      colour hints pass; so do names matching a ``passenv`` pattern (globs).
    * ``VIRTUAL_ENV`` is the env, its ``bin`` leads ``PATH``, ``PYTHONPATH``
      holds only the project layer, user site-packages are off.
    * ``PYTHONHASHSEED`` is ``0`` and ``SOURCE_DATE_EPOCH`` 1980-01-01 unless
      the user set them; ``TZ`` is ``UTC`` and ``HOME`` is ``home`` unless passed.
    * ``PYTHONIOENCODING=utf-8`` and ``PYTHONUNBUFFERED=1``: output survives a kill.
    * ``extra`` (the marker's ``env=``) is applied last.
    """
    source = os.environ if source is None else source
    scrubbed: dict[str, str] = {}
    for name, value in source.items():
        if (
            name in ALLOWED_VARIABLES
            or name.startswith("LC_")
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in passenv)
        ):
            scrubbed[name] = value
    scrubbed["VIRTUAL_ENV"] = str(env.path)
    scrubbed["PATH"] = os.pathsep.join(
        p for p in (str(env.bin_dir), scrubbed.get("PATH", os.defpath)) if p
    )
    if env.layer:
        scrubbed["PYTHONPATH"] = os.pathsep.join(map(str, env.layer))
    else:
        scrubbed.pop("PYTHONPATH", None)
    for name in ("PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONHOME"):
        scrubbed.pop(name, None)
    scrubbed["PYTHONNOUSERSITE"] = "1"
    scrubbed.setdefault("HOME", str(home))
    scrubbed["PYTHONHASHSEED"] = source.get("PYTHONHASHSEED") or "0"
    scrubbed.setdefault("TZ", "UTC")
    scrubbed["SOURCE_DATE_EPOCH"] = source.get("SOURCE_DATE_EPOCH") or DEFAULT_SOURCE_DATE_EPOCH
    scrubbed["PYTHONIOENCODING"] = "utf-8"
    # A worker may be killed (timeout, crash): what a test printed must not
    # die in a buffer with it.
    scrubbed["PYTHONUNBUFFERED"] = "1"
    if extra:
        scrubbed.update(extra)
    return scrubbed


#: ``config.option`` destinations forwarded to the inner session, with their defaults.
_FORWARDED_VALUES: Final[tuple[tuple[str, str, Any], ...]] = (
    ("tbstyle", "--tb={}", "auto"),
    ("showlocals", "--showlocals", False),
    ("fulltrace", "--full-trace", False),
    ("capture", "--capture={}", "fd"),
    ("importmode", "--import-mode={}", "prepend"),
    ("assertmode", "--assert={}", "rewrite"),
    ("runxfail", "--runxfail", False),
    ("strict_markers", "--strict-markers", False),
    ("strict_config", "--strict-config", False),
    ("strict", "--strict", False),
    ("color", "--color={}", "auto"),
    ("code_highlight", "--code-highlight={}", "yes"),
    ("log_level", "--log-level={}", None),
    # Live logs also make pytest verbose, which shows assertion detail in full.
    ("log_cli_level", "--log-cli-level={}", None),
    ("log_format", "--log-format={}", None),
    ("log_date_format", "--log-date-format={}", None),
    ("confcutdir", "--confcutdir={}", None),
    ("noconftest", "--noconftest", False),
    ("doctestmodules", "--doctest-modules", False),
    ("doctest_continue_on_failure", "--doctest-continue-on-failure", False),
    ("doctest_ignore_import_errors", "--doctest-ignore-import-errors", False),
)
#: Repeatable options, forwarded once per value.
_FORWARDED_LISTS: Final = (
    ("pythonwarnings", "-W"),
    ("override_ini", "-o"),
    ("plugins", "-p"),
    ("doctestglob", "--doctest-glob"),
)
#: Options that only shape what is collected; forwarded when the worker collects for us.
_COLLECTION_LISTS: Final = (
    ("ignore", "--ignore"),
    ("ignore_glob", "--ignore-glob"),
)
_COLLECTION_VALUES: Final[tuple[tuple[str, str, Any], ...]] = (
    ("pyargs", "--pyargs", False),
    ("keepduplicates", "--keep-duplicates", False),
    ("continue_on_collection_errors", "--continue-on-collection-errors", False),
)


def collection_options(config: pytest.Config) -> list[str]:
    """Options that shape collection from the user's own arguments (``--ignore``, ...).

    They go to a worker that collects what the outer session was asked to
    collect, not to one that collects named test files.
    """
    args: list[str] = []
    option = config.option
    for dest, template, default in _COLLECTION_VALUES:
        value = getattr(option, dest, default)
        if value != default and value is not None:
            args.append(template.format(value) if "{}" in template else template)
    for dest, flag in _COLLECTION_LISTS:
        for value in getattr(option, dest, None) or ():
            args += [flag, str(value)]
    return args


def forwarded_options(
    config: pytest.Config,
    *,
    scratch: Path,
    extra_option_strings: Iterable[str] = (),
) -> list[str]:
    """Options for the inner session: rootdir, ini file, and what changes how tests run.

    The outer session's bookkeeping (junitxml, ``--lf``, ``-x``, ``-k``/``-m``,
    xdist, ``--uv-*``) is never forwarded. The inner session's cache goes to
    ``scratch`` so that it cannot overwrite the outer ``--lf`` data.
    ``extra_option_strings`` are further options (for example those a
    ``conftest.py`` registers) copied from ``PYTEST_ADDOPTS`` and the
    command line as given.
    """
    args = [f"--rootdir={config.rootpath}"]
    if "no:cacheprovider" not in (getattr(config.option, "plugins", None) or ()):
        args += ["-o", f"cache_dir={scratch / 'inner-cache'}"]
    if config.inipath is not None:
        args += ["-c", str(config.inipath)]
    option = config.option
    verbose = int(getattr(option, "verbose", 0) or 0)
    if verbose:
        args.append("-" + ("v" if verbose > 0 else "q") * abs(verbose))
    for dest, template, default in _FORWARDED_VALUES:
        value = getattr(option, dest, default)
        if value == default or value is None:
            continue
        args.append(template.format(value) if "{}" in template else template)
    for dest, flag in _FORWARDED_LISTS:
        for value in getattr(option, dest, None) or ():
            if dest == "plugins" and str(value).split(":")[-1] in ("uvbuild", "xdist"):
                continue
            args += [flag, str(value)]
    args += _copy_given_options(config, frozenset(extra_option_strings))
    return args


def _copy_given_options(config: pytest.Config, wanted: frozenset[str]) -> list[str]:
    """The ``wanted`` options with their values, as given in PYTEST_ADDOPTS and the command line."""
    if not wanted:
        return []
    # pytest reads PYTEST_ADDOPTS before the command line, as if typed first;
    # the worker's environment does not carry it (see scrubbed_environ).
    tokens = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args]
    copied: list[str] = []
    i = 0
    while i < len(tokens):
        token = str(tokens[i])
        name = token.split("=", 1)[0]
        if name in wanted:
            copied.append(token)
            takes_value = "=" not in token and i + 1 < len(tokens)
            if takes_value and not str(tokens[i + 1]).startswith("-"):
                copied.append(str(tokens[i + 1]))
                i += 1
        i += 1
    return copied


def describe_exit(returncode: int | None) -> str:
    """Say how a process ended: ``exited with status 3`` or ``was killed by signal 9 (SIGKILL)``."""
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


class Launch(NamedTuple):
    """How to start workers for one batch: interpreter, environment, directory, options."""

    python: Path
    environ: Mapping[str, str]
    cwd: Path
    options: tuple[str, ...]
    label: str
    #: With ``-s`` the worker writes straight to the outer terminal.
    inherit_output: bool = False
    #: Added when the worker collects from the user's own arguments.
    collect_options: tuple[str, ...] = ()
    #: Seconds a zygote left behind waits for the next session (0: warm workers off).
    keep_warm: float = 0.0
    #: The outer session's ``junit_family`` when it writes junitxml: the worker
    #: then relays what ``record_testsuite_property`` and ``record_xml_attribute`` record.
    junit_family: str | None = None


class WorkerProcess:
    """One worker subprocess: its pipes, its log file and its capture files."""

    def __init__(self, launch: Launch, *, scratch: Path, number: int = 0) -> None:
        self.launch = launch
        self.dir = Path(tempfile.mkdtemp(prefix=f"worker{number}-", dir=scratch))
        self.capture_dir = self.dir / "capture"
        self.capture_dir.mkdir()
        self.log_path = self.dir / "output.log"
        self._buffer = bytearray()
        self._searched = 0
        self._eof = False
        self.ready: dict[str, Any] | None = None
        #: The files it collects ahead of the outer session (see collect_ahead).
        self.collecting: frozenset[str] | None = None
        self.configured = False
        self.started = False
        self.started_tests = 0
        spec_path = self.dir / "boot.json"
        event_read, event_write, control_read, control_write, boot = self._pipes(spec_path)
        self._log: IO[bytes] | None = None
        if not launch.inherit_output:
            self._log = self.log_path.open("wb")
        #: A zygote's child (pytest imported already), or a fresh process.
        self.process: subprocess.Popen[bytes] | WarmChild
        try:
            warm = None
            if launch.keep_warm:
                from pytest_uvbuild.prewarm import HandoverLost, claim

                output = (self._log.fileno(),) * 2 if self._log is not None else (1, 2)
                try:
                    warm = claim(
                        launch.python,
                        launch.environ,
                        cwd=launch.cwd,
                        spec=spec_path,
                        boot=boot,
                        fds=(event_write, control_read, *output),
                    )
                except HandoverLost:
                    # A child of the zygote may hold copies of these pipes:
                    # the fresh worker gets new ones, and that child ends at
                    # EOF on its control pipe. The new ones are made first:
                    # if that fails, the handlers below close the old ones.
                    fresh = self._pipes(spec_path)
                    for fd in (event_read, event_write, control_read, control_write):
                        os.close(fd)
                    event_read, event_write, control_read, control_write, boot = fresh
            if warm is not None:
                self.process = warm
            else:
                self.process = subprocess.Popen(
                    [str(launch.python), "-s", str(WORKER_SCRIPT), str(spec_path)],
                    cwd=launch.cwd,
                    env=dict(launch.environ),
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT if self._log is not None else None,
                    pass_fds=(event_write, control_read),
                    # Its own process group: Ctrl-C reaches the outer session
                    # only, which stops the worker cleanly; a kill takes its
                    # children too. (A zygote's child makes its own, too.)
                    start_new_session=True,
                )
        except OSError as exc:
            for fd in (event_read, control_write):
                os.close(fd)
            if self._log is not None:
                self._log.close()
            raise HermeticRunError(
                f"Cannot start {launch.python} for the locked environment {launch.label}: {exc}"
            ) from None
        finally:
            os.close(event_write)
            os.close(control_read)
        self._events = event_read
        self._control: IO[bytes] | None = os.fdopen(control_write, "wb")

    def _pipes(self, spec_path: Path) -> tuple[int, int, int, int, dict[str, Any]]:
        """New event and control pipes, and the boot spec naming them, written to ``spec_path``.

        If any step fails, the pipes made so far are closed again.
        """
        made: list[int] = []
        try:
            made.extend(os.pipe())
            made.extend(os.pipe())
            event_read, event_write, control_read, control_write = made
            boot = {
                "protocol": PROTOCOL_VERSION,
                "event_fd": event_write,
                "control_fd": control_read,
                "capture_dir": str(self.capture_dir),
            }
            spec_path.write_text(json.dumps(boot), encoding="utf-8")
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        return event_read, event_write, control_read, control_write, boot

    @property
    def pid(self) -> int:
        """The worker's process id (and process group id)."""
        return self.process.pid

    def configure(self, initial: Sequence[str], *, collecting_user_args: bool = False) -> None:
        """Let the worker configure pytest (options, plugins, initial conftests) now.

        ``initial`` are the outer session's own arguments, which decide the
        initial conftests; what is collected comes later with :meth:`collect`.
        """
        if self.configured:
            return
        self.configured = True
        options = list(self.launch.options)
        if collecting_user_args:
            options += self.launch.collect_options
        self.send(
            "configure", args=options, initial=list(initial), junit_family=self.launch.junit_family
        )

    def collect(
        self,
        *,
        collect: Sequence[str],
        nodeids: Sequence[str] | None,
        report_items: bool = False,
        no_network: Iterable[str] = (),
    ) -> None:
        """Tell the worker what to collect and which node ids to keep (None: all)."""
        self.configure(collect, collecting_user_args=nodeids is None)
        self.started = True
        self.send(
            "collect",
            collect=list(collect),
            nodeids=None if nodeids is None else list(nodeids),
            report_items=report_items,
            no_network=sorted(set(no_network)),
        )

    def collect_ahead(self, files: Sequence[str]) -> None:
        """Collect ``files`` before the outer session knows which of their tests it needs.

        Every item is kept; the ``run`` commands pick. A node id that is not
        among them comes back as ``missing``.
        """
        self.started = True
        self.collecting = frozenset(files)
        self.send("collect", collect=list(files), nodeids=None, report_items=False, no_network=[])

    # -- commands ------------------------------------------------------

    def send(self, command: str, **kwargs: Any) -> None:
        """Send one control command; a worker that is gone is noticed by the reader."""
        if self._control is None:
            return
        try:
            self._control.write(json.dumps([command, kwargs]).encode() + b"\n")
            self._control.flush()
        except (BrokenPipeError, OSError):
            self._close_control()

    def _close_control(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
            self._control = None

    # -- events --------------------------------------------------------

    def next_event(self, deadline: float | None) -> tuple[str, dict[str, Any]] | None:
        """Return the next event, None if ``deadline`` (a ``time.time()``) passed first.

        Raises :class:`WorkerGone` once the pipe is closed and drained.
        """
        while True:
            # Only bytes not searched yet are searched: a report with 50 MiB
            # of captured output arrives in hundreds of chunks.
            end = self._buffer.find(b"\n", self._searched)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]  # cheap: bytearray drops its front in place
                self._searched = 0
                message = json.loads(line)
                if (
                    not isinstance(message, list)
                    or len(message) != 2
                    or not isinstance(message[0], str)
                    or not isinstance(message[1], dict)
                ):
                    raise ProtocolError(f"malformed worker message: {line[:200]!r}")
                return message[0], message[1]
            self._searched = len(self._buffer)
            if self._eof:
                raise WorkerGone
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            ready, _, _ = select.select([self._events], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._events, 1 << 20)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    # -- output --------------------------------------------------------

    def log_size(self) -> int:
        """How many bytes the worker has written to its own stdout/stderr so far."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def output_since(self, offset: int, limit: int = OUTPUT_LIMIT_BYTES) -> str:
        """The worker's own output after ``offset``: its start and end if it is long."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return ""
        if len(data) > limit:
            # A crash dump starts with what matters; the end shows the last words.
            head, tail = data[: limit * 3 // 4], data[-limit // 4 :]
            skipped = len(data) - len(head) - len(tail)
            data = head + f"\n... ({skipped} bytes left out) ...\n".encode() + tail
        return data.decode("utf-8", "replace")

    def captured_so_far(self) -> dict[str, str]:
        """What the running test printed so far, from the inner session's capture files."""
        captured: dict[str, str] = {}
        for name in ("stdout", "stderr"):
            with contextlib.suppress(OSError):
                data = (self.capture_dir / name).read_bytes()
                if data:
                    captured[name] = data.decode("utf-8", "replace")
        return captured

    # -- ending --------------------------------------------------------

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's whole process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def dump_stacks(self) -> None:
        """Ask the worker to print every thread's stack (faulthandler) before a kill."""
        if hasattr(signal, "SIGUSR1") and self.process.poll() is None:
            before = self.log_size()
            self.signal(signal.SIGUSR1)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and self.log_size() == before:
                time.sleep(0.02)
            time.sleep(0.05)

    def kill(self) -> int | None:
        """Kill the worker and its children at once; return its exit code."""
        self.signal(signal.SIGKILL)
        return self.wait(5.0)

    def wait(self, timeout: float) -> int | None:
        """Wait for the process to exit, draining events so that it never blocks on us."""
        deadline = time.time() + timeout
        while self.process.poll() is None and time.time() < deadline:
            try:
                self.next_event(min(deadline, time.time() + 0.1))
            except WorkerGone:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(max(0.0, deadline - time.time()))
                break
            except (ProtocolError, ValueError):
                continue
        return self.process.poll()

    def request_stop(self, *, interrupt: bool = False) -> None:
        """Ask the worker to end: after its current test (or interrupting it), tear down, exit.

        This does not wait: :meth:`finish` does.
        """
        if self.process.poll() is None:
            if interrupt:
                self.signal(signal.SIGINT)
            else:
                self.send("stop" if self.started else "shutdown")
        self._close_control()

    def finish(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Wait up to ``grace`` seconds for the worker to exit, then kill it; release all."""
        if self.process.poll() is None and self.wait(grace) is None:
            self.kill()
        self.close()

    def stop(self, *, interrupt: bool = False) -> None:
        """End the worker cleanly and wait for it."""
        self.request_stop(interrupt=interrupt)
        self.finish(INTERRUPT_GRACE_SECONDS if interrupt else STOP_GRACE_SECONDS)

    def close(self) -> None:
        """Release the pipes and the log file (the process must have ended)."""
        self._close_control()
        if self._events >= 0:
            with contextlib.suppress(OSError):
                os.close(self._events)
            self._events = -1
        if self._log is not None:
            self._log.close()
            self._log = None
        with contextlib.suppress(OSError):
            self.process.wait(0.5)


def deserialise(config: pytest.Config, data: Mapping[str, Any]) -> Any:
    """Rebuild a report from the worker with ``pytest_report_from_serializable``.

    JSON has no tuples; the few fields pytest expects as tuples get them back.
    """
    data = dict(data)
    flattened = bool(data.pop(TEXT_REPR_KEY, False))
    for key in ("location", "longrepr"):
        value = data.get(key)
        if isinstance(value, list):
            data[key] = tuple(value)
    for key in ("user_properties", "sections"):
        if isinstance(data.get(key), list):
            data[key] = [tuple(p) if isinstance(p, list) else p for p in data[key]]
    report = config.hook.pytest_report_from_serializable(config=config, data=data)
    if report is None:
        raise ProtocolError(f"pytest could not rebuild a report of type {data.get('$report_type')}")
    if flattened and isinstance(report.longrepr, str):
        report.longrepr = TextRepr(report.longrepr, red=isinstance(report, pytest.CollectReport))
    return report


class TextRepr:
    """A longrepr that pytest flattened to text, shown as that text but not quoted as a string.

    The terminal's short summary appends a string longrepr to the test's id
    (on CI, every line of it); a repr (a doctest failure, a missing fixture,
    a collection error) it leaves out, and so must a rebuilt one.
    """

    def __init__(self, text: str, *, red: bool = False) -> None:
        self.text = text
        #: Collection errors are written in red, as pytest's own repr of them.
        self.red = red

    def toterminal(self, tw: Any) -> None:
        """Write the text."""
        tw.line(self.text, red=self.red)

    def __str__(self) -> str:
        return self.text


def remove_scratch(path: Path) -> None:
    """Remove a run's scratch directory (spec files, logs, capture files, HOME)."""
    shutil.rmtree(path, ignore_errors=True)


def stderr_tail(text: str, lines: int = 30) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _warning_category(module: str, name: str) -> type[Warning]:
    """The warning class named by the worker: pytest's or a builtin, else a look-alike.

    Only modules that are surely importable here are imported (the suite's
    own modules must stay unimported outside with ``--hermetic-all``).
    """
    if module in ("builtins", "warnings") or module.split(".", maxsplit=1)[0] in (
        "_pytest",
        "pytest",
    ):
        with contextlib.suppress(ImportError, AttributeError):
            found = getattr(importlib.import_module(module), name)
            if isinstance(found, type) and issubclass(found, Warning):
                return found
    return _LOOK_ALIKES.setdefault(
        (module, name), type(name, (UserWarning,), {"__module__": module})
    )


_LOOK_ALIKES: dict[tuple[str, str], type[Warning]] = {}


def _collection_args(rootpath: Path, nodeids: Iterable[str]) -> list[str]:
    """The files to collect for ``nodeids`` (node ids are never put on a command line)."""
    files = dict.fromkeys(str(rootpath / nodeid.split("::", 1)[0]) for nodeid in nodeids)
    return list(files)


def _covers(collector_id: str, nodeid: str) -> bool:
    """Whether a collector's failure explains a missing item."""
    if not collector_id or collector_id == ".":
        return True
    return nodeid == collector_id or nodeid.startswith((collector_id + "::", collector_id + "/"))


class Batch:
    """Hermetic tests sharing one launch: their worker, its queue, and early events.

    ``members`` are the inner node ids of this batch in session order. With
    ``preplanned`` (no xdist) the first worker gets every member from the
    first requested one on, in one go; otherwise ids are sent one ahead, as
    the outer session reaches them.
    """

    def __init__(
        self,
        runner: HermeticRunner,
        key: object,
        launch_factory: Callable[[], Launch],
        *,
        members: Sequence[str],
        no_network: Iterable[str],
        preplanned: bool,
    ) -> None:
        self.runner = runner
        self.key = key
        self._launch_factory = launch_factory
        self._launch: Launch | None = None
        self.members = list(members)
        self.no_network = frozenset(no_network)
        self.preplanned = preplanned
        self.worker: WorkerProcess | None = None
        self.queue: deque[str] = deque()
        self.queued: set[str] = set()
        self.ended = False
        self.done: set[str] = set()
        self.incoming: dict[str, deque[tuple[str, dict[str, Any]]]] = {}
        self.collect_errors: list[Any] = []
        self.broken: str | None = None
        self.collected = False
        self.collected_items: list[dict[str, Any]] | None = None
        self.collected_markers: list[str] = []
        #: The ini keys the inner session knows (its plugins', its conftest files').
        self.collected_ini_names: list[str] = []
        self.current: str | None = None
        self.internal_errors: list[str] = []
        #: Whether this batch ever started a worker (then its launch is worth keeping warm).
        self.used_worker = False

    @property
    def launch(self) -> Launch:
        """The launch, made on first use (materialising the env may fail)."""
        if self._launch is None:
            self._launch = self._launch_factory()
        return self._launch

    # -- workers -------------------------------------------------------

    def start_worker(
        self,
        nodeids: Sequence[str] | None,
        *,
        collect: Sequence[str] | None = None,
        report_items: bool = False,
    ) -> WorkerProcess:
        """Start a fresh worker that collects ``nodeids`` (or ``collect`` as given)."""
        if collect is None:
            assert nodeids is not None
            collect = _collection_args(self.runner.config.rootpath, nodeids)
        # A standby exists only without --hermetic-all: ``nodeids`` is given.
        worker = self.runner.take_standby(self.key)
        if (
            worker is not None
            and worker.collecting is not None
            and worker.collecting != frozenset(collect)
        ):
            # It collects other files than these tests need: not ours. Not
            # even a superset: the extra modules and their conftests would
            # act on this session (a fresh worker would not import them).
            self.runner.discard(worker)
            worker = None
        if worker is None:
            worker = self.runner.spawn(self.launch)
        if worker.collecting is None:
            worker.collect(
                collect=collect,
                nodeids=nodeids,
                report_items=report_items,
                no_network=self.no_network,
            )
        self.worker = worker
        self.used_worker = True
        self.queue = deque()
        self.queued = set()
        self.ended = False
        self.collect_errors = []
        self.collected = False
        self.current = None
        self.internal_errors = []
        return self.worker

    def submit(self, nodeid: str, successor: str | None) -> None:
        """Make sure the worker will run ``nodeid`` next, and knows what follows it.

        Preplanned, the worker gets every member from ``nodeid`` on at once
        and runs ahead; otherwise (xdist) ``nodeid`` and its successor only.
        """
        if self.worker is None:
            if self.preplanned:
                ids = self._members_from(nodeid)
            else:
                ids = [n for n in self.members if n not in self.done]
                if nodeid not in ids:
                    ids.append(nodeid)
            self.start_worker(ids)
        if nodeid not in self.queued:
            if self.preplanned:
                ids = [n for n in self._members_from(nodeid) if n not in self.queued]
                self._send_run(ids, end=True)
            else:
                self._send_run([nodeid], end=False)
        if self.preplanned or self.queue[-1] != nodeid:
            return
        if successor is not None and successor not in self.done:
            self._send_run([successor], end=False)
        else:
            self._send_run([], end=True)

    def _members_from(self, nodeid: str) -> list[str]:
        """``nodeid`` and the members after it that have not run."""
        start = self.members.index(nodeid) if nodeid in self.members else len(self.members)
        return [nodeid, *(n for n in self.members[start + 1 :] if n not in self.done)]

    def _send_run(self, nodeids: list[str], *, end: bool) -> None:
        assert self.worker is not None
        self.queue.extend(nodeids)
        self.queued.update(nodeids)
        self.ended = end
        guarded = [n for n in nodeids if n in self.no_network]
        self.worker.send("run", nodeids=nodeids, end=end, no_network=guarded)

    def _dequeue(self, nodeid: str) -> None:
        self.done.add(nodeid)
        if nodeid in self.queued:
            self.queued.discard(nodeid)
            with contextlib.suppress(ValueError):
                self.queue.remove(nodeid)

    def stop(self, *, interrupt: bool) -> WorkerProcess | None:
        """Ask the worker, if any, to stop; return it so that it can be reaped later."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.request_stop(interrupt=interrupt)
        return worker

    # -- events --------------------------------------------------------

    def _take(self, nodeid: str, deadline: float | None) -> tuple[str, dict[str, Any]] | None:
        """The next event for ``nodeid``: buffered, else read (buffering others)."""
        pending = self.incoming.get(nodeid)
        if pending:
            return pending.popleft()
        while True:
            read = self._pump(deadline)
            if read is None:
                return None
            target, event = read
            if target is None:
                continue
            if target == nodeid:
                return event
            self.incoming.setdefault(target, deque()).append(event)

    def _pump(self, deadline: float | None) -> tuple[str | None, tuple[str, dict[str, Any]]] | None:
        """Read and dispatch one event; return the node id it belongs to (or None) and it."""
        assert self.worker is not None
        event = self.worker.next_event(deadline)
        if event is None:
            return None
        name, kwargs = event
        handler = getattr(self, f"_worker_{name}", None)
        if handler is None:
            raise ProtocolError(f"unknown worker event {name!r}")
        return handler(**kwargs), event

    # Handlers return the node id an event belongs to, or None if it was consumed.

    def _worker_ready(self, **kwargs: Any) -> None:
        assert self.worker is not None
        self.worker.ready = kwargs

    def _worker_fatal(self, kind: str, message: str, python: str) -> None:
        if kind == "no-pytest":
            raise HermeticRunError(
                f"pytest is not installed in the locked environment {self.launch.label} "
                f"({message}). Fix: run `uv add --dev pytest` in the project, "
                "so that the lock has it."
            )
        raise HermeticRunError(f"The locked environment {self.launch.label}: {message}")

    def _worker_collectreport(self, report: dict[str, Any]) -> None:
        rebuilt = deserialise(self.runner.config, report)
        rebuilt.sections.append(
            ("uv-build", f"collected inside the locked environment {self.launch.label}")
        )
        self.collect_errors.append(rebuilt)

    def _worker_collected(
        self,
        missing: list[str],
        items: list[dict[str, Any]] | None,
        markers: list[str] | None = None,
        ini_names: list[str] | None = None,
    ) -> None:
        self.collected = True
        self.collected_items = items
        self.collected_markers = markers or []
        self.collected_ini_names = ini_names or []

    def _worker_logstart(self, nodeid: str, started: float, log_offset: int | None = None) -> str:
        self.current = nodeid
        assert self.worker is not None
        self.worker.started_tests += 1
        return nodeid

    def _worker_logreport(self, report: dict[str, Any]) -> str:
        return str(report["nodeid"])

    def _worker_logfinish(self, nodeid: str) -> str:
        self.current = None
        self._dequeue(nodeid)
        return nodeid

    def _worker_missing(self, nodeid: str) -> str:
        self._dequeue(nodeid)
        return nodeid

    def _worker_warning(
        self,
        message: str,
        category: str,
        module: str,
        filename: str,
        lineno: int,
        when: str,
        nodeid: str,
    ) -> None:
        if when != "runtest" and not self.runner.forward_collection_warnings:
            # The outer session collected the same modules and warned itself.
            return
        warning = warnings.WarningMessage(
            message=message,
            category=_warning_category(module, category),
            filename=filename,
            lineno=lineno,
        )
        self.runner.config.hook.pytest_warning_recorded.call_historic(
            kwargs={"warning_message": warning, "when": when, "nodeid": nodeid, "location": None}
        )

    def _worker_interrupted(self, nodeid: str | None, where: str) -> None:
        # A test raised KeyboardInterrupt: in-process, that ends the session.
        test = f" in the hermetic test {nodeid}" if nodeid else ""
        raise KeyboardInterrupt(f"raised{test} at {where}")

    def _worker_internalerror(self, text: str) -> None:
        self.internal_errors.append(text)

    def _worker_exit(self, status: int) -> None:
        return None

    # -- running one test ----------------------------------------------

    def wait_collected(self) -> None:
        """Read events until the worker has collected; raise if it died first."""
        while not self.collected:
            try:
                read = self._pump(None)
            except WorkerGone:
                raise HermeticRunError(self._startup_failure()) from None
            if read is not None and read[0] is not None:  # pragma: no cover - none yet
                self.incoming.setdefault(read[0], deque()).append(read[1])

    def _startup_failure(self) -> str:
        assert self.worker is not None
        code = self.worker.process.wait()
        tail = stderr_tail(self.worker.output_since(0))
        return (
            f"The pytest worker in the locked environment {self.launch.label} "
            f"{describe_exit(code)} before it could run tests" + (f":\n{tail}" if tail else ".")
        )

    def run(self, nodeid: str, successor: str | None, timeout: float | None) -> Iterator[Any]:
        """Yield the reports of ``nodeid``: the worker's, or ones made for a crash."""
        if self.broken is not None:
            yield from self._error_reports(nodeid, self.broken)
            return
        retried = False
        while True:
            self.submit(nodeid, successor)
            assert self.worker is not None
            worker = self.worker
            started: float | None = None
            offset = worker.log_size()
            phases: list[str] = []
            try:
                while True:
                    deadline = None if started is None or timeout is None else started + timeout
                    event = self._take(nodeid, deadline)
                    if event is None:
                        yield from self._timed_out(nodeid, timeout, started, phases, offset)
                        return
                    name, kwargs = event
                    if name == "logstart":
                        started = float(kwargs["started"])
                        # The worker runs ahead: the size now may already hold
                        # this test's crash dump, so its own offset is used.
                        logged = kwargs.get("log_offset")
                        offset = logged if isinstance(logged, int) else worker.log_size()
                    elif name == "logreport":
                        report = deserialise(self.runner.config, kwargs["report"])
                        phases.append(report.when)
                        yield report
                    elif name == "logfinish":
                        return
                    elif name == "missing":
                        yield from self._error_reports(nodeid, self._missing_message(nodeid))
                        return
                    elif name == "crash":
                        yield from self._crash_reports(nodeid, **kwargs)
                        return
            except WorkerGone:
                code = worker.process.wait()
                if self.current is not None and self.current != nodeid:
                    # Another test (ahead of us) took the worker down: it gets
                    # the crash, we retry in a fresh worker.
                    crashed = self.current
                    self.incoming.setdefault(crashed, deque()).append(
                        ("crash", self._crash_details(worker, crashed, code, None, []))
                    )
                    self._replace_worker(crashed)
                    continue
                if self.current == nodeid:
                    details = self._crash_details(worker, nodeid, code, started, phases, offset)
                    self._replace_worker(nodeid)
                    yield from self._crash_reports(nodeid, **details)
                    return
                if not self.collected or (worker.started_tests == 0 and retried):
                    self.broken = self._startup_failure()
                    self.worker.close()
                    self.worker = None
                    yield from self._error_reports(nodeid, self.broken)
                    return
                # Died between tests: try once more in a fresh worker.
                retried = True
                self._replace_worker(None)

    def _replace_worker(self, crashed: str | None) -> None:
        """Close the dead worker; later ids go to a fresh one, started on demand."""
        assert self.worker is not None
        self.worker.close()
        remaining = [n for n in self.queue if n != crashed]
        ended = self.ended
        if crashed is not None:
            self.done.add(crashed)
        self.worker = None
        self.current = None
        if not remaining:
            return
        collect = [n for n in self.members if n not in self.done and n != crashed]
        for n in remaining:
            if n not in collect:
                collect.append(n)
        self.start_worker(collect)
        self._send_run(remaining, end=ended)

    def _crash_details(
        self,
        worker: WorkerProcess,
        nodeid: str,
        code: int | None,
        started: float | None,
        phases: list[str],
        offset: int = 0,
    ) -> dict[str, Any]:
        return {
            "message": f"The hermetic worker running this test {describe_exit(code)}",
            "output": worker.output_since(offset),
            "captured": worker.captured_so_far(),
            "started": started,
            "phases": list(phases),
        }

    def _timed_out(
        self,
        nodeid: str,
        timeout: float | None,
        started: float | None,
        phases: list[str],
        offset: int,
    ) -> Iterator[Any]:
        assert self.worker is not None
        worker = self.worker
        worker.dump_stacks()
        captured = worker.captured_so_far()
        output = worker.output_since(offset)
        code = worker.kill()
        self._replace_worker(nodeid)
        message = (
            f"Timeout: this hermetic test ran longer than its timeout of {timeout:g} s; "
            f"the worker was stopped (it {describe_exit(code)})"
        )
        yield from self._crash_reports(
            nodeid,
            message=message,
            output=output,
            captured=captured,
            started=started,
            phases=phases,
        )

    def _crash_reports(
        self,
        nodeid: str,
        *,
        message: str,
        output: str,
        captured: Mapping[str, str],
        started: float | None,
        phases: Sequence[str],
    ) -> Iterator[Any]:
        when = "setup" if not phases else ("call" if phases[-1] == "setup" else "teardown")
        text = f"{message} in the locked environment {self.launch.label}."
        if self.internal_errors:
            text += "\n\nInternal error inside:\n" + "\n".join(self.internal_errors)
        if output.strip():
            text += "\n\nLast output of the worker process:\n" + output.rstrip()
        now = time.time()
        sections = [
            (f"Captured {stream} {when}", content) for stream, content in sorted(captured.items())
        ]
        yield self.runner.make_report(
            nodeid, when, "failed", text, sections=sections, start=started or now, stop=now
        )
        if when != "teardown":
            yield self.runner.make_report(nodeid, "teardown", "passed", None, start=now, stop=now)

    def _missing_message(self, nodeid: str) -> str:
        for report in self.collect_errors:
            if _covers(report.nodeid, nodeid):
                return (
                    f"Collecting {report.nodeid or 'the session'} failed inside the locked "
                    f"environment {self.launch.label}, so this test could not run there:\n\n"
                    f"{report.longreprtext}"
                )
        return (
            f"{nodeid} was collected by the outer pytest session but not found inside the "
            f"locked environment {self.launch.label}. Its parametrization or collection "
            "probably depends on installed versions, which differ inside."
        )

    def _error_reports(self, nodeid: str, message: str) -> Iterator[Any]:
        now = time.time()
        yield self.runner.make_report(nodeid, "setup", "failed", message, start=now, stop=now)
        yield self.runner.make_report(nodeid, "teardown", "passed", None, start=now, stop=now)


class HermeticRunner:
    """Every batch of one outer session, and the scratch space of their workers."""

    def __init__(
        self, config: pytest.Config, *, scratch: Path, forward_collection_warnings: bool = False
    ) -> None:
        self.config = config
        self.scratch = scratch
        self.forward_collection_warnings = forward_collection_warnings
        self.batches: dict[object, Batch] = {}
        self.standby: dict[object, WorkerProcess] = {}
        self.exiting: list[tuple[WorkerProcess, bool]] = []
        #: Under ``--hermetic-all``: batches whose worker was told to end, for
        #: :meth:`take_last_words`.
        self.ending: list[tuple[Batch, WorkerProcess]] = []
        self._worker_numbers = 0

    def spawn(self, launch: Launch) -> WorkerProcess:
        """A new worker process (not started yet)."""
        self._worker_numbers += 1
        return WorkerProcess(launch, scratch=self.scratch, number=self._worker_numbers)

    def prestart(
        self, key: object, launch: Launch, initial: Sequence[str], *, collect: Sequence[str] = ()
    ) -> None:
        """Spawn and configure a worker for ``key`` now, while we go on collecting.

        ``initial`` are this session's own arguments: the worker loads the same
        initial conftests, then waits to learn what to collect, or, given
        ``collect``, collects those files at once (keeping every test).
        """
        if key not in self.standby and key not in self.batches:
            worker = self.spawn(launch)
            worker.configure(initial)
            if collect:
                worker.collect_ahead(collect)
            self.standby[key] = worker

    def discard(self, worker: WorkerProcess) -> None:
        """Stop a worker nobody will use; :meth:`reap` waits for it."""
        worker.request_stop()
        self.exiting.append((worker, False))

    def take_standby(self, key: object) -> WorkerProcess | None:
        """The pre-spawned worker for ``key``, if any (each is used once)."""
        return self.standby.pop(key, None)

    def batch(
        self,
        key: object,
        launch_factory: Callable[[], Launch],
        *,
        members: Sequence[str],
        no_network: Iterable[str],
        preplanned: bool,
    ) -> Batch:
        """The batch for ``key``, made on first use."""
        batch = self.batches.get(key)
        if batch is None:
            batch = Batch(
                self,
                key,
                launch_factory,
                members=members,
                no_network=no_network,
                preplanned=preplanned,
            )
            self.batches[key] = batch
        return batch

    def make_report(
        self,
        nodeid: str,
        when: str,
        outcome: str,
        longrepr: str | None,
        *,
        sections: Sequence[tuple[str, str]] = (),
        start: float,
        stop: float,
    ) -> pytest.TestReport:
        """A report made on this side (crash, timeout, missing test); fixed up by the caller."""
        return pytest.TestReport(
            nodeid=nodeid,
            location=(nodeid.split("::", 1)[0], None, nodeid),
            keywords={},
            outcome=outcome,  # type: ignore[arg-type]
            longrepr=longrepr,
            when=when,  # type: ignore[arg-type]
            sections=list(sections),
            duration=max(0.0, stop - start),
            start=start,
            stop=stop,
        )

    def stop(self, *, interrupt: bool = False) -> None:
        """Ask every worker to stop: after its current test, or at once on Ctrl-C.

        Workers tear down while the outer session writes its summary;
        :meth:`reap` waits for them.
        """
        for batch in self.batches.values():
            worker = batch.stop(interrupt=interrupt)
            if worker is not None:
                self.exiting.append((worker, interrupt))
                if not interrupt and self.forward_collection_warnings:
                    self.ending.append((batch, worker))
        for worker in self.standby.values():
            worker.request_stop()
            self.exiting.append((worker, False))
        self.standby.clear()

    def take_last_words(self, timeout: float = LAST_WORDS_SECONDS) -> None:
        """Wait (``timeout`` at most) for stopped workers' sessions to end; keep their warnings.

        Only for workers that ran all their tests, under ``--hermetic-all``:
        an inner session warns in its own ``pytest_sessionfinish`` too (a
        conftest's hook, a plugin's report), and in-process those warnings
        are in the summary, and count for ``--max-warnings``. Everything
        else they send now is dropped.
        """
        deadline = time.time() + timeout
        for batch, worker in self.ending:
            with contextlib.suppress(WorkerGone, ProtocolError, ValueError):
                while (event := worker.next_event(deadline)) is not None:
                    name, kwargs = event
                    if name == "warning":
                        batch._worker_warning(**kwargs)
                    elif name == "exit":
                        break
        self.ending.clear()

    def leave_warm_workers(self) -> None:
        """For each launch that ran a worker, leave a zygote for the next session.

        The zygotes start when this interpreter exits (see
        :func:`~pytest_uvbuild.prewarm.leave_behind_at_exit`).
        """
        launches = {
            (str(batch.launch.python), tuple(sorted(batch.launch.environ.items()))): batch.launch
            for batch in self.batches.values()
            if batch.used_worker and batch.launch.keep_warm
        }
        if not launches:
            return
        from pytest_uvbuild.prewarm import leave_behind_at_exit

        leave_behind_at_exit(
            [(launch.python, launch.environ, launch.keep_warm) for launch in launches.values()]
        )

    def reap(self) -> None:
        """Wait for stopping workers (killing those that overrun their grace time)."""
        self.stop(interrupt=True)
        for worker, interrupted in self.exiting:
            worker.finish(INTERRUPT_GRACE_SECONDS if interrupted else STOP_GRACE_SECONDS)
        self.exiting.clear()
