"""Unit tests for the outer side's pieces (``pytest_uvbuild.runner``)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_uvbuild import runner as runner_module
from pytest_uvbuild.runner import (
    DEFAULT_SOURCE_DATE_EPOCH,
    HermeticRunner,
    Launch,
    _collection_args,
    _covers,
    describe_exit,
    deserialise,
    forwarded_options,
    scrubbed_environ,
)


def _env(tmp_path: Path, layer: tuple[Path, ...] = ()) -> SimpleNamespace:
    return SimpleNamespace(path=tmp_path / "env", bin_dir=tmp_path / "env" / "bin", layer=layer)


def test_scrubbed_environ_keeps_only_the_allow_list(tmp_path: Path) -> None:
    """Secrets, PYTHONPATH, UV_/PIP_ settings go; PATH, locale, passenv and env= stay."""
    source = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TERM": "xterm",
        "CI": "true",
        "GITHUB_TOKEN": "secret",
        "PYTHONPATH": "/outer",
        "PYTHONSTARTUP": "/x.py",
        "PYTHONUSERBASE": "/u",
        "VIRTUAL_ENV": "/outer-venv",
        "UV_INDEX_URL": "https://x",
        "PIP_INDEX_URL": "https://y",
        "HOME": "/root",
        "MYAPP_KEY": "k",
    }
    layer = (tmp_path / "layer",)
    env = scrubbed_environ(
        _env(tmp_path, layer),  # type: ignore[arg-type]
        home=tmp_path / "home",
        passenv=["MYAPP_*"],
        extra={"EXTRA": "1"},
        source=source,
    )
    assert env["PATH"] == f"{tmp_path / 'env' / 'bin'}:/usr/bin"
    assert env["CI"] == "true"
    assert env["VIRTUAL_ENV"] == str(tmp_path / "env")
    assert env["PYTHONPATH"] == str(tmp_path / "layer")
    assert env["HOME"] == str(tmp_path / "home")
    assert env["TZ"] == "UTC"
    assert env["PYTHONHASHSEED"] == "0"
    assert env["SOURCE_DATE_EPOCH"] == DEFAULT_SOURCE_DATE_EPOCH
    assert env["PYTHONNOUSERSITE"] == "1"
    assert env["MYAPP_KEY"] == "k"
    assert env["EXTRA"] == "1"
    assert env["LANG"] == "C.UTF-8"
    assert env["LC_ALL"] == "C"
    for gone in (
        "GITHUB_TOKEN",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "UV_INDEX_URL",
        "PIP_INDEX_URL",
    ):
        assert gone not in env


def test_user_settings_of_seed_and_epoch_win(tmp_path: Path) -> None:
    """The user's PYTHONHASHSEED and SOURCE_DATE_EPOCH pass; without a layer, no PYTHONPATH."""
    env = scrubbed_environ(
        _env(tmp_path),  # type: ignore[arg-type]
        home=tmp_path,
        source={"PYTHONHASHSEED": "123", "SOURCE_DATE_EPOCH": "42", "PYTHONPATH": "/x"},
    )
    assert env["PYTHONHASHSEED"] == "123"
    assert env["SOURCE_DATE_EPOCH"] == "42"
    assert "PYTHONPATH" not in env


def test_describe_exit_names_status_and_signal() -> None:
    """Exit codes read as a status, negative ones as the signal's name."""
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(-signal.SIGSEGV) == "was killed by signal 11 (SIGSEGV)"
    assert describe_exit(None) == "did not exit"


def test_collection_args_are_unique_files_under_the_rootdir(tmp_path: Path) -> None:
    """Node ids become the files that hold them, each once, in first-seen order."""
    ids = ["b.py::t[a::b]", "a/x.py::C::t", "b.py::u"]
    assert _collection_args(tmp_path, ids) == [str(tmp_path / "b.py"), str(tmp_path / "a/x.py")]


def test_covers_matches_collectors_and_their_children() -> None:
    """A failed collector explains missing tests below it, not next to it."""
    assert _covers("t.py", "t.py::test_x")
    assert _covers("pkg", "pkg/t.py::test_x")
    assert _covers("", "t.py::test_x")
    assert not _covers("t.py", "t2.py::test_x")


