"""Warm workers: hand the next session an interpreter that has already imported pytest.

A hermetic session's longest wait is its worker's start: a second
interpreter and a second ``import pytest``. With ``hermetic_keep_warm``
(seconds; by default 120 outside CI, off when ``CI`` is set), a session
that used a worker leaves a :mod:`pytest_uvbuild.zygote` behind for the same
launch: the env's interpreter, pytest imported, listening on a Unix socket
for that long. The next session connects and hands over its pipes, streams
and environment; the zygote forks a child that runs the worker exactly as a
fresh process would, and reports the child's wait status, so crash reports
still name the signal or exit status.

The socket lives in ``$TMPDIR/pytest-uvbuild-<uid>/`` (mode 0700, owned by
the user, or no zygote is used). Its name is a digest of what a fresh worker
would have started with: the interpreter, the env's identity (its
``pyvenv.cfg``), the worker and zygote code, and the scrubbed environment
but for ``HOME`` (a new directory each session) and the terminal size, which
are set in the child. ``PYTEST_UVBUILD_KEEP_WARM=0`` turns it off everywhere.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, NamedTuple

from pytest_uvbuild.fsutil import hold_flock

__all__ = [
    "ZYGOTE_SCRIPT",
    "HandoverLost",
    "WaitingZygote",
    "WarmChild",
    "claim",
    "leave_behind",
    "leave_behind_at_exit",
    "listening",
    "socket_dir_in",
    "stop_waiting",
    "waiting",
]

ZYGOTE_SCRIPT: Final = Path(__file__).with_name("zygote.py")
WORKER_SCRIPT: Final = Path(__file__).with_name("worker.py")
#: How long a session waits for a zygote to take its handover.
CLAIM_TIMEOUT_SECONDS: Final = 5.0
#: How long a new zygote waits for the session that started it to exit
#: before importing pytest (so as not to slow that session's end).
PATIENCE_SECONDS: Final = 5.0
_LENGTH = struct.Struct("!Q")


def socket_dir_in(temp_dir: Path | None = None) -> Path:
    """Where this user's zygote sockets live under ``temp_dir`` (default: this process's)."""
    base = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
    return base / f"pytest-uvbuild-{os.getuid()}"


def _socket_dir() -> Path | None:
    """The user's private socket directory, made if missing; None if it is not private.

    None too if it cannot be made (a read-only or full temp dir): a warm
    worker only saves time, and the session starts its own.
    """
    directory = socket_dir_in(None)
    with contextlib.suppress(OSError):
        directory.mkdir(mode=0o700)
    try:
        info = directory.lstat()
    except OSError:
        return None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        return None
    return directory


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """The worker and zygote code: a zygote of another pytest-uvbuild serves no one."""
    digest = hashlib.sha256()
    for script in (WORKER_SCRIPT, ZYGOTE_SCRIPT):
        digest.update(script.read_bytes())
    return digest.hexdigest()


#: Set in the forked child, never read at start-up: a new ``HOME`` each
#: session, and the terminal's size, which follows the window.
_SET_IN_CHILD: Final = frozenset({"HOME", "COLUMNS", "LINES"})


def _startup_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a zygote must have started with to serve this session.

    All of it but :data:`_SET_IN_CHILD`: besides the hash seed,
    ``PYTHONPATH`` and the locale, a ``.pth`` file may act on any variable
    at start-up (coverage's ``COVERAGE_PROCESS_START``, say).
    """
    return {name: value for name, value in environ.items() if name not in _SET_IN_CHILD}


def socket_path(python: Path, environ: Mapping[str, str]) -> Path | None:
    """Where a zygote for workers of ``python`` with ``environ`` listens; None if nowhere."""
    directory = _socket_dir()
    if directory is None:
        return None
    try:
        venv = (python.parent.parent / "pyvenv.cfg").stat()
    except OSError:
        return None
    identity = {
        "python": str(python),
        "venv": [venv.st_ino, venv.st_mtime_ns],
        "code": _code_digest(),
        "environ": _startup_environ(environ),
    }
    name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return directory / f"{name}.sock"


class HandoverLost(Exception):
    """A zygote took a session's pipes but did not say which child now holds them.

    The caller must not hand those pipes to another worker: a child may be
    running on copies of them.
    """


