"""The fault-injection lab: toy projects, tool wrappers that stop on cue, sessions, kills.

Shared by the reliability tests (few trials, in CI) and ``bench/reliability.py``
(the full trial counts behind ``docs/reliability.md``), so that the figures
come from the very code the tests check. Nothing here depends on pytest
fixtures: a :class:`Lab` needs a scratch directory and the offline wheelhouse.

A *stop wrapper* stands in for ``uv`` (through ``PYTEST_UVBUILD_UV``) or
``git`` (first on ``PATH``). It logs every call and, when the call matches
``RELIABILITY_STOP`` (a shell pattern over ``"<tool> <args>"``), touches the
file ``RELIABILITY_MARK`` at one of three moments:

- ``before``: instead of running the tool, then sleeps until killed;
- ``start``: just before running the tool (the tool then runs);
- ``end``: just after the tool returned (the caller then carries on).

The harness waits for the mark, optionally sleeps a little longer, and
sends SIGKILL to the session's process group (everything, as a cancelled CI
job) or to the pytest process alone (its uv child lives on as an orphan).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toys

REPO = Path(__file__).resolve().parents[2]
ENVCHECK = Path(__file__).with_name("envcheck.py")

#: A test that checks, while the session runs, that the env it was handed is whole.
INSIDE_TEST = '''\
import os
import time
from pathlib import Path

import envcheck


def _check(uv_env):
    layer_sites = [str(p) for p in uv_env.layer if p.name == "site"]
    bad = envcheck.problems(str(uv_env.path), layer_sites)
    assert not bad, f"the session was handed an env with missing files: {bad[:5]}"


def _wait_for_go(uv_env):
    """Say we hold the env, then wait until told to go on (checking it meanwhile if asked)."""
    ready = os.environ.get("RELIABILITY_READY")
    if not ready:
        return
    Path(ready, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    deadline = time.monotonic() + 120
    while not Path(ready, "go").exists() and time.monotonic() < deadline:
        if os.environ.get("RELIABILITY_WATCH"):
            _check(uv_env)
        time.sleep(0.02)


def test_env(uv_env):
    _wait_for_go(uv_env)
    _check(uv_env)
    out = uv_env.run(
        ["python", "-c", "import toyalpha, demo, pytest; print(demo.WHERE)"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    print("INSIDE", uv_env.key, "hit" if uv_env.hit else "miss", flush=True)
'''

_WRAPPER = """\
#!/bin/sh
real='{real}'
tool='{tool}'
if [ -n "${{RELIABILITY_LOG:-}}" ]; then
    printf '%s\\t%s\\t%s\\n' "$tool" "${{UV_PROJECT_ENVIRONMENT:-}}" "$*" >> "$RELIABILITY_LOG"
fi
if [ -n "${{RELIABILITY_SLOW:-}}" ]; then
    case "$tool $*" in
        $RELIABILITY_SLOW) sleep "${{RELIABILITY_SLOW_SECONDS:-0.3}}" ;;
    esac
fi
if [ -n "${{RELIABILITY_STOP:-}}" ]; then
    case "$tool $*" in
        $RELIABILITY_STOP)
            if mkdir "$RELIABILITY_MARK.once" 2>/dev/null; then
                case "${{RELIABILITY_STOP_WHEN:-before}}" in
                    before) : > "$RELIABILITY_MARK"; exec sleep 600 ;;
                    start) : > "$RELIABILITY_MARK"; exec "$real" "$@" ;;
                    end) "$real" "$@"; rc=$?; : > "$RELIABILITY_MARK"; exit $rc ;;
                esac
            fi ;;
    esac
fi
exec "$real" "$@"
"""


def write_wrapper(path: Path, real: Path, tool: str) -> Path:
    """Write a stop wrapper for ``real`` at ``path`` (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_WRAPPER.format(real=real, tool=tool))
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class Trial:
    """One trial of one scenario: did every invariant hold, and what was seen."""

    suite: str
    scenario: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Stop:
    """Where to kill a session: a tool call, a moment around it, a delay, and whom to kill."""

    pattern: str
    when: str = "before"
    delay: float = 0.0
    group: bool = True

    def describe(self) -> str:
        """Say in words when the kill happens."""
        call = " ".join(self.pattern.replace("*", " ").split())
        moment = {"before": "before", "start": "after the start of", "end": "after"}[self.when]
        delay = f" +{self.delay * 1000:.0f} ms" if self.delay else ""
        whom = "session's process group" if self.group else "pytest process only"
        return f"{moment} `{call}`{delay}, SIGKILL to the {whom}"


@dataclass
class Session:
    """The result of one pytest session run as a user would run it."""

    args: list[str]
    returncode: int
    output: str

    def inside(self) -> list[str]:
        """The INSIDE lines the project's test printed (key, hit or miss)."""
        return [ln[ln.index("INSIDE ") :] for ln in self.output.splitlines() if "INSIDE " in ln]


