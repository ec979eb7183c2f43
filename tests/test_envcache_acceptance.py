"""Acceptance tests for ``--uv-build`` and the env cache, run as a user would run pytest."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import toys

from conftest import MakeProject

#: Packages a locked env of pytest has in addition before Python 3.11
#: (exceptiongroup, tomli, typing-extensions).
BACKPORTED = 3 if sys.version_info < (3, 11) else 0

ENV_TEST = """
import subprocess

def test_env(uv_env):
    out = uv_env.run(
        ["python", "-c", "import sys, toyalpha, demo; print(sys.version_info[:2], demo.WHERE)"],
        capture_output=True, text=True, check=True,
    )
    print("INSIDE", uv_env.key, out.stdout.strip())
"""


def _output(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def _envs(cache: Path) -> list[str]:
    try:
        return sorted(os.listdir(cache / "envs"))
    except OSError:
        return []


def _left_behind(cache: Path) -> list[str]:
    """Envs and project layers in the cache (a failed session must leave none)."""
    found = []
    for sub in ("envs", "layers"):
        with contextlib.suppress(OSError):
            found += [f"{sub}/{name}" for name in os.listdir(cache / sub)]
    return sorted(found)


def _inside(result: pytest.RunResult) -> str:
    """What the test printed from inside the env (the INSIDE line)."""
    for line in result.stdout.lines:
        if "INSIDE " in line:
            return line[line.index("INSIDE ") :]
    raise AssertionError(f"no INSIDE line in:\n{result.stdout.str()}")


def test_cold_warm_and_rebuild(uv_pytester: pytest.Pytester, tmp_path: Path) -> None:
    """A cold session builds and says why, a warm one reuses the env, --uv-rebuild replaces it."""
    uv_pytester.makepyfile(test_env=ENV_TEST)
    cache = tmp_path / "cache"
    first = uv_pytester.runpytest_subprocess("--uv-build", f"--uv-cache-dir={cache}", "-s")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(
        [
            "uv-build: building env * for * with CPython *, groups dev; extras none, "
            "install wheel: first build for this project in this cache",
            "*INSIDE * (3, *) wheel-or-source",
            "*= uv-build =*",
            "env * miss (first build for this project in this cache) in * ms: */envs/*",
        ]
    )
    assert sum("uv-build: building" in line for line in first.stdout.lines) == 1
    second = uv_pytester.runpytest_subprocess("--uv-build", f"--uv-cache-dir={cache}", "-s")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(
        # Seven packages, and three more (pytest's backports) before Python 3.11.
        [f"env * hit in * ms: */envs/* [[]CPython *, {BACKPORTED + 7} packages, install wheel]"]
    )
    assert "building" not in second.stdout.str()
    third = uv_pytester.runpytest_subprocess(
        "--uv-build", f"--uv-cache-dir={cache}", "--uv-rebuild"
    )
    third.assert_outcomes(passed=1)
    third.stdout.fnmatch_lines(
        ["uv-build: building env *: --uv-rebuild was given", "env * miss (--uv-rebuild was given)*"]
    )
    assert len(_envs(cache)) == 1


# -- every user error: exit status 4, one message naming the fix, no traceback, no env left --


@pytest.fixture(scope="module")
def served_project(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Path:
    """A project locked against the wheelhouse served over loopback HTTP; the server then stops.

    Its wheels are then only reachable through uv's cache, which the tests
    keep cold: offline, uv has nothing; online, the index is unreachable.
    """
    try:
        return toys.write_served_project(tmp_path_factory.mktemp("served"), wheelhouse)
    except toys.UvFailed as exc:
        pytest.fail(str(exc), pytrace=False)


def _broken_uv(tmp_path: Path) -> Path:
    script = tmp_path / "broken-uv"
    script.write_text("#!/bin/sh\necho 'uv: cannot start' >&2\nexit 1\n")
    script.chmod(0o755)
    return script


def _setup_no_project(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    return []


def _setup_no_lock(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path, lock=False)
    return []


def _setup_garbage_lock(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    (p.path / "uv.lock").write_text("garbage [[[\n")
    return []


def _setup_future_lock(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    lock = p.path / "uv.lock"
    lock.write_text(lock.read_text().replace("version = 1\n", "version = 99\n", 1))
    return []


def _setup_stale_lock(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    pyproject = p.path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("toyalpha==1.0", "toybeta==1.0"))
    return []


def _setup_missing_python(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    return ["--uv-python=3.14"]


def _setup_unknown_group(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    return ["--uv-group=nope"]


def _setup_unknown_extra(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path, extras={"fast": ["toygamma"]})
    return ["--uv-extra=nope"]


def _setup_only_group_with_extra(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path, extras={"fast": ["toygamma"]})
    return ["--uv-only-group=dev", "--uv-extra=fast"]


def _setup_workspace_member(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path / "packages" / "member", name="member", with_pytest=False, lock=False)
    make_project(
        p.path,
        dependencies=["member"],
        extra_toml='[tool.uv.workspace]\nmembers = ["packages/*"]\n'
        "[tool.uv.sources]\nmember = { workspace = true }\n",
    )
    return [f"--uv-project={p.path / 'packages' / 'member'}"]


def _setup_uv_missing(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    os.environ["PYTEST_UVBUILD_UV"] = str(p.path / "no-such-uv")
    return []


def _setup_uv_broken(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    os.environ["PYTEST_UVBUILD_UV"] = str(_broken_uv(p.path))
    return []


def _setup_unwritable_cache(p: pytest.Pytester, make_project: MakeProject) -> list[str]:
    make_project(p.path)
    # Root ignores permission bits; a path below a regular file fails for everyone.
    (p.path / "a-file").write_text("")
    return [f"--uv-cache-dir={p.path / 'a-file' / 'cache'}"]


USER_ERRORS: dict[str, tuple[Callable[[pytest.Pytester, MakeProject], list[str]], list[str]]] = {
    "no-project": (_setup_no_project, ["No uv project", "Fix: run pytest inside a uv project"]),
    "lock-missing": (_setup_no_lock, ["has no uv.lock", "Fix: run `uv lock`"]),
    "lock-garbage": (_setup_garbage_lock, ["uv.lock cannot be parsed", "`uv lock`"]),
    "lock-future": (_setup_future_lock, ["unsupported schema version (v99", "upgrade uv"]),
    "lock-stale": (_setup_stale_lock, ["uv.lock is out of date", "Fix: run `uv lock`"]),
    "python-missing": (
        _setup_missing_python,
        ["No Python interpreter matching '3.14'", "Found: ", "3.12.", "Fix: install that Python"],
    ),
    "unknown-group": (_setup_unknown_group, ["Unknown dependency group(s) nope", "Defined: dev"]),
    "unknown-extra": (_setup_unknown_extra, ["Unknown extra(s) nope", "Defined: fast"]),
    "only-group-with-extra": (
        _setup_only_group_with_extra,
        [
            "--uv-only-group dev installs only those groups",
            "cannot be combined with --uv-group, --uv-extra",
        ],
    ),
    "workspace-member": (
        _setup_workspace_member,
        ["is a member of the uv workspace at", "Fix: pass --uv-project="],
    ),
    "uv-missing": (_setup_uv_missing, ["PYTEST_UVBUILD_UV points at", "Fix: unset"]),
    "uv-broken": (_setup_uv_broken, ["does not run (`uv --version` exited 1)", "Fix: point"]),
    "cache-unwritable": (
        _setup_unwritable_cache,
        ["is not writable (Not a directory)", "Fix: pass --uv-cache-dir"],
    ),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_are_one_clear_usage_error(
    case: str,
    pytester: pytest.Pytester,
    make_project: MakeProject,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each error exits with status 4 and one message naming the fix; no env is left behind."""
    setup, expected = USER_ERRORS[case]
    monkeypatch.setenv("PYTEST_UVBUILD_UV", "")
    args = setup(pytester, make_project)
    cache = tmp_path / "env-cache"
    if not any(a.startswith("--uv-cache-dir") for a in args):
        args.append(f"--uv-cache-dir={cache}")
    pytester.makepyfile(test_x="def test_x(uv_env): pass")
    result = pytester.runpytest_subprocess("--uv-build", *args)
    output = _output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    for text in [*expected, "Fix: "]:
        assert text in output
    assert "Traceback" not in output
    assert _left_behind(cache) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--uv-offline"],
            [
                "needs packages that are not in uv's cache, and offline mode is on",
                "Network connectivity is disabled",
                "Fix: run once without --uv-offline",
            ],
        ),
        ([], ["could not reach the package index", "Connection refused", "Fix: check the network"]),
    ],
    ids=["offline-cold-cache", "registry-unreachable"],
)
def test_network_errors(
    args: list[str],
    expected: list[str],
    served_project: Path,
    pytester: pytest.Pytester,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offline with a cold uv cache, or an unreachable index, is one clear usage error."""
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "cold-uv-cache"))
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    cache = tmp_path / "env-cache"
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess(
        "--uv-build", f"--uv-project={served_project}", f"--uv-cache-dir={cache}", *args
    )
    output = _output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output
    for text in expected:
        assert text in output
    assert "Traceback" not in output
    assert _left_behind(cache) == []


def test_python_downloads_are_opt_in(
    uv_pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing Python is never downloaded by default; with the opt-in, uv is asked to."""
    wrapper, log = toys.logging_uv(tmp_path / "bin")
    monkeypatch.setenv("PYTEST_UVBUILD_UV", str(wrapper))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "pythons"))
    uv_pytester.makepyfile(test_x="def test_x(): pass")
    cache = f"--uv-cache-dir={tmp_path / 'cache'}"
    default = uv_pytester.runpytest_subprocess("--uv-build", cache, "--uv-python=3.14")
    assert default.ret == pytest.ExitCode.USAGE_ERROR
    assert "--uv-python-downloads=automatic" in _output(default)
    assert toys.uv_calls(log, "python") == []
    # Opted in, uv tries; offline (this machine cannot reach python.org) it fails cleanly.
    opted = uv_pytester.runpytest_subprocess(
        "--uv-build", cache, "--uv-python=3.14", "--uv-python-downloads=automatic", "--uv-offline"
    )
    output = _output(opted)
    assert opted.ret == pytest.ExitCode.USAGE_ERROR, output
    assert "uv could not download one" in output
    assert "Network connectivity is disabled" in output
    assert "Traceback" not in output
    assert toys.uv_calls(log, "python") == ["python install --offline 3.14"]


