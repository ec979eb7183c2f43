"""The worker on the oldest and newest Python and pytest it supports.

``worker.py`` is run by path, exactly as the runner does, in two throwaway
venvs: Python 3.8 with pytest 7.4.4, and Python 3.13 with the newest pytest
(the one this dev env has), started fresh and forked by a warm zygote
(``zygote.py``, which must run there too). Its events are read with the runner's own
:class:`~pytest_uvbuild.runner.WorkerProcess` and its reports rebuilt by this
pytest's ``pytest_report_from_serializable``.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import toys
from filelock import FileLock

from pytest_uvbuild import prewarm
from pytest_uvbuild.runner import Launch, WorkerGone, WorkerProcess, deserialise

PYENV = Path("/root/.pyenv/versions")
OLDEST = ("3.8", "pytest==7.4.4")


def _interpreter(version: str) -> Path:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no pyenv Python {version} on this machine")
    return found[-1]


def _wheels_for_python38(pytestconfig: pytest.Config) -> Path:
    """pytest 7.4.4 and its Python 3.8 dependencies, downloaded once into .pytest_cache."""
    assert pytestconfig.cache is not None
    house = pytestconfig.cache.mkdir("uvbuild-wheels-py38-pytest7")
    with FileLock(f"{house}.lock"):
        toys.fetch_registry_wheels(
            house,
            # pip judges environment markers by the running Python, so the
            # Python < 3.11 back-ports are asked for by name.
            [OLDEST[1], "exceptiongroup", "tomli"],
            python_version="3.8",
            with_dependencies=True,
        )
    return house


def _venv(root: Path, python: Path, wheels: Path, requirement: str) -> Path:
    toys.run_uv("venv", "--quiet", "--python", str(python), str(root))
    env_python = root / "bin" / "python"
    toys.run_uv(
        "pip",
        "install",
        "--quiet",
        "--offline",
        "--no-index",
        "--find-links",
        str(wheels),
        "--python",
        str(env_python),
        requirement,
    )
    return env_python


@pytest.fixture(
    scope="module",
    params=["oldest", "newest"],
    ids=["py3.8-pytest7.4.4", "py3.13-newest-pytest"],
)
def worker_python(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    wheelhouse: Path,
    pytestconfig: pytest.Config,
) -> tuple[Path, str]:
    """A venv with the oldest or the newest supported Python and pytest."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "oldest":
        python = _venv(
            root / "venv", _interpreter("3.8"), _wheels_for_python38(pytestconfig), OLDEST[1]
        )
        return python, "7.4.4"
    python = _venv(root / "venv", _interpreter("3.13"), wheelhouse, f"pytest=={pytest.__version__}")
    return python, pytest.__version__


SUITE = """
import os, socket, sys
import pytest

def test_pass():
    print("hello")

def test_fail():
    assert [1, 2, 3] == [1, 2, 4]

def test_skip():
    pytest.skip("not here")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert 0

@pytest.mark.parametrize("x", ["ünï [x] y"])
def test_odd_id(x):
    assert x

def test_network():
    with pytest.raises(ConnectionRefusedError, match="network=False"):
        socket.create_connection(("0.0.0.0", 9))

def test_exits():
    os._exit(7)
"""


def _events(worker: WorkerProcess, until: str) -> Iterator[tuple[str, dict[str, Any]]]:
    deadline = time.time() + 60
    while True:
        event = worker.next_event(deadline)
        assert event is not None, "the worker went silent"
        yield event
        if event[0] == until:
            return


@pytest.mark.parametrize("warm", [False, True], ids=["spawned", "warm"])
def test_worker_runs_on_supported_python_and_pytest(
    worker_python: tuple[Path, str],
    pytester: pytest.Pytester,
    tmp_path: Path,
    short_tmpdir: Path,
    warm: bool,
) -> None:
    """The worker (spawned, or forked by a zygote) runs, streams reports, reports a crash."""
    python, pytest_version = worker_python
    pytester.makepyfile(test_suite=textwrap.dedent(SUITE))
    config = pytester.parseconfigure()
    launch = Launch(
        python=python,
        environ={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
        cwd=pytester.path,
        options=(f"--rootdir={pytester.path}", "-p", "no:cacheprovider"),
        label="compat",
        keep_warm=30.0 if warm else 0.0,
    )
    if warm:
        prewarm.leave_behind(launch.python, launch.environ, 30.0, patience=0.0)
        path = prewarm.socket_path(launch.python, launch.environ)
        assert path is not None
        assert toys.wait_until(path.exists, 30)
    ids = [
        "test_suite.py::test_pass",
        "test_suite.py::test_fail",
        "test_suite.py::test_skip",
        "test_suite.py::test_xfail",
        "test_suite.py::test_odd_id[\\xfcn\\xef [x] y]",
        "test_suite.py::test_network",
        "test_suite.py::test_gone",
        "test_suite.py::test_exits",
    ]
    worker = WorkerProcess(launch, scratch=tmp_path)
    assert isinstance(worker.process, prewarm.WarmChild) is warm
    worker.collect(
        collect=[str(pytester.path / "test_suite.py")],
        nodeids=ids,
        no_network=["test_suite.py::test_network"],
    )
    try:
        worker.send("run", nodeids=ids, end=True)
        events = list(_events(worker, until="missing"))
        ready = next(kwargs for name, kwargs in events if name == "ready")
        assert ready["pytest"] == pytest_version
        collected = next(kwargs for name, kwargs in events if name == "collected")
        assert collected["missing"] == ["test_suite.py::test_gone"]
        reports = [
            deserialise(config, kwargs["report"]) for name, kwargs in events if name == "logreport"
        ]
        outcomes = {(r.nodeid.split("::")[1], r.when): r.outcome for r in reports}
        assert outcomes[("test_pass", "call")] == "passed"
        assert outcomes[("test_fail", "call")] == "failed"
        assert outcomes[("test_skip", "call")] == "skipped"
        assert outcomes[("test_xfail", "call")] == "skipped"
        assert outcomes[("test_odd_id[\\xfcn\\xef [x] y]", "call")] == "passed"
        assert outcomes[("test_network", "call")] == "passed"
        failed = next(r for r in reports if r.nodeid.endswith("test_fail") and r.when == "call")
        assert "At index 2 diff: 3 != 4" in failed.longreprtext
        passed = next(r for r in reports if r.nodeid.endswith("test_pass") and r.when == "call")
        assert ("Captured stdout call", "hello\n") in passed.sections
        with pytest.raises(WorkerGone):
            list(_events(worker, until="never"))
        assert worker.process.wait(10) == 7
    finally:
        worker.stop()
