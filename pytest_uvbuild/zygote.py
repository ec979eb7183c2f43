"""A warm interpreter of a locked env: pytest imported, waiting to become the next worker.

Executed by path with the env's interpreter (``python zygote.py SOCKET
IDLE_SECONDS WORKER_SCRIPT PATIENCE_SECONDS SESSION_PID``), like :mod:`worker`; it
imports only the standard library and pytest, and runs on Python >= 3.8.

Starting an interpreter and importing pytest is the largest fixed cost of a
hermetic session. A session that ends leaves one of these behind; the next
session with the same env and the same start-up environment connects
instead of spawning. What it does:

* locks ``SOCKET.lock`` (if another zygote holds it, it exits) and
  writes there who it is (see ``python -m pytest_uvbuild warm list``),
  waits up to ``PATIENCE_SECONDS`` for the session that started it
  (``SESSION_PID``) to exit,
  imports pytest and the worker module, and only then binds the Unix socket
  ``SOCKET`` (in a directory only its user can enter);
* waits up to ``IDLE_SECONDS`` for one connection, and removes the socket
  either way: each zygote serves one session. ``SIGTERM`` until then
  (``warm stop``) ends it the same way;
* receives, with the connection, the session's pipes and output streams
  (``SCM_RIGHTS``) and one JSON document: the worker's boot spec, working
  directory, umask and complete environment;
* forks. The child starts a new session (process group), takes the streams
  and the environment, and runs :func:`worker.run` exactly as a fresh worker
  would. Once the child leads its process group (which the session
  signals), the parent sends ``{"pid": ...}``, waits for the child and
  sends ``{"status": <wait status>}``, so the outer side can name a crash's
  signal as it does for a child of its own; then it exits.

What an interpreter fixes at start-up (the hash seed, ``sys.path`` from
``PYTHONPATH``, the locale, other ``PYTHON*`` settings) is part of the
socket's name on the outer side, so a zygote only ever serves a session whose
fresh worker would have started the same way.
"""

from __future__ import annotations

import os
import sys

# As in worker.py: this file's directory (pytest-uvbuild's package) must not
# shadow the project's own top-level modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    del sys.path[0]

import array  # noqa: E402
import fcntl  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import Any  # noqa: E402

#: The handover carries the session's event pipe, control pipe, stdout and stderr.
HANDOVER_FDS = 4
_LENGTH = struct.Struct("!Q")
#: How long a busy name's lock is tried again before another zygote is taken
#: to hold it: ``warm list`` and a session's exit test a lock by taking it
#: for an instant, which must not make a starting zygote give up.
CONTENDED_SECONDS = 0.25


def _hold_name(path: str, idle: float) -> int | None:
    """Lock ``PATH.lock`` for as long as this zygote listens; None if another one does.

    A lock that stays busy for :data:`CONTENDED_SECONDS` is another zygote's.

    The lock file says who holds it (pid, interpreter, start time, how long
    it listens), for ``python -m pytest_uvbuild warm list`` and ``warm stop``.
    """
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + CONTENDED_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.005)
    holder = {"pid": os.getpid(), "python": sys.executable, "started": time.time(), "idle": idle}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    return fd


def _release_name(fd: int) -> None:
    """Unlock the name; emptied first, a lock file names only a zygote that holds it."""
    os.ftruncate(fd, 0)
    os.close(fd)


def _listen(listener: socket.socket, path: str) -> None:
    """Listen on ``path`` (holding its lock, so a leftover file is a dead zygote's).

    The socket is bound and listening under a name of its own first, then
    renamed to ``path``: a session that finds ``path`` can connect (bound
    but not yet listening, it would be refused, and start its own worker).
    """
    temporary = _binding_name(path)
    if os.path.exists(temporary):
        os.unlink(temporary)  # left by a dead zygote that had this pid
    listener.bind(temporary)
    try:
        listener.listen(1)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _binding_name(path: str) -> str:
    """Where a zygote binds its socket before it takes ``path`` (short: sun_path is small)."""
    return os.path.join(os.path.dirname(path), f".{os.getpid()}.binding")


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The session's JSON document and the descriptors that came with its length."""
    fds = array.array("i")
    header, ancillary, _, _ = connection.recvmsg(
        _LENGTH.size, socket.CMSG_SPACE(HANDOVER_FDS * fds.itemsize)
    )
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if len(header) != _LENGTH.size or len(fds) != HANDOVER_FDS:
        raise ValueError("malformed handover")
    (length,) = _LENGTH.unpack(header)
    body = b""
    while len(body) < length:
        chunk = connection.recv(length - len(body))
        if not chunk:
            raise ValueError("handover cut short")
        body += chunk
    return json.loads(body.decode("utf-8")), list(fds)