# -- python selection --------------------------------------------------------


@pytest.mark.parametrize("how", ["option", "path", "python-version-file", "requires-python"])
def test_python_selection(
    how: str,
    pytester: pytest.Pytester,
    make_project: MakeProject,
    pyenv_python: Callable[[str], Path],
) -> None:
    """--uv-python (version or path), .python-version and requires-python pick a real 3.12+."""
    real = pyenv_python("3.12")
    pyenv_python("3.13")
    args: list[str] = []
    if how == "requires-python":
        make_project(pytester.path, requires_python=">=3.12", lock=False)
        toys.run_uv("lock", "--offline", "--python", str(real), cwd=pytester.path)
    else:
        make_project(pytester.path)
    if how == "option":
        args = ["--uv-python=3.12"]
    elif how == "path":
        args = [f"--uv-python={real}"]
    elif how == "python-version-file":
        (pytester.path / ".python-version").write_text("3.12\n")
    pytester.makepyfile(test_env=ENV_TEST)
    result = pytester.runpytest_subprocess("--uv-build", "-s", *args)
    result.assert_outcomes(passed=1)
    minor = "12" if how != "requires-python" else "1[23]"
    result.stdout.fnmatch_lines([f"uv-build: env * (CPython 3.{minor}.*)*"])
    inside = _inside(result)
    assert "(3, 12)" in inside or (how == "requires-python" and "(3, 13)" in inside)
    assert "shims" not in result.stdout.str()


