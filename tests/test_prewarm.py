"""Warm workers: a zygote left by one session becomes the next session's worker.

Acceptance tests run real sessions (``runpytest_subprocess``) with
``PYTEST_UVBUILD_KEEP_WARM`` set and ``TMPDIR`` pointing at a short private
directory, so that the sockets and zygotes are the test's own; the fixture
stops every zygote that is still waiting when the test ends.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import functools
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import pytest
import toys

from pytest_uvbuild import cli, hermetic, prewarm
from pytest_uvbuild.errors import HermeticRunError
from pytest_uvbuild.runner import Launch, WorkerProcess

HERMETIC = ("--uv-build", "--uv-install-project=source")


@pytest.fixture
def warm_tmpdir(short_tmpdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A short TMPDIR for the sessions, with warm workers on (30 s)."""
    monkeypatch.setenv(hermetic.KEEP_WARM_VARIABLE, "30")
    return short_tmpdir


def _wait_for_zygote(directory: Path) -> None:
    """Wait until a zygote listens in ``directory``'s socket dir."""
    if not toys.wait_until(lambda: prewarm.listening(directory)):
        pytest.fail("no zygote was left behind", pytrace=False)


#: A hermetic test that records who its parent is, its HOME and its cwd.
WHO_AM_I = """
import os
import pytest

@pytest.mark.hermetic
def test_who(request):
    with open("/proc/%d/cmdline" % os.getppid(), "rb") as fh:
        parent = fh.read().replace(b"\\0", b" ").decode()
    out = os.path.join(str(request.config.rootpath), "who.txt")
    with open(out, "a") as fh:
        fh.write("%s|%s|%s|%s|%d\\n" % ("zygote.py" in parent, os.environ["HOME"],
                                        os.path.isdir(os.environ["HOME"]), os.getcwd(),
                                        os.getppid()))
    import toyalpha
"""


def _leave_a_zygote(uv_pytester: pytest.Pytester, warm_tmpdir: Path) -> None:
    """Run one hermetic session of ``WHO_AM_I`` and wait for the zygote it leaves behind."""
    uv_pytester.makepyfile(test_who=WHO_AM_I)
    uv_pytester.runpytest_subprocess(*HERMETIC).assert_outcomes(passed=1)
    _wait_for_zygote(warm_tmpdir)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_the_next_session_gets_a_warm_worker_with_its_own_home(
    uv_pytester: pytest.Pytester, warm_tmpdir: Path
) -> None:
    """A session leaves a zygote; the next one's worker is its child, with a fresh HOME."""
    _leave_a_zygote(uv_pytester, warm_tmpdir)
    uv_pytester.runpytest_subprocess(*HERMETIC).assert_outcomes(passed=1)
    first, second = (
        line.split("|") for line in (uv_pytester.path / "who.txt").read_text().splitlines()
    )
    assert (first[0], second[0]) == ("False", "True")
    assert first[1] != second[1]
    assert second[2] == "True"
    assert first[3] == second[3] == str(uv_pytester.path)
    # The second session left a zygote too; stop_waiting ends it.
    _wait_for_zygote(warm_tmpdir)
    assert prewarm.stop_waiting(warm_tmpdir) == 1
    assert toys.wait_until(lambda: not prewarm.listening(warm_tmpdir))
    assert prewarm.stop_waiting(warm_tmpdir) == 0