def test_forwarded_options_leave_outer_bookkeeping_out(pytester: pytest.Pytester) -> None:
    """Run-shaping options are forwarded; junitxml, -x, -k, --lf and xdist are not."""
    pytester.makeini("[pytest]\n")
    config = pytester.parseconfigure(
        "-x",
        "-k",
        "foo",
        "--lf",
        "--junitxml=out.xml",
        "-W",
        "error",
        "-o",
        "foo=bar",
        "--tb=short",
        "-l",
        "-vv",
        "--import-mode=importlib",
        "-p",
        "no:randomly",
    )
    args = forwarded_options(config, scratch=pytester.path)
    assert f"--rootdir={config.rootpath}" in args
    assert args[args.index("-c") : args.index("-c") + 2] == ["-c", str(config.inipath)]
    for expected in ("--tb=short", "--showlocals", "-vv", "--import-mode=importlib"):
        assert expected in args
    assert args[args.index("-W") : args.index("-W") + 2] == ["-W", "error"]
    assert "foo=bar" in args
    assert "no:randomly" in args
    joined = " ".join(args)
    for outer_only in ("--junitxml", "-x", "foo ", "--lf", "-k"):
        assert outer_only not in joined.split()


def test_deserialise_restores_tuples(pytester: pytest.Pytester) -> None:
    """JSON lists come back as the tuples pytest's terminal and junitxml expect."""
    config = pytester.parseconfigure()
    report = pytest.TestReport(
        nodeid="t.py::test_x",
        location=("t.py", 1, "test_x"),
        keywords={},
        outcome="skipped",
        longrepr=("t.py", 2, "Skipped: no"),
        when="call",
        sections=[("Captured stdout call", "hi")],
        user_properties=[("k", "v")],
    )
    data = config.hook.pytest_report_to_serializable(config=config, report=report)
    rebuilt = deserialise(config, json.loads(json.dumps(data)))
    assert rebuilt.longrepr == ("t.py", 2, "Skipped: no")
    assert rebuilt.location == ("t.py", 1, "test_x")
    assert rebuilt.sections == [("Captured stdout call", "hi")]
    assert rebuilt.user_properties == [("k", "v")]


#: Stands in for a worker whose inner session never ends: it says one
#: warning, then keeps its event pipe open and sleeps.
NEVER_ENDING_WORKER = """
import json, os, sys, time
with open(sys.argv[-1]) as fh:
    boot = json.load(fh)
warning = {"message": "said while ending", "category": "UserWarning", "module": "builtins",
           "filename": "conftest.py", "lineno": 1, "when": "runtest", "nodeid": ""}
os.write(boot["event_fd"], json.dumps(["warning", warning]).encode() + b"\\n")
time.sleep(600)
"""


def test_take_last_words_gives_up_on_a_worker_that_never_ends(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose session never ends keeps the session only until the timeout; reap kills it."""
    python = pytester.path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -c '{NEVER_ENDING_WORKER}' \"$@\"\n")
    python.chmod(0o755)
    launch = Launch(python=python, environ={}, cwd=pytester.path, options=(), label="t")
    config = pytester.parseconfigure()
    recorded: list[str] = []

    class Recorder:
        def pytest_warning_recorded(self, warning_message: warnings.WarningMessage) -> None:
            recorded.append(str(warning_message.message))

    config.pluginmanager.register(Recorder())
    runner = HermeticRunner(config, scratch=pytester.path, forward_collection_warnings=True)
    batch = runner.batch("k", lambda: launch, members=(), no_network=(), preplanned=True)
    worker = batch.worker = runner.spawn(launch)
    try:
        runner.stop()
        assert runner.ending == [(batch, worker)]
        # In a thread: were the limit ignored, the test fails instead of hanging.
        ending = threading.Thread(target=runner.take_last_words, args=(0.5,), daemon=True)
        ending.start()
        ending.join(60)
        assert not ending.is_alive()
        assert recorded == ["said while ending"]
        assert runner.ending == []
        assert worker.process.poll() is None

        monkeypatch.setattr(runner_module, "STOP_GRACE_SECONDS", 0.1)
        runner.reap()
        assert worker.process.returncode == -signal.SIGKILL
    finally:
        worker.kill()