class WarmChild:
    """A worker forked by a zygote: ``pid``, ``poll()`` and ``wait()`` as on a ``Popen``.

    The zygote, its parent, reports the wait status over the connection.
    """

    def __init__(self, connection: socket.socket, pid: int, buffered: bytes = b"") -> None:
        self._connection = connection
        #: What the zygote sent after the pid line (the status, if the child ended at once).
        self._buffer = buffered
        self.pid = pid
        self.returncode: int | None = None

    def _read_status(self, timeout: float | None) -> None:
        while self.returncode is None:
            if b"\n" in self._buffer:
                line = self._buffer.split(b"\n", 1)[0]
                try:
                    code = os.waitstatus_to_exitcode(int(json.loads(line)["status"]))
                except (ValueError, TypeError, KeyError):
                    code = -9  # a zygote that says nonsense is as good as gone
                self._finish(code)
                return
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if not ready:
                return
            try:
                chunk = self._connection.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                # The zygote is gone without a word: it ignores SIGTERM once it
                # supervises, so it was SIGKILLed, which the child is taken to
                # share. (A child that outlives it still ends at EOF on its
                # control pipe when the session stops.)
                self._finish(-9)
                return
            self._buffer += chunk

    def _finish(self, code: int) -> None:
        self.returncode = code
        self._connection.close()

    def poll(self) -> int | None:
        """The exit code if the child has ended, else None (not waiting)."""
        self._read_status(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child's end; raises ``subprocess.TimeoutExpired`` like ``Popen``."""
        self._read_status(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
        return self.returncode


def claim(
    python: Path,
    environ: Mapping[str, str],
    *,
    cwd: Path,
    spec: Path,
    boot: Mapping[str, object],
    fds: tuple[int, int, int, int],
) -> WarmChild | None:
    """Hand a waiting zygote this worker's pipes, streams and environment; None if none waits.

    ``fds`` are the event pipe's write end, the control pipe's read end, and
    the descriptors for the worker's stdout and stderr. Raises
    :class:`HandoverLost` if the zygote fails after it took them.
    """
    path = socket_path(python, environ)
    if path is None or not path.exists():
        return None
    try:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None  # out of descriptors, say: the fresh worker reports it if it matters
    connection.settimeout(CLAIM_TIMEOUT_SECONDS)
    try:
        connection.connect(str(path))
        body = json.dumps(
            {
                "environ": dict(environ),
                "cwd": str(cwd),
                "umask": _current_umask(),
                "boot": dict(boot),
                "spec": str(spec),
                "worker_script": str(WORKER_SCRIPT),
            }
        ).encode("utf-8")
        socket.send_fds(connection, [_LENGTH.pack(len(body))], list(fds))
    except OSError:
        connection.close()
        return None
    try:
        connection.sendall(body)
        received = b""
        while b"\n" not in received:
            chunk = connection.recv(4096)
            if not chunk:
                raise ConnectionError("the zygote hung up")
            received += chunk
        line, rest = received.split(b"\n", 1)
        pid = int(json.loads(line)["pid"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        connection.close()
        raise HandoverLost(f"the zygote at {path} took the pipes, then {exc}") from None
    connection.settimeout(None)
    return WarmChild(connection, pid, rest)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def leave_behind(
    python: Path,
    environ: Mapping[str, str],
    seconds: float,
    *,
    patience: float = PATIENCE_SECONDS,
) -> None:
    """Start a zygote for these workers that waits ``seconds`` for the next session.

    Nothing happens when one already holds the name (if two race, the
    second exits at once). The zygote waits up to ``patience`` seconds for
    this process to exit before it imports pytest.
    The zygote starts its own session; called at exit (see
    :func:`leave_behind_at_exit`), it is this process's child only briefly.
    """
    path = socket_path(python, environ)
    if path is None or seconds <= 0 or _zygote_alive(path):
        return
    # Nothing of ours but the environment: no descriptor a parent of ours
    # waits on (close_fds), no hold on the session's directory (cwd "/").
    # Zygotes that ended since are reaped first.
    _SPAWNED[:] = [zygote for zygote in _SPAWNED if zygote.poll() is None]
    _SPAWNED.append(
        subprocess.Popen(
            [
                str(python),
                "-s",
                str(ZYGOTE_SCRIPT),
                str(path),
                f"{seconds:g}",
                str(WORKER_SCRIPT),
                f"{patience:g}",
                str(os.getpid()),
            ],
            env=dict(environ),
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
    )


def leave_behind_at_exit(launches: Sequence[tuple[Path, Mapping[str, str], float]]) -> None:
    """Start a zygote for each ``(python, environ, seconds)`` when this interpreter exits.

    Not at once: a zygote's interpreter start takes a CPU for about 20 ms,
    and pytest's last garbage collections, after its ``pytest_unconfigure``
    hooks, would share the CPU with it; at exit nothing of the session is
    left to slow down. Sessions run one after another in one process (an
    IDE's, say) leave one zygote per socket name, the last session's. A
    zygote that cannot start is no error: a warm worker is a bonus.
    """
    for python, environ, seconds in launches:
        if not _AT_EXIT:
            atexit.register(_leave_all_behind)
        name = (str(python), tuple(sorted(_startup_environ(environ).items())))
        _AT_EXIT[name] = (python, environ, seconds)


#: Zygotes started by this process, reaped once they end: none is reported
#: as a subprocess still running when its ``Popen`` is collected.
_SPAWNED: list[subprocess.Popen[bytes]] = []

#: The zygotes to start at exit, by what names their socket.
_AT_EXIT: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Path, Mapping[str, str], float]] = {}


def _leave_all_behind() -> None:
    launches = list(_AT_EXIT.values())
    _AT_EXIT.clear()
    for python, environ, seconds in launches:
        with contextlib.suppress(OSError):
            leave_behind(python, environ, seconds)


def listening(temp_dir: Path | None = None) -> list[Path]:
    """The sockets of this user's zygotes that are ready for a session (see :func:`claim`)."""
    return sorted(socket_dir_in(temp_dir).glob("*.sock"))


class WaitingZygote(NamedTuple):
    """A zygote that holds its socket's name: starting, or listening for a session.

    What it wrote in its lock file; a zygote of an older pytest-uvbuild
    wrote its pid only.
    """

    socket: Path
    pid: int
    #: The env's interpreter it runs (None if it did not say).
    python: str | None
    #: When it started (``time.time()``) and how long it listens, if it said.
    started: float | None
    idle: float | None
    #: When it started listening; None while it still imports pytest.
    listening_since: float | None

    @property
    def state(self) -> str:
        """``starting`` while it imports pytest, then ``listening``."""
        return "starting" if self.listening_since is None else "listening"

    @property
    def until(self) -> float | None:
        """When it stops waiting, once it listens (None if not known)."""
        if self.listening_since is None or self.idle is None:
            return None
        return self.listening_since + self.idle

    def as_json(self) -> dict[str, object]:
        """Every field, for ``warm list --json``."""
        return {
            "socket": str(self.socket),
            "pid": self.pid,
            "python": self.python,
            "state": self.state,
            "started": self.started,
            "listening_since": self.listening_since,
            "until": self.until,
        }


def waiting(temp_dir: Path | None = None) -> list[WaitingZygote]:
    """This user's zygotes that hold their name: about to listen, or listening.

    ``temp_dir`` is the ``TMPDIR`` the sessions ran with (default: this
    process's). A zygote that took a session's handover is that session's
    worker now, and not among them.
    """
    found = []
    for lock in sorted(socket_dir_in(temp_dir).glob("*.lock")):
        path = lock.with_suffix("")
        if not _zygote_alive(path):
            continue
        # Read once the lock is known to be held: a zygote empties the file
        # as it lets go, so a stale pid is never read as the holder's.
        holder = _holder(lock)
        if holder is None:
            continue  # just taken, not written yet
        try:
            listening_since: float | None = path.stat().st_mtime
        except OSError:
            listening_since = None
        if listening_since is not None and listening_since < (holder["started"] or 0.0):
            listening_since = None  # a dead zygote's socket, which it replaces as it listens
        found.append(WaitingZygote(socket=path, listening_since=listening_since, **holder))
    return found


def _holder(lock: Path) -> dict[str, Any] | None:
    """What a zygote wrote in its lock file: a JSON object, or (older ones) its pid."""
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    if text.isdigit():
        return {"pid": int(text), "python": None, "started": None, "idle": None}
    try:
        data = json.loads(text)
        pid = data["pid"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return {
        "pid": pid,
        "python": data.get("python") if isinstance(data.get("python"), str) else None,
        "started": _number(data.get("started")),
        "idle": _number(data.get("idle")),
    }


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def stop_waiting(temp_dir: Path | None = None, *, timeout: float = 0.0) -> int:
    """Stop every zygote of this user that still waits; return how many were signalled.

    ``temp_dir`` is the ``TMPDIR`` the sessions ran with (default: this
    process's). Only a pid that holds a socket's lock is signalled, so a pid
    reused by another process since is never hit. ``SIGTERM`` makes a
    zygote unwind and remove its socket. With ``timeout``, this waits that
    long at most for them all to be gone, and stops those that start
    meanwhile too.
    """
    deadline = time.monotonic() + timeout
    signalled: set[int] = set()
    while True:
        pending = waiting(temp_dir)
        for zygote in pending:
            if zygote.pid not in signalled:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(zygote.pid, signal.SIGTERM)
                    signalled.add(zygote.pid)
        if not pending or time.monotonic() >= deadline:
            return len(signalled)
        time.sleep(0.02)


def _zygote_alive(path: Path) -> bool:
    """Whether a zygote holds ``path``'s lock (starting, or listening); never connects.

    The zygote, which may import only the standard library, takes it with
    ``flock``, the lock filelock takes on POSIX; so does this test, without
    importing filelock: it runs at exit (see :func:`leave_behind_at_exit`),
    when importing filelock (its thread pool) raises on Python 3.10.
    """
    lock_file = Path(f"{path}.lock")
    if not lock_file.exists():
        return False
    held = hold_flock(lock_file)
    if held is None:
        return True
    held.release()
    return False