@dataclass
class Lab:
    """A scratch area: the wheelhouse, uv's package cache, tool wrappers and a call log."""

    root: Path
    wheelhouse: Path
    uv_cache: Path
    log: Path = field(init=False)
    bin: Path = field(init=False)
    uv: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bin = self.root / "bin"
        self.log = self.root / "tool-calls.log"
        self.uv = write_wrapper(self.bin / "uv", toys.UV, "uv")
        git = shutil.which("git")
        if git is not None:
            write_wrapper(self.bin / "git", Path(git), "git")

    # -- projects --------------------------------------------------------

    def project(
        self, name: str = "demo", *, git: bool = False, path_dependency: bool = False, **kwargs: Any
    ) -> Path:
        """A locked toy project (needs toyalpha) with the INSIDE test, optionally a git repo.

        With ``path_dependency`` it also needs ``<name>-dep``, a project
        beside it: a second local package, so that a cold build asks ``uv
        export`` which local packages the selection installs.
        """
        root = self.root / name
        if path_dependency:
            dep = f"{name}-dep"
            toys.write_project(
                self.root / dep, self.wheelhouse, name=dep, with_pytest=False, lock=False
            )
            kwargs["dependencies"] = [*kwargs.get("dependencies", ["toyalpha==1.0"]), dep]
            kwargs["extra_toml"] = (
                kwargs.get("extra_toml", "")
                + f'[tool.uv.sources]\n{dep} = {{ path = "../{dep}" }}\n'
            )
        toys.write_project(root, self.wheelhouse, **kwargs)
        shutil.copy(ENVCHECK, root / "envcheck.py")
        (root / "test_inside.py").write_text(INSIDE_TEST)
        if git:
            self.git(root, "init", "-q", "-b", "main")
            self.git(root, "add", "-A")
            self.git(root, "commit", "-q", "-m", "toy project")
        return root

    def git(self, root: Path, *args: str) -> None:
        """Run the real git in ``root`` with a fixed identity."""
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "lab",
            "GIT_AUTHOR_EMAIL": "lab@example.invalid",
            "GIT_COMMITTER_NAME": "lab",
            "GIT_COMMITTER_EMAIL": "lab@example.invalid",
        }
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)

    # -- sessions ----------------------------------------------------------

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Variables of a session: isolated caches, the wrappers, the call log."""
        # Nothing of the session running this lab (xdist worker ids, addopts)
        # may leak into the sessions it starts.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))
            and k not in ("VIRTUAL_ENV", "PYTEST_ADDOPTS", "GITHUB_STEP_SUMMARY", "PYTHONPATH")
        }
        env.update(
            UV_PYTHON_DOWNLOADS="never",
            UV_NO_PROGRESS="1",
            UV_CACHE_DIR=str(self.uv_cache),
            PYTEST_UVBUILD_UV=str(self.uv),
            RELIABILITY_LOG=str(self.log),
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
        )
        env.pop("PYTEST_UVBUILD_CACHE_DIR", None)
        if extra:
            env.update(extra)
        return env

    def command(self, cache: Path, *args: str, uv_build: bool = True) -> list[str]:
        """The pytest command line of a session against ``cache`` (in-process without uv_build)."""
        return [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rP",
            *(["--uv-build"] if uv_build else []),
            f"--uv-cache-dir={cache}",
            *args,
        ]

    def run(
        self,
        project: Path,
        cache: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
        preexec_fn: Callable[[], None] | None = None,
        uv_build: bool = True,
    ) -> Session:
        """Run one session in ``project`` and wait for it."""
        proc = self.start(project, cache, *args, env=env, preexec_fn=preexec_fn, uv_build=uv_build)
        try:
            output = proc.communicate(timeout=timeout)[0]
        finally:
            kill_group(proc.pid)
        return Session(self.command(cache, *args, uv_build=uv_build), proc.returncode, output)

    def start(
        self,
        project: Path,
        cache: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        uv_build: bool = True,
    ) -> subprocess.Popen[str]:
        """Start a session in its own process group, its output in a pipe."""
        return subprocess.Popen(
            self.command(cache, *args, uv_build=uv_build),
            cwd=project,
            env=self.environ(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - only the harness thread spawns
        )

    def kill_at(
        self,
        project: Path,
        cache: Path,
        stop: Stop,
        *args: str,
        env: Mapping[str, str] | None = None,
    ) -> tuple[bool, int]:
        """Run a session until ``stop`` and SIGKILL it; return (reached, process group id).

        ``reached`` is false when the session ended before the moment came,
        which means the scenario did not happen: the caller counts that as a
        failed trial, never as a pass.
        """
        mark = self.root / f"mark-{time.monotonic_ns()}"
        extra = {
            **(env or {}),
            "RELIABILITY_STOP": stop.pattern,
            "RELIABILITY_STOP_WHEN": stop.when,
            "RELIABILITY_MARK": str(mark),
        }
        proc = subprocess.Popen(
            self.command(cache, *args),
            cwd=project,
            env=self.environ(extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        reached = False
        while time.monotonic() < deadline:
            if mark.exists():
                reached = True
                break
            if proc.poll() is not None:
                break
            time.sleep(0.0005)
        if reached and stop.delay:
            time.sleep(stop.delay)
        with contextlib.suppress(ProcessLookupError):
            if stop.group or not reached:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return reached, proc.pid

    def calls(self, tool: str = "uv", command: str | None = None) -> list[tuple[str, str]]:
        """Logged (UV_PROJECT_ENVIRONMENT, arguments) of one tool, optionally one sub-command."""
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            name, project_env, args = [*line.split("\t", 2), "", ""][:3]
            if name == tool and (command is None or args.split(" ", 1)[0] == command):
                found.append((project_env, args))
        return found


def reap_group(pgid: int, timeout: float = 60) -> None:
    """Wait for what is left of a killed session's process group to end, then kill the rest."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a process group at once."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# -- snapshots: was a directory tree left exactly as it was? -----------------