def _send(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message).encode("utf-8") + b"\n")


def _become_worker(worker: Any, handover: dict[str, Any], fds: list[int], leading: int) -> None:
    """In the forked child: take the session's streams and environment, run the worker.

    ``leading`` is closed once this process leads its own session and
    process group: only then does the parent tell the session its pid.
    """
    import tempfile

    event_fd, control_fd, stdout_fd, stderr_fd = fds
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()
    os.close(leading)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    for fd in (null, stdout_fd, stderr_fd):
        if fd > 2:
            os.close(fd)
    os.chdir(handover["cwd"])
    os.umask(handover["umask"])
    os.environ.clear()
    os.environ.update(handover["environ"])
    # What the standard library read from the old environment on first use.
    time.tzset()
    tempfile.tempdir = None
    importlib.invalidate_caches()
    boot = dict(handover["boot"])
    boot["event_fd"] = event_fd
    boot["control_fd"] = control_fd
    sys.argv = [handover["worker_script"], handover["spec"]]
    worker._exit_without_finalising(worker.run(boot))


def _let_the_session_end(session: int, longest: float) -> None:
    """Wait (``longest`` seconds at most) until the session ``session`` that started us has exited.

    Importing pytest takes a CPU for a while: done while that session still
    writes its summary, it would make the session itself slower. The pid
    comes from the session, not from ``os.getppid()`` here: a session that
    starts us as it exits may be gone already, and we then have a new parent.
    """
    deadline = time.monotonic() + longest
    while os.getppid() == session and time.monotonic() < deadline:
        time.sleep(0.005)


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _load_worker(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("pytest_uvbuild_worker", path)
    if spec is None or spec.loader is None:
        raise ImportError("cannot load %s" % (path,))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _import_what_sessions_import() -> None:
    """Import what every pytest session imports as it configures, beyond ``import pytest``.

    That is its default plugins, ``pdb`` (the debugging plugin) and the TOML
    parser (for ``pyproject.toml``): about 10 ms a session no longer waits
    for. A module that fails to import is left for the session to report.
    """
    plugins = getattr(sys.modules.get("_pytest.config"), "default_plugins", ())
    names = ["_pytest." + name for name in plugins] + ["pdb"]
    if sys.version_info >= (3, 11):
        names.append("tomllib")
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: S112 - the session will say what is wrong
            continue


def main(argv: list[str]) -> int:
    path, idle, worker_script = argv[1], float(argv[2]), argv[3]
    held = _hold_name(path, idle)
    if held is None:
        return 0
    # Stopped while waiting (``warm stop``): unwind, so that the socket file goes too.
    signal.signal(signal.SIGTERM, _stop)
    listener = None
    try:
        _let_the_session_end(int(argv[5]), float(argv[4]))
        import pytest  # noqa: F401 - importing it now is the point

        _import_what_sessions_import()
        worker = _load_worker(worker_script)
        # Listening only once ready: a session never waits for our imports;
        # until then it starts its own worker, which costs the same.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _listen(listener, path)
        ready, _, _ = select.select([listener], [], [], idle)
        if not ready:
            return 0
        connection, _ = listener.accept()
    finally:
        # From now on a SIGTERM is ignored: the clean-up is not cut short,
        # and a zygote that took a session only reports its child's end,
        # rather than leave the session guessing.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if listener is not None:
            # One session per zygote: the next one may leave a new zygote
            # behind while this one still looks after its child.
            listener.close()
            if os.path.exists(path):
                os.unlink(path)
        _release_name(held)
    with connection:
        handover, fds = _receive(connection)
        awaited, leading = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(awaited)
                connection.close()
                _become_worker(worker, handover, fds, leading)
            except BaseException:
                traceback.print_exc()
            os._exit(70)
        for fd in (leading, *fds):
            os.close(fd)
        # The session signals the worker's process group (Ctrl-C, a kill):
        # until the child has made it, a signal sent there would be lost.
        # End of file comes once it has, or once it is gone.
        os.read(awaited, 1)
        os.close(awaited)
        _send(connection, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(connection, {"status": status})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