def _warm_command(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pytest_uvbuild warm ...`` as a user would (TMPDIR is the test's)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_uvbuild", "warm", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_warm_list_shows_a_waiting_zygote_and_warm_stop_ends_it(
    uv_pytester: pytest.Pytester, warm_tmpdir: Path, shared_env_cache: Path
) -> None:
    """`warm list` shows the zygote a session left; `warm stop` ends it, socket and all."""
    _leave_a_zygote(uv_pytester, warm_tmpdir)
    (sock,) = prewarm.listening(warm_tmpdir)
    pid = int(json.loads(Path(f"{sock}.lock").read_text())["pid"])

    listed = _warm_command("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert (entry["socket"], entry["pid"], entry["state"]) == (str(sock), pid, "listening")
    # The env's interpreter, in the test's env cache.
    assert shared_env_cache in Path(entry["python"]).parents
    assert entry["started"] <= entry["listening_since"] < entry["until"]
    shown = _warm_command("list")
    assert shown.returncode == 0, shown.stderr
    header, line = shown.stdout.splitlines()
    assert header.split() == ["PID", "STATE", "AGE", "LEFT", "PYTHON"]
    assert line.split()[:2] == [str(pid), "listening"]
    assert line.split()[-1] == entry["python"]

    stopped = _warm_command("stop")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (0, "1 stopped\n", "")
    assert not sock.exists()
    assert not prewarm._zygote_alive(sock)
    assert json.loads(_warm_command("list", "--json").stdout) == []
    assert _warm_command("list").stdout.startswith("no warm workers waiting in ")

    # The next session starts a fresh worker.
    uv_pytester.runpytest_subprocess(*HERMETIC).assert_outcomes(passed=1)
    rows = [line.split("|") for line in (uv_pytester.path / "who.txt").read_text().splitlines()]
    assert [row[0] for row in rows] == ["False", "False"]


def test_waiting_names_the_holder_of_each_held_lock_only(
    short_tmpdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A held lock names its zygote (an older one's pid-only file too); a free or empty one none."""
    directory = prewarm.socket_dir_in()
    directory.mkdir(mode=0o700)
    holder = {"pid": 1234, "python": "/env/bin/python", "started": time.time() - 600, "idle": 30}
    texts = {"a": json.dumps(holder), "b": "4242", "c": "", "d": "{not json"}
    held = []
    for name, text in texts.items():
        (directory / f"{name}.sock.lock").write_text(text)
        fd = os.open(directory / f"{name}.sock.lock", os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)
    (directory / "a.sock").touch()  # listening
    (directory / "e.sock.lock").write_text("4343")  # a zygote that has ended
    try:
        found = prewarm.waiting()
        assert cli.main(["warm", "list"]) == 0
    finally:
        for fd in held:
            os.close(fd)
    assert [(z.socket.name, z.pid, z.python) for z in found] == [
        ("a.sock", 1234, "/env/bin/python"),
        ("b.sock", 4242, None),
    ]
    listening, old = found
    assert listening.until == pytest.approx((directory / "a.sock").stat().st_mtime + 30)
    assert (old.started, old.listening_since, old.until) == (None, None, None)
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        ["PID", "STATE", "AGE", "LEFT", "PYTHON"],
        ["1234", "listening", "10m", lines[1][3], "/env/bin/python"],
        ["4242", "starting", "?", "?", "?"],
    ]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_a_warm_worker_crash_names_its_signal_and_status(
    uv_pytester: pytest.Pytester, warm_tmpdir: Path
) -> None:
    """The zygote relays its child's exit status and signal; the rest of the batch still runs.

    Neither crash report could come from the zygote's silence (read as
    SIGKILL), nor from a fresh worker: each crashing test checks that the
    zygote is its parent.
    """
    uv_pytester.makepyfile(
        test_crash="""
        import os, signal
        import pytest

        pytestmark = pytest.mark.hermetic

        def forked_by_a_zygote():
            with open("/proc/%d/cmdline" % os.getppid(), "rb") as fh:
                return b"zygote.py" in fh.read()

        def test_first():
            pass

        def test_exit():
            assert forked_by_a_zygote()
            os._exit(3)

        def test_sigterm():
            assert forked_by_a_zygote()
            os.kill(os.getpid(), signal.SIGTERM)

        def test_last():
            import toyalpha
        """
    )
    uv_pytester.runpytest_subprocess(*HERMETIC, "-k", "first").assert_outcomes(
        passed=1, deselected=3
    )
    _wait_for_zygote(warm_tmpdir)
    result = uv_pytester.runpytest_subprocess(*HERMETIC, "-k", "exit")
    result.assert_outcomes(failed=1, deselected=3)
    result.stdout.fnmatch_lines(
        ["*_ test_exit _*", "The hermetic worker running this test exited with status 3*"]
    )
    # That session left a zygote too: the next crash is a warm worker's again.
    _wait_for_zygote(warm_tmpdir)
    result = uv_pytester.runpytest_subprocess(*HERMETIC, "-k", "sigterm or last")
    result.assert_outcomes(passed=1, failed=1, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_sigterm _*",
            "The hermetic worker running this test was killed by signal 15 (SIGTERM)*",
        ]
    )


def test_without_keep_warm_nothing_is_left_behind(
    uv_pytester: pytest.Pytester, warm_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With hermetic_keep_warm 0 (or CI set, by default) a session leaves no zygote."""
    monkeypatch.delenv(hermetic.KEEP_WARM_VARIABLE)
    monkeypatch.setenv("CI", "true")
    uv_pytester.makepyfile(test_who=WHO_AM_I)
    uv_pytester.runpytest_subprocess(*HERMETIC).assert_outcomes(passed=1)
    monkeypatch.delenv("CI")
    uv_pytester.runpytest_subprocess(*HERMETIC, "-o", "hermetic_keep_warm=0").assert_outcomes(
        passed=1
    )
    # Leaving a zygote makes its socket directory first, as the session exits.
    assert not prewarm.socket_dir_in(warm_tmpdir).exists()


def test_a_bad_keep_warm_value_is_a_usage_error(
    uv_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hermetic_keep_warm that is neither seconds nor auto names the fix."""
    monkeypatch.delenv(hermetic.KEEP_WARM_VARIABLE)
    uv_pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = uv_pytester.runpytest_subprocess(*HERMETIC, "-o", "hermetic_keep_warm=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*hermetic_keep_warm must be a number of seconds or 'auto'*"])


@pytest.mark.parametrize(
    ("ini", "variables", "expected"),
    [
        ("auto", {}, hermetic.DEFAULT_KEEP_WARM_SECONDS),
        ("auto", {"CI": "true"}, 0.0),
        ("auto", {"BUILD_NUMBER": "17"}, 0.0),
        ("45", {"CI": "true"}, 45.0),
        ("auto", {hermetic.KEEP_WARM_VARIABLE: "0"}, 0.0),
        ("10", {hermetic.KEEP_WARM_VARIABLE: "7.5"}, 7.5),
        ("-3", {}, 0.0),
    ],
)
def test_keep_warm_seconds(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ini: str,
    variables: dict[str, str],
    expected: float,
) -> None:
    """The variable wins over the ini value; auto means 120 s, or none on CI (CI, BUILD_NUMBER)."""
    monkeypatch.delenv(hermetic.KEEP_WARM_VARIABLE, raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    config = pytester.parseconfig("-o", f"hermetic_keep_warm={ini}")
    assert hermetic.keep_warm_seconds(config) == expected


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_keep_warm_must_be_a_finite_number(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A zygote cannot wait forever: an infinite or NaN keep-warm value is a usage error."""
    monkeypatch.setenv(hermetic.KEEP_WARM_VARIABLE, value)
    config = pytester.parseconfig()
    with pytest.raises(pytest.UsageError, match="must be a number of seconds"):
        hermetic.keep_warm_seconds(config)


def test_no_socket_dir_that_cannot_be_made_means_no_warm_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp dir where the socket dir cannot be made means no warm worker, not an error."""
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "file"))
    (tmp_path / "pyvenv.cfg").write_text("")
    assert prewarm.socket_path(tmp_path / "bin" / "python", {}) is None
    fds = (0, 1, 2, 2)
    assert (
        prewarm.claim(
            tmp_path / "bin" / "python", {}, cwd=tmp_path, spec=tmp_path, boot={}, fds=fds
        )
        is None
    )


def test_socket_name_follows_the_start_up_environment_but_not_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what a fresh interpreter would start with names the socket; HOME, COLUMNS do not."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = venv / "bin" / "python"
    base = {"PATH": "/usr/bin", "PYTHONHASHSEED": "0", "HOME": "/tmp/a"}
    name = prewarm.socket_path(python, base)
    assert name is not None
    assert name.parent.stat().st_mode & 0o777 == 0o700
    assert prewarm.socket_path(python, {**base, "HOME": "/tmp/b"}) == name
    assert prewarm.socket_path(python, {**base, "COLUMNS": "132", "LINES": "50"}) == name
    assert prewarm.socket_path(python, {**base, "PYTHONHASHSEED": "1"}) != name
    assert prewarm.socket_path(python, {**base, "COVERAGE_PROCESS_START": "x"}) != name
    # A rebuilt env: a new pyvenv.cfg (its inode may be reused, its time is not).
    (venv / "pyvenv.cfg").unlink()
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    os.utime(venv / "pyvenv.cfg", ns=(1, 1))
    assert prewarm.socket_path(python, base) != name


STUBBORN_HOLDER = """
import fcntl, json, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "python": sys.executable}).encode())
print("held", flush=True)
time.sleep(60)
"""


def test_warm_stop_names_a_warm_worker_that_outlives_its_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """warm stop exits 1 and names the pid of a warm worker still there after its wait."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(cli, "WARM_STOP_SECONDS", 0.3)
    directory = prewarm.socket_dir_in(tmp_path)
    directory.mkdir(mode=0o700)
    holder = subprocess.Popen(
        [sys.executable, "-c", STUBBORN_HOLDER, str(directory / "stubborn.sock.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["warm", "stop"]) == 1
        out, err = capsys.readouterr()
        assert out == "1 stopped\n"
        assert f"still waiting after 0.3 s (pid {holder.pid})" in err
        assert "Fix:" in err
        assert holder.poll() is None  # it ignored SIGTERM, as the message says
    finally:
        holder.kill()
        holder.wait()


def test_a_shared_socket_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket dir others can enter is not used: no warm worker rather than a foreign one."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    directory = tmp_path / f"pytest-uvbuild-{os.getuid()}"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)
    (tmp_path / "pyvenv.cfg").write_text("")
    assert prewarm.socket_path(tmp_path / "bin" / "python", {}) is None


def test_concurrent_sessions_share_one_zygote_safely(
    uv_pytester: pytest.Pytester, warm_tmpdir: Path
) -> None:
    """Three sessions racing for a zygote all pass; each zygote serves one of them at most."""
    _leave_a_zygote(uv_pytester, warm_tmpdir)
    (uv_pytester.path / "who.txt").unlink()
    command = [sys.executable, "-m", "pytest", *HERMETIC, "-p", "no:cacheprovider", "-q"]
    sessions = [
        subprocess.Popen(command, cwd=uv_pytester.path, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [session.communicate(timeout=120)[0] for session in sessions]
    assert [session.returncode for session in sessions] == [0, 0, 0], outputs
    rows = [line.split("|") for line in (uv_pytester.path / "who.txt").read_text().split()]
    assert len(rows) == 3
    # The zygote served one of them; that one's end may leave a new zygote in
    # time for a later one. No zygote ever serves two.
    warm_parents = [row[4] for row in rows if row[0] == "True"]
    assert warm_parents
    assert len(set(warm_parents)) == len(warm_parents)


def test_a_warm_child_reads_its_status_and_survives_a_silent_zygote() -> None:
    """WarmChild gives the zygote's wait status as a Popen-style code; a hang-up reads as killed."""
    ours, zygote = socket.socketpair()
    child = prewarm.WarmChild(ours, pid=12345)
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.01)
    zygote.sendall(b'{"status": %d}\n' % (3 << 8))  # what waitpid reports for exit(3)
    assert child.wait(5) == 3
    zygote.close()

    ours, zygote = socket.socketpair()
    child = prewarm.WarmChild(ours, pid=12345)
    zygote.sendall(b'{"status": %d}\n' % signal.SIGSEGV)  # killed by a signal
    assert child.wait(5) == -signal.SIGSEGV
    zygote.close()

    ours, zygote = socket.socketpair()
    child = prewarm.WarmChild(ours, pid=12345)
    zygote.close()  # gone without a word
    assert child.wait(5) == -signal.SIGKILL


def _claim(
    python: Path, environ: dict[str, str], directory: Path, pipes: tuple[int, int]
) -> prewarm.WarmChild | None:
    """Claim a zygote for ``python`` with the pipes' ends and this process's streams."""
    return prewarm.claim(
        python,
        environ,
        cwd=directory,
        spec=directory / "boot.json",
        boot={},
        fds=(*pipes, 1, 2),
    )


def test_a_leftover_socket_without_a_zygote_means_a_fresh_worker(
    short_tmpdir: Path,
) -> None:
    """claim() answers None, quickly, when the socket file is a dead zygote's leftover."""
    venv = short_tmpdir / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    python = venv / "bin" / "python"
    environ = {"PATH": "/usr/bin"}
    path = prewarm.socket_path(python, environ)
    assert path is not None
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    read_fd, write_fd = os.pipe()
    try:
        claimed = _claim(python, environ, short_tmpdir, (write_fd, read_fd))
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert claimed is None
    assert not prewarm._zygote_alive(path)


#: Leaves a zygote for this interpreter at exit; says whether one started before.
LEAVE_AT_EXIT = """
import sys, time
from pathlib import Path
from pytest_uvbuild import cli, hermetic, prewarm

python, environ = Path(sys.executable), {"PATH": "/usr/bin:/bin"}
prewarm.leave_behind_at_exit([(python, environ, 30.0)])
time.sleep(0.5)
print(Path(str(prewarm.socket_path(python, environ)) + ".lock").exists())
"""


def test_a_zygote_left_at_exit_starts_only_when_the_interpreter_exits(
    short_tmpdir: Path,
) -> None:
    """A zygote left at exit starts once the interpreter exits, and listens without more delay."""
    env = {**os.environ, "TMPDIR": str(short_tmpdir)}
    done = subprocess.run(
        [sys.executable, "-c", LEAVE_AT_EXIT], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
    # Well before its patience runs out: it saw that the session is gone.
    assert prewarm.PATIENCE_SECONDS >= 5
    if not toys.wait_until(lambda: prewarm.listening(short_tmpdir), 4):
        pytest.fail("the zygote waited for a session that had already exited", pytrace=False)


def _fake_zygote(path: Path, reply: bytes) -> threading.Thread:
    """A zygote at ``path`` that takes one session's pipes, sends ``reply`` and hangs up."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, listener:
            header, fds, _, _ = socket.recv_fds(connection, 8, 4)
            for fd in fds:
                os.close(fd)
            (length,) = struct.unpack("!Q", header)
            while length > 0:
                length -= len(connection.recv(length))
            connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"", "lost"),  # hung up after taking the pipes
        (b'{"pid": null}\n', "lost"),
        (b"not json\n", "lost"),
        (b'{"pid": 4242}\n{"status": 768}\n', 3),  # a child that ended at once
        (b'{"pid": 4242}\nnonsense\n', -9),
    ],
)
def test_claim_survives_a_zygote_that_misbehaves(
    short_tmpdir: Path, reply: bytes, outcome: object
) -> None:
    """A zygote's hang-up or garbage after the handover is HandoverLost, a bad status a kill."""
    environ = {"PATH": "/usr/bin:/bin"}
    python = Path(sys.executable)
    path = prewarm.socket_path(python, environ)
    assert path is not None
    server = _fake_zygote(path, reply)
    read_fd, write_fd = os.pipe()
    try:
        claim = functools.partial(_claim, python, environ, short_tmpdir, (write_fd, read_fd))
        if outcome == "lost":
            with pytest.raises(prewarm.HandoverLost):
                claim()
        else:
            child = claim()
            assert child is not None
            assert (child.pid, child.wait(5)) == (4242, outcome)
    finally:
        os.close(read_fd)
        os.close(write_fd)
        server.join(5)


def test_a_lost_handover_gives_the_fresh_worker_new_pipes(short_tmpdir: Path) -> None:
    """After a zygote fails with a session's pipes, the worker started instead runs on new ones."""
    environ = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    python = Path(sys.executable)
    path = prewarm.socket_path(python, environ)
    assert path is not None
    server = _fake_zygote(path, b"")
    launch = Launch(
        python=python, environ=environ, cwd=short_tmpdir, options=(), label="t", keep_warm=30.0
    )
    worker = WorkerProcess(launch, scratch=short_tmpdir)
    try:
        server.join(5)
        assert not isinstance(worker.process, prewarm.WarmChild)
        event = worker.next_event(time.time() + 30)
        assert event is not None
        assert event[0] == "ready"
    finally:
        worker.stop()


def test_sessions_in_one_process_leave_one_zygote_per_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two sessions leaving the same zygote register one exit hook and start it once."""
    registered: list[object] = []
    started: list[tuple[Path, float]] = []
    monkeypatch.setattr(prewarm, "_AT_EXIT", {})
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(prewarm, "leave_behind", lambda p, e, s: started.append((p, s)))
    python = Path(sys.executable)
    prewarm.leave_behind_at_exit([(python, {"PATH": "/bin", "HOME": "/h1"}, 30.0)])
    prewarm.leave_behind_at_exit([(python, {"PATH": "/bin", "HOME": "/h2"}, 60.0)])
    assert started == []
    assert len(registered) == 1
    registered[0]()  # type: ignore[operator]
    assert started == [(python, 60.0)]


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")
def test_a_zygote_holds_no_descriptor_and_no_directory_of_the_session(short_tmpdir: Path) -> None:
    """A zygote gets none of the session's inheritable descriptors, and runs in /."""
    environ = {"PATH": "/usr/bin:/bin"}
    python = Path(sys.executable)
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    try:
        prewarm.leave_behind(python, environ, 30.0, patience=0.0)
        path = prewarm.socket_path(python, environ)
        assert path is not None
        lock = Path(f"{path}.lock")
        assert toys.wait_until(lambda: lock.exists() and lock.read_text().strip(), 10)
        pid = int(json.loads(lock.read_text())["pid"])
        pipe = os.readlink(f"/proc/self/fd/{write_fd}")
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert pipe not in held
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_a_lost_handover_that_cannot_make_new_pipes_leaks_no_descriptor(
    short_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors after a lost handover: one clear error, and every pipe closed once."""

    def lost(*args: object, **kwargs: object) -> None:
        raise prewarm.HandoverLost("the zygote hung up")

    monkeypatch.setattr(prewarm, "claim", lost)
    real_pipe = os.pipe
    calls = iter(range(1_000))

    def pipe() -> tuple[int, int]:
        if next(calls) == 3:  # the second pipe of the new pair
            raise OSError(24, "Too many open files")
        return real_pipe()

    launch = Launch(
        python=Path(sys.executable),
        environ={"PATH": os.environ["PATH"]},
        cwd=short_tmpdir,
        options=(),
        label="t",
        keep_warm=30.0,
    )
    before = sorted(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "pipe", pipe)
    with pytest.raises(HermeticRunError, match="Too many open files"):
        WorkerProcess(launch, scratch=short_tmpdir)
    monkeypatch.setattr(os, "pipe", real_pipe)
    assert sorted(os.listdir("/proc/self/fd")) == before


#: Runs zygote.py (argv[1:]) with children that take a second to make their own session.
SLOW_SETSID_ZYGOTE = """
import os, runpy, sys, time

setsid = os.setsid

def slow_setsid():
    time.sleep(1)
    return setsid()

os.setsid = slow_setsid
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_warm_worker_can_be_signalled_as_soon_as_the_session_has_it(short_tmpdir: Path) -> None:
    """The zygote names its child only once the child leads its own process group.

    The outer side signals a worker's process group (Ctrl-C, a kill): were
    the pid sent at once, a signal sent before the child's setsid would
    find no such group and be lost.
    """
    environ = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    python = Path(sys.executable)
    path = prewarm.socket_path(python, environ)
    assert path is not None
    zygote = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_SETSID_ZYGOTE,
            str(prewarm.ZYGOTE_SCRIPT),
            str(path),
            "30",
            str(prewarm.WORKER_SCRIPT),
            "0",
            str(os.getpid()),
        ],
        env=environ,
        start_new_session=True,
    )
    try:
        assert toys.wait_until(path.exists, 30)
        launch = Launch(
            python=python, environ=environ, cwd=short_tmpdir, options=(), label="t", keep_warm=30.0
        )
        worker = WorkerProcess(launch, scratch=short_tmpdir)
        try:
            assert isinstance(worker.process, prewarm.WarmChild)
            assert os.getpgid(worker.pid) == worker.pid
            assert worker.kill() == -signal.SIGKILL
        finally:
            worker.stop()
    finally:
        zygote.kill()
        zygote.wait()


def test_a_zygote_takes_a_name_whose_lock_was_tested_for_an_instant(tmp_path: Path) -> None:
    """A zygote starting while `warm list` or a session's exit tests its lock still takes it."""
    from pytest_uvbuild import zygote

    path = str(tmp_path / "z.sock")
    probe = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(0.05, os.close, [probe]).start()
    held = zygote._hold_name(path, 30)
    assert held is not None
    try:
        assert json.loads(Path(f"{path}.lock").read_text())["pid"] == os.getpid()
    finally:
        zygote._release_name(held)


def test_a_zygote_leaves_a_name_held_by_another_zygote(tmp_path: Path) -> None:
    """A zygote whose lock stays busy beyond the contention window exits, leaving the holder be."""
    from pytest_uvbuild import zygote

    path = str(tmp_path / "z.sock")
    holder = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        started = time.monotonic()
        assert zygote._hold_name(path, 30) is None
        assert time.monotonic() - started >= zygote.CONTENDED_SECONDS
    finally:
        os.close(holder)


def _zygote_module() -> types.ModuleType:
    """zygote.py loaded as a module of its own, as it is never imported by the package."""
    spec = importlib.util.spec_from_file_location("zygote_under_test", prewarm.ZYGOTE_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    zygote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zygote)
    return zygote


def test_a_zygote_socket_appears_only_once_it_listens(
    short_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zygote binds under its own name and renames the socket into place once listening."""
    zygote = _zygote_module()
    path = str(short_tmpdir / "z.sock")
    temporary = zygote._binding_name(path)
    Path(temporary).write_text("left by a dead zygote with this pid")
    seen: list[bool] = []
    real_listen = socket.socket.listen

    def listen(self: socket.socket, backlog: int) -> None:
        seen.append(os.path.exists(path))  # not there yet while it cannot be connected
        real_listen(self, backlog)

    monkeypatch.setattr(socket.socket, "listen", listen)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        zygote._listen(listener, path)
        assert seen == [False]
        assert not os.path.exists(temporary)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)


def test_a_zygote_that_cannot_listen_leaves_no_socket_file(
    short_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed listen removes the socket bound under the zygote's own name; none is published."""
    zygote = _zygote_module()
    path = str(short_tmpdir / "z.sock")

    def refused(self: socket.socket, backlog: int) -> None:
        raise OSError(errno.EADDRINUSE, "cannot listen")

    monkeypatch.setattr(socket.socket, "listen", refused)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener,
        pytest.raises(OSError, match="cannot listen"),
    ):
        zygote._listen(listener, path)
    assert os.listdir(short_tmpdir) == []