#: Files whose mtime is a "last used" stamp, refreshed whenever a session uses
#: the env (``cache prune --older-than`` reads it): their bytes must not change.
USE_STAMPS = frozenset({"pytest-uvbuild.json", "layer.json"})


def snapshot(root: Path, *, ignore: Sequence[str] = ()) -> dict[str, tuple[int, int, str]]:
    """Map each path under ``root`` to (mode, mtime_ns, sha256 or link target or '').

    Top-level entries named in ``ignore`` are skipped (coordination files
    such as lock files, which every run may touch by design), and so is the
    mtime of directories and of :data:`USE_STAMPS`.
    """
    found: dict[str, tuple[int, int, str]] = {}
    if not root.exists():
        return found
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d not in ignore]
        names = [*dirs, *(f for f in files if rel_dir != "." or f not in ignore)]
        for name in names:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content = "-> " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    content = hashlib.sha256(fh.read()).hexdigest()
            else:
                content = ""
            stamped = stat.S_ISDIR(st.st_mode) or name in USE_STAMPS
            found[os.path.normpath(os.path.join(rel_dir, name))] = (
                stat.S_IMODE(st.st_mode),
                0 if stamped else st.st_mtime_ns,
                content,
            )
    return found


def snapshot_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Say which paths appeared, disappeared or changed between two snapshots."""
    said = [f"new {p}" for p in sorted(set(after) - set(before))]
    said += [f"gone {p}" for p in sorted(set(before) - set(after))]
    said += [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return said


@contextlib.contextmanager
def read_only_tree(root: Path) -> Iterator[str]:
    """Make ``root`` really read-only for this process, even as root; yield how.

    Not root: remove the write bits (the kernel then refuses with EACCES).
    Root ignores those bits, so there the immutable attribute is set with
    ``chattr +i`` (EPERM even for root, given CAP_LINUX_IMMUTABLE and a file
    system that supports it). If neither works, the caller is told and must
    use another simulation.
    """
    if os.geteuid() != 0:
        modes = {}
        for dirpath, dirs, files in os.walk(root):
            for name in [".", *dirs, *files]:
                path = os.path.normpath(os.path.join(dirpath, name))
                if not os.path.islink(path):
                    modes[path] = os.stat(path).st_mode
                    os.chmod(path, stat.S_IMODE(modes[path]) & ~0o222)
        try:
            yield "write permission removed (chmod a-w)"
        finally:
            for path, mode in modes.items():
                os.chmod(path, stat.S_IMODE(mode))
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        raise RuntimeError("running as root without chattr: cannot make a tree read-only")
    done = subprocess.run([chattr, "-R", "-f", "+i", str(root)], capture_output=True, check=False)
    try:
        probe = root / ".rw-probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            raise RuntimeError(
                f"chattr +i did not make {root} read-only (exit {done.returncode}); "
                "this file system or container does not support the immutable attribute"
            )
        yield "immutable attribute set (chattr -R +i): writes fail with EPERM even for root"
    finally:
        subprocess.run([chattr, "-R", "-f", "-i", str(root)], capture_output=True, check=False)


def limited_file_size(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps the size of any file the session (and uv) may write.

    RLIMIT_FSIZE makes every write past ``limit`` bytes fail, which is what
    a full disk looks like to a program (Python sees EFBIG; a child that does
    not ignore SIGXFSZ, such as uv, is stopped by that signal).
    """

    def apply() -> None:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    return apply


def world_writable(root: Path) -> list[str]:
    """Files and directories under ``root`` that anyone may write (symlinks excluded)."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & stat.S_IWOTH:
                found.append(os.path.relpath(path, root))
    return sorted(set(found))


def grep_tree(root: Path, needles: Sequence[str]) -> list[str]:
    """Files under ``root`` whose bytes contain any needle, with the needle found."""
    hits = []
    encoded = [(n, n.encode()) for n in needles]
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            hits += [f"{os.path.relpath(path, root)}: {n}" for n, b in encoded if b in data]
    return hits


def dedent(text: str) -> str:
    """``textwrap.dedent`` for test sources written inline."""
    return textwrap.dedent(text).lstrip("\n")