# -- install modes -------------------------------------------------------------


def test_wheel_mode_is_never_stale_and_checkouts_share_the_env(
    uv_pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Edits under src/ show up next session; another checkout reuses the env with its own code."""
    uv_pytester.makepyfile(test_env=ENV_TEST)
    cache = f"--uv-cache-dir={tmp_path / 'cache'}"
    first = uv_pytester.runpytest_subprocess("--uv-build", "-s", cache)
    first.assert_outcomes(passed=1)
    assert _inside(first).endswith("wheel-or-source")
    key = _inside(first).split()[1]
    other = Path(shutil.copytree(uv_pytester.path, tmp_path / "checkout2", symlinks=True))
    (other / "src" / "demo" / "__init__.py").write_text('WHERE = "checkout2"\n')
    proc = subprocess.run(
        _session_cmd(cache, "-s"), cwd=other, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"env {key} hit" in proc.stdout
    (inside,) = [ln[ln.index("INSIDE ") :] for ln in proc.stdout.splitlines() if "INSIDE " in ln]
    assert inside.split()[1] == key
    assert inside.endswith("checkout2")
    (uv_pytester.path / "src" / "demo" / "__init__.py").write_text('WHERE = "edited"\n')
    third = uv_pytester.runpytest_subprocess("--uv-build", "-s", cache)
    third.assert_outcomes(passed=1)
    assert _inside(third).split()[1] == key
    assert _inside(third).endswith("edited")
    third.stdout.fnmatch_lines(["uv-build: building project layer * (demo): local sources changed"])
    assert f"env {key} hit" in third.stdout.str()


def test_ini_options_and_source_mode(uv_pytester: pytest.Pytester, tmp_path: Path) -> None:
    """`uv_build = true` and `uv_install_project = source` in the ini work like the options."""
    uv_pytester.makeini(
        f"[pytest]\nuv_build = true\nuv_install_project = source\n"
        f"uv_cache_dir = {tmp_path / 'cache'}\n"
    )
    uv_pytester.makepyfile(
        test_env=ENV_TEST
        + "\n\ndef test_path(uv_env):\n    assert uv_env.layer == (uv_env.project.root / 'src',)\n"
    )
    result = uv_pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["uv-build: env * (CPython *) at *", "env * miss *install source]"])


def test_path_dependency_edits_are_never_stale(
    pytester: pytest.Pytester, make_project: MakeProject, tmp_path: Path
) -> None:
    """Editing a path dependency between sessions shows up, with the same key and env."""
    dep = make_project(tmp_path / "dep", name="dep", with_pytest=False, lock=False)
    make_project(
        pytester.path,
        dependencies=["toyalpha==1.0", "dep"],
        extra_toml='[tool.uv.sources]\ndep = { path = "../dep" }\n'.replace("../dep", str(dep)),
    )
    pytester.makepyfile(
        test_dep="""
        def test_dep(uv_env):
            out = uv_env.run(["python", "-c", "import dep; print(dep.WHERE)"],
                             capture_output=True, text=True, check=True)
            print("INSIDE", uv_env.key, uv_env.path.stat().st_mtime_ns, out.stdout.strip())
        """
    )
    first = pytester.runpytest_subprocess("--uv-build", "-s")
    first.assert_outcomes(passed=1)
    (dep / "src" / "dep" / "__init__.py").write_text('WHERE = "dep v2"\n')
    second = pytester.runpytest_subprocess("--uv-build", "-s")
    second.assert_outcomes(passed=1)
    key1, mtime1, *_ = _inside(first).split()[1:]
    key2, mtime2, *rest = _inside(second).split()[1:]
    assert (key1, mtime1) == (key2, mtime2)
    assert rest == ["dep", "v2"]


# -- concurrency, crashes, xdist -------------------------------------------------


def _session_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--uv-build", *args]


@pytest.mark.slow
def test_concurrent_sessions_build_once(
    uv_pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four pytest processes started together on a cold cache run `uv sync` exactly once."""
    # The build lasts long enough for the other three, slow to start on a
    # busy machine, to find it under way and wait (and say so).
    wrapper, log = toys.logging_uv(tmp_path / "bin", before_sync="sleep 2")
    monkeypatch.setenv("PYTEST_UVBUILD_UV", str(wrapper))
    uv_pytester.makepyfile(test_env=ENV_TEST)
    cache = f"--uv-cache-dir={tmp_path / 'cache'}"
    procs = [
        subprocess.Popen(
            _session_cmd(cache, "-s"),
            cwd=uv_pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert len(toys.uv_calls(log, "sync")) == 1
    keys = {
        line.split()[1] for out in outputs for line in out.splitlines() if line.startswith("INSIDE")
    }
    assert len(keys) == 1
    assert sum("miss" in out for out in outputs) == 1
    assert sum("waiting for another process" in out for out in outputs) >= 1


@pytest.mark.slow
def test_killed_build_is_rebuilt_cleanly(
    uv_pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session killed while uv sync runs leaves nothing trusted; the next one rebuilds."""
    started = tmp_path / "sync-started"
    wrapper, log = toys.logging_uv(tmp_path / "bin", after_sync=f'touch "{started}"; sleep 60')
    monkeypatch.setenv("PYTEST_UVBUILD_UV", str(wrapper))
    uv_pytester.makepyfile(test_env=ENV_TEST)
    cache = tmp_path / "cache"
    victim = subprocess.Popen(
        _session_cmd(f"--uv-cache-dir={cache}"),
        cwd=uv_pytester.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not started.exists():
        assert victim.poll() is None, "the session ended before uv sync ran"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    (env,) = _envs(cache)
    assert (cache / "envs" / env / "bin" / "python").exists()
    assert not (cache / "envs" / env / "pytest-uvbuild.json").exists()
    monkeypatch.delenv("PYTEST_UVBUILD_UV")
    result = uv_pytester.runpytest_subprocess("--uv-build", f"--uv-cache-dir={cache}", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["uv-build: building env *: the cached env is incomplete*"])
    assert (cache / "envs" / env / "pytest-uvbuild.json").exists()
    assert len(toys.uv_calls(log, "sync")) == 1


def test_xdist_workers_share_one_env_built_once(
    uv_pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With -n 2 the controller builds (even with --uv-rebuild) once; both workers get that env."""
    pytest.importorskip("xdist")
    wrapper, log = toys.logging_uv(tmp_path / "bin")
    monkeypatch.setenv("PYTEST_UVBUILD_UV", str(wrapper))
    uv_pytester.makepyfile(
        test_a="""
        import os
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_env(uv_env, n):
            print("INSIDE", os.environ["PYTEST_XDIST_WORKER"], uv_env.key, uv_env.path)
        """
    )
    result = uv_pytester.runpytest_subprocess(
        "--uv-build",
        "--uv-rebuild",
        "-n",
        "2",
        "-p",
        "xdist",
        "-rP",
        f"--uv-cache-dir={tmp_path / 'cache'}",
    )
    result.assert_outcomes(passed=4)
    seen = {
        tuple(line[line.index("INSIDE ") :].split()[1:])
        for line in result.stdout.lines
        if "INSIDE " in line
    }
    assert {s[0] for s in seen} == {"gw0", "gw1"}
    assert len({s[1:] for s in seen}) == 1
    assert len(toys.uv_calls(log, "sync")) == 1
    assert sum("uv-build: building env" in line for line in result.stdout.lines) == 1
