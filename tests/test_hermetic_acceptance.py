"""Acceptance tests for hermetic runs, driven as a user would (``runpytest_subprocess``).

The outer interpreter (this dev env) lacks ``toyalpha``; every test project's
lock has it. A test that imports ``toyalpha`` therefore passes only inside.
Most runs use ``--uv-install-project=source`` so that no project wheel is
built per test; the quickstart example covers the wheel layer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

HERMETIC = ("--uv-build", "--uv-install-project=source")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run an outer session with --uv-build in a subprocess."""
    return pytester.runpytest_subprocess(*HERMETIC, *args)


OUTCOMES = """
import logging
import sys
import warnings
import pytest

pytestmark = pytest.mark.hermetic

@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown exploded")

def test_pass(record_property):
    record_property("answer", "42")
    record_property("raw", b"\\xff")
    print("to stdout")
    print("to stderr", file=sys.stderr)
    logging.getLogger("demo").warning("a log line")

def test_fail():
    left = {"a": 1, "b": [1, 2, 3]}
    print("output of a failing test")
    assert left == {"a": 1, "b": [1, 2, 4]}

def test_error(broken):
    pass

def test_teardown_error(bad_teardown):
    pass

def test_warns():
    warnings.warn(UserWarning("careful"))
    warnings.warn(pytest.PytestWarning("pytest's own"))

def test_skip():
    pytest.skip("not today")

@pytest.mark.skipif(True, reason="static reason")
def test_skipif():
    pass

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0

@pytest.mark.xfail(reason="fixed already", strict=False)
def test_xpass():
    pass

@pytest.mark.xfail(reason="strictly fixed", strict=True)
def test_xpass_strict():
    pass

class TestGroup:
    @pytest.mark.parametrize("n", [1, 2])
    def test_param(self, n):
        assert n in (1, 2)
"""


def _terminal_lines(result: pytest.RunResult) -> list[str]:
    """The lines of a run that depend on test outcomes only."""
    keep = []
    skipping = False
    for line in result.outlines:
        if re.match(r"^=+ (uv-build|uv-build record) =+$", line):
            skipping = True
            continue
        if re.match(r"^=+ .* =+$", line):
            skipping = False
        if skipping or line.startswith(
            ("platform ", "rootdir:", "configfile:", "plugins:", "cachedir:", "uv-build:")
        ):
            continue
        if "generated xml file" in line:
            continue
        keep.append(re.sub(r" in [0-9.]+s", " in Xs", line))
    return keep


def _junit(path: Path) -> list[tuple[str, str, str, str]]:
    """Testcases of a junitxml file without times: (class, name, outcome tags, messages)."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314 - our own junitxml
        children = sorted(
            f"{child.tag}:{child.get('message', '')}:{(child.text or '').strip()[:400]}"
            for child in case
        )
        rows.append(
            (
                case.get("classname", ""),
                case.get("name", ""),
                case.get("file", ""),
                "|".join(children),
            )
        )
    return rows


def test_reports_match_an_in_process_run(uv_pytester: pytest.Pytester) -> None:
    """Terminal lines (-rA -v) and junitxml of a hermetic run equal those of an in-process run."""
    uv_pytester.makepyfile(test_outcomes=OUTCOMES)
    uv_pytester.makeini("[pytest]\njunit_logging = all\njunit_family = xunit1\n")
    plain = uv_pytester.runpytest_subprocess("-rA", "-v", "--junitxml=plain.xml")
    hermetic = run(uv_pytester, "-rA", "-v", "--junitxml=hermetic.xml")
    plain.assert_outcomes(passed=5, failed=2, errors=2, skipped=2, xfailed=1, xpassed=1, warnings=2)
    hermetic.assert_outcomes(
        passed=5, failed=2, errors=2, skipped=2, xfailed=1, xpassed=1, warnings=2
    )
    assert _terminal_lines(hermetic) == _terminal_lines(plain)
    assert _junit(uv_pytester.path / "hermetic.xml") == _junit(uv_pytester.path / "plain.xml")
    text = hermetic.stdout.str()
    # assertion rewriting's detail, captured output and the teardown error survive
    assert "Differing items:" in text
    assert "output of a failing test" in text
    assert "teardown exploded" in text
    assert 'name="answer" value="42"' in (uv_pytester.path / "hermetic.xml").read_text()


def _junit_without_times(path: Path) -> str:
    """A junitxml file as text, without the attributes that differ from run to run."""
    root = ET.parse(path).getroot()  # noqa: S314 - our own junitxml
    for element in root.iter():
        for name in ("time", "timestamp", "hostname"):
            element.attrib.pop(name, None)
    return ET.tostring(root, encoding="unicode")


def test_junitxml_records_made_inside_reach_the_outer_file(uv_pytester: pytest.Pytester) -> None:
    """record_testsuite_property, record_xml_attribute and xunit2's warnings work as in-process."""
    uv_pytester.makepyfile(
        test_records="""
        def test_suite_property(record_testsuite_property):
            record_testsuite_property("build", 7)

        def test_xml_attribute(record_xml_attribute):
            record_xml_attribute("assertions", "3")

        def test_property(record_property):
            record_property("answer", "42")
        """
    )
    for family in ("xunit1", "xunit2"):
        plain = uv_pytester.runpytest_subprocess(
            f"--junitxml={family}-plain.xml", "-o", f"junit_family={family}"
        )
        hermetic = run(
            uv_pytester,
            "--hermetic-all",
            f"--junitxml={family}-hermetic.xml",
            "-o",
            f"junit_family={family}",
        )
        hermetic.assert_outcomes(passed=3, warnings=1 if family == "xunit1" else 3)
        assert _terminal_lines(hermetic) == _terminal_lines(plain)
        written = _junit_without_times(uv_pytester.path / f"{family}-hermetic.xml")
        assert written == _junit_without_times(uv_pytester.path / f"{family}-plain.xml")
    written = _junit_without_times(uv_pytester.path / "xunit1-hermetic.xml")
    assert '<property name="build" value="7" />' in written
    assert 'assertions="3"' in written


def test_log_cli_level_gives_the_in_process_assertion_detail(uv_pytester: pytest.Pytester) -> None:
    """--log-cli-level makes pytest verbose inside too: a failed assertion shows its full diff."""
    uv_pytester.makepyfile(
        test_diff="""
        def test_dicts():
            assert {"a": 1, "b": 2} == {"a": 1, "b": 3}
        """
    )
    plain = uv_pytester.runpytest_subprocess("--log-cli-level=INFO")
    hermetic = run(uv_pytester, "--hermetic-all", "--log-cli-level=INFO")
    hermetic.assert_outcomes(failed=1)
    assert "Full diff" in plain.stdout.str()
    assert _terminal_lines(hermetic) == _terminal_lines(plain)


def test_tests_run_inside_the_lock_and_without_uv_build_in_process(
    uv_pytester: pytest.Pytester,
) -> None:
    """With --uv-build the body sees the lock's toyalpha; without it, the host (which lacks it)."""
    uv_pytester.makepyfile(
        test_where="""
        import importlib.util, sys
        import pytest

        @pytest.mark.hermetic
        def test_inside():
            import toyalpha
            assert toyalpha.__version__ == "1.0"

        @pytest.mark.hermetic
        def test_host_has_no_toyalpha():
            assert importlib.util.find_spec("toyalpha") is None
        """
    )
    inside = run(uv_pytester)
    inside.assert_outcomes(passed=1, failed=1)
    inside.stdout.fnmatch_lines(["FAILED test_where.py::test_host_has_no_toyalpha*"])
    outside = uv_pytester.runpytest_subprocess()
    outside.assert_outcomes(passed=1, failed=1)
    outside.stdout.fnmatch_lines(["FAILED test_where.py::test_inside*ModuleNotFoundError*"])


def test_crashes_and_timeouts_fail_only_their_test(uv_pytester: pytest.Pytester) -> None:
    """os._exit, a segfault, SIGKILL and a timeout each fail their test; the rest still run."""
    uv_pytester.makepyfile(
        test_crash="""
        import os, signal, sys, time
        import pytest

        pytestmark = pytest.mark.hermetic

        def test_before():
            pass

        def test_exit():
            print("printed before exiting")
            sys.stdout.flush()
            os._exit(3)

        def test_between():
            pass

        def test_segfault():
            import faulthandler
            print("printed before the segfault")
            faulthandler._sigsegv()

        def test_sigkill():
            os.kill(os.getpid(), signal.SIGKILL)

        @pytest.mark.hermetic(timeout=1)
        def test_timeout():
            print("waiting forever")
            time.sleep(60)

        def test_after():
            import toyalpha
        """
    )
    result = run(uv_pytester, "-v")
    result.assert_outcomes(passed=3, failed=4)
    result.stdout.fnmatch_lines(
        [
            "*test_before PASSED*",
            "*test_exit FAILED*",
            "*test_between PASSED*",
            "*test_segfault FAILED*",
            "*test_sigkill FAILED*",
            "*test_timeout FAILED*",
            "*test_after PASSED*",
        ]
    )
    text = result.stdout.str()
    assert "The hermetic worker running this test exited with status 3" in text
    assert "printed before exiting" in text
    assert "was killed by signal 11 (SIGSEGV)" in text
    assert "printed before the segfault" in text
    assert "Fatal Python error: Segmentation fault" in text
    assert "was killed by signal 9 (SIGKILL)" in text
    assert "ran longer than its timeout of 1 s" in text
    assert "waiting forever" in text
    assert "Current thread" in text  # the stack dump shows where it hung
    assert "in test_timeout" in text


def test_hermetic_all_imports_nothing_outside(uv_pytester: pytest.Pytester) -> None:
    """--hermetic-all collects inside: a conftest needing toyalpha works, and -k, -m, --lf apply."""
    uv_pytester.makeconftest(
        """
        import pytest
        import toyalpha  # only the lock has it

        def pytest_configure(config):
            config.addinivalue_line("markers", "slow: a slow test")

        @pytest.fixture
        def alpha():
            return toyalpha.__version__
        """
    )
    uv_pytester.makepyfile(
        test_all="""
        import pytest
        import toyalpha

        def test_one(alpha):
            assert alpha == "1.0"

        @pytest.mark.slow
        def test_two():
            assert toyalpha

        def test_three():
            assert False, "three fails"
        """
    )
    uv_pytester.makeini("[pytest]\naddopts = --strict-markers -ra\n")
    first = run(uv_pytester, "--hermetic-all", "-v")
    first.assert_outcomes(passed=2, failed=1)
    first.stdout.fnmatch_lines(
        [
            "collected 3 items",
            "test_all.py::test_one PASSED*",
            "FAILED test_all.py::test_three - AssertionError: three fails*",
        ]
    )
    by_k = run(uv_pytester, "--hermetic-all", "-k", "two or three")
    by_k.assert_outcomes(passed=1, failed=1, deselected=1)
    by_m = run(uv_pytester, "--hermetic-all", "-m", "slow")
    by_m.assert_outcomes(passed=1, deselected=2)
    last_failed = run(uv_pytester, "--hermetic-all", "--lf", "-v")
    last_failed.assert_outcomes(failed=1, deselected=2)
    last_failed.stdout.fnmatch_lines(["test_all.py::test_three FAILED*"])
    # Without --hermetic-all the conftest is imported here, and fails.
    outside = run(uv_pytester)
    assert outside.ret != 0
    assert "No module named 'toyalpha'" in outside.stdout.str() + outside.stderr.str()


def test_hermetic_all_stops_at_maxfail(uv_pytester: pytest.Pytester) -> None:
    """-x stops the outer session and the inner one cleanly (its teardown runs)."""
    marker = uv_pytester.path / "torn-down"
    uv_pytester.makeconftest(
        f"""
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def session_resource():
            yield
            open({str(marker)!r}, "w").close()
        """
    )
    uv_pytester.makepyfile(
        test_stop="""
        def test_a():
            assert False
        def test_b():
            pass
        def test_c():
            pass
        """
    )
    result = run(uv_pytester, "--hermetic-all", "-x")
    result.assert_outcomes(failed=1)
    assert marker.exists()


def test_xdist_workers_each_run_their_share(uv_pytester: pytest.Pytester) -> None:
    """Under -n 2 every hermetic test runs exactly once, inside, in few worker processes."""
    pid_dir = uv_pytester.mkdir("pids")
    uv_pytester.makepyfile(
        test_xd=f"""
        import os
        import pytest

        @pytest.mark.hermetic
        @pytest.mark.parametrize("n", range(20))
        def test_inside(n):
            import toyalpha
            with open(os.path.join({str(pid_dir)!r}, str(n)), "a") as fh:
                fh.write(f"{{os.getpid()}}\\n")

        def test_plain():
            pass
        """
    )
    result = run(uv_pytester, "-n", "2")
    result.assert_outcomes(passed=21)
    runs = [p.read_text().split() for p in pid_dir.iterdir()]
    assert len(runs) == 20
    assert all(len(pids) == 1 for pids in runs), runs  # each test ran exactly once
    assert 1 <= len({pids[0] for pids in runs}) <= 2
    # The controller counts the hermetic outcomes its workers report.
    (metadata,) = uv_pytester.path.glob("builds/*/metadata.json")
    assert json.loads(metadata.read_text())["run"]["hermetic"]["passed"] == 20


def test_python_matrix_with_a_missing_interpreter(uv_pytester: pytest.Pytester) -> None:
    """python=[...] runs each version in its own env; a missing one fails only its params."""
    seen = uv_pytester.mkdir("seen")
    uv_pytester.makepyfile(
        test_matrix=f"""
        import os, sys
        import pytest

        @pytest.mark.hermetic(python=["3.12", "3.13", "3.99"])
        def test_version():
            import toyalpha
            version = "%d.%d" % sys.version_info[:2]
            open(os.path.join({str(seen)!r}, version), "w").close()
        """
    )
    result = run(uv_pytester, "-v")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_version?py3.12? PASSED*",
            "*test_version?py3.13? PASSED*",
            "*test_version?py3.99? ERROR*",
        ]
    )
    assert sorted(p.name for p in seen.iterdir()) == ["3.12", "3.13"]
    assert "3.99" in result.stdout.str()


def test_environment_is_scrubbed(
    uv_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets, PYTHONPATH and UV_/PIP_ settings stay outside; passenv and env= get in."""
    outer_only = uv_pytester.mkdir("outer_only")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("PYTHONPATH", str(outer_only))
    monkeypatch.setenv("PYTHONSTARTUP", "/nonexistent/startup.py")
    monkeypatch.setenv("PIP_INDEX_URL", "https://pip.invalid/simple")
    monkeypatch.setenv("MYAPP_MODE", "passed-through")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    uv_pytester.makeini("[pytest]\nhermetic_passenv = MYAPP_*\n")
    uv_pytester.makepyfile(
        test_env=f"""
        import os, site, sys
        import pytest

        @pytest.mark.hermetic(env={{"EXTRA": "from-marker"}})
        def test_scrubbed():
            env = os.environ
            assert "GITHUB_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
            assert "PIP_INDEX_URL" not in env and "PYTHONSTARTUP" not in env
            assert not any(k.startswith("UV_") for k in env)
            assert {str(outer_only)!r} not in sys.path
            assert env["MYAPP_MODE"] == "passed-through"
            assert env["EXTRA"] == "from-marker"
            assert env["LC_ALL"] == "C.UTF-8"
            assert env["TZ"] == "UTC" and env["PYTHONHASHSEED"] == "0"
            assert env["SOURCE_DATE_EPOCH"] == "315532800"
            assert env["VIRTUAL_ENV"] == sys.prefix
            assert env["HOME"] != os.path.expanduser("~root")
            assert os.path.isdir(env["HOME"])
            assert sys.flags.no_user_site and not site.ENABLE_USER_SITE
        """
    )
    result = run(uv_pytester)
    result.assert_outcomes(passed=1)
    assert "ghp_secret" not in result.stdout.str()


def test_network_false_blocks_non_loopback(uv_pytester: pytest.Pytester) -> None:
    """network=False refuses non-loopback connects and lookups; loopback and other tests work."""
    uv_pytester.makepyfile(
        test_net="""
        import socket
        import pytest

        @pytest.fixture
        def server():
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            yield listener.getsockname()[1]
            listener.close()

        @pytest.mark.hermetic(network=False)
        def test_blocked(server):
            socket.create_connection(("127.0.0.1", server)).close()
            # 0.0.0.0 is not loopback to the guard, yet never leaves this machine.
            with pytest.raises(ConnectionRefusedError, match="hermetic.network=False"):
                socket.create_connection(("0.0.0.0", server))
            with pytest.raises(OSError, match="name lookup of '203.0.113.5' refused"):
                socket.getaddrinfo("203.0.113.5", 80)

        @pytest.mark.hermetic
        def test_allowed(server):
            socket.create_connection(("0.0.0.0", server)).close()
        """
    )
    run(uv_pytester).assert_outcomes(passed=2)


def test_two_thousand_tests_with_odd_ids_in_one_worker(uv_pytester: pytest.Pytester) -> None:
    """2000 tests, ids with unicode, brackets, spaces and great length, run in one worker."""
    uv_pytester.makepyfile(
        test_many="""
        import os
        import pytest

        ODD = ["ünïcødé ✓", "[brackets]", "with spaces", "::colons::", "x" * 300, "new\\nline"]
        PIDS = set()

        @pytest.mark.hermetic
        @pytest.mark.parametrize("n", range(1994))
        def test_many(n):
            PIDS.add(os.getpid())
            assert len(PIDS) == 1

        @pytest.mark.hermetic
        @pytest.mark.parametrize("value", ODD, ids=ODD)
        def test_odd(value):
            assert value in ODD
        """
    )
    result = run(uv_pytester, "-q")
    result.assert_outcomes(passed=2000)


def test_missing_and_uncollectable_tests_get_clear_errors(
    uv_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test not found inside, and a module that cannot import inside, each error clearly."""
    outer_only = uv_pytester.mkdir("outer_only")
    (outer_only / "outer_helper.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(outer_only))
    uv_pytester.makepyfile(
        test_versions="""
        import importlib.util
        import pytest

        INSIDE = importlib.util.find_spec("toyalpha") is not None

        @pytest.mark.hermetic
        @pytest.mark.parametrize("n", [1, 2] if INSIDE else [1, 2, 3])
        def test_n(n):
            pass
        """,
        test_outer_import="""
        import outer_helper
        import pytest

        @pytest.mark.hermetic
        def test_helper():
            assert outer_helper.VALUE
        """,
    )
    result = run(uv_pytester, "-rE")
    result.assert_outcomes(passed=2, errors=2)
    text = result.stdout.str()
    assert "test_versions.py::test_n[3] was collected by the outer pytest session but not" in text
    assert "Collecting test_outer_import.py failed inside the locked environment" in text
    assert "No module named 'outer_helper'" in text


def test_marker_arguments_are_validated(uv_pytester: pytest.Pytester) -> None:
    """An unknown marker argument or a bad type is a collection error naming it."""
    uv_pytester.makepyfile(
        test_bad_name="""
        import pytest

        @pytest.mark.hermetic(tmeout=3)
        def test_x():
            pass
        """,
        test_bad_type="""
        import pytest

        @pytest.mark.hermetic(timeout="x")
        def test_y():
            pass
        """,
    )
    result = uv_pytester.runpytest_subprocess()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*test_x: hermetic got an unknown argument 'tmeout'; valid arguments are timeout,*",
            "*test_y: hermetic(timeout=...) must be a positive number of seconds*not 'x'*",
        ]
    )


def test_pdb_is_refused_and_pytest_must_be_locked(
    uv_pytester: pytest.Pytester, make_project: object
) -> None:
    """--pdb with hermetic tests is a usage error; a lock without pytest names the fix."""
    uv_pytester.makepyfile(
        test_one="""
        import pytest

        @pytest.mark.hermetic
        def test_x():
            pass
        """
    )
    pdb = run(uv_pytester, "--pdb")
    assert pdb.ret == pytest.ExitCode.USAGE_ERROR
    assert "--pdb and --trace cannot reach hermetic tests" in pdb.stderr.str()
    make_project(uv_pytester.path, with_pytest=False)  # type: ignore[operator]
    no_pytest = run(uv_pytester)
    assert no_pytest.ret == pytest.ExitCode.USAGE_ERROR
    assert "Fix: run `uv add --dev pytest`" in no_pytest.stderr.str()


def test_keyboard_interrupt_stops_the_worker_cleanly(uv_pytester: pytest.Pytester) -> None:
    """Ctrl-C in the outer session interrupts the worker, which tears down and exits."""
    started = uv_pytester.path / "started"
    torn_down = uv_pytester.path / "torn-down"
    uv_pytester.makepyfile(
        test_long=f"""
        import os, time
        import pytest

        @pytest.fixture(scope="session")
        def resource():
            yield
            open({str(torn_down)!r}, "w").write("done")

        @pytest.mark.hermetic
        def test_long(resource):
            open({str(started)!r}, "w").write(str(os.getpid()))
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *HERMETIC, "-p", "no:cacheprovider"],
        cwd=uv_pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker_pid = int(started.read_text())
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    assert torn_down.read_text() == "done"
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)


def test_options_and_conftest_options_reach_the_inner_session(
    uv_pytester: pytest.Pytester,
) -> None:
    """-W, --tb, -s, --hermetic-timeout and a conftest's own option apply inside."""
    uv_pytester.makeconftest(
        """
        def pytest_addoption(parser):
            parser.addoption("--flavour", default="plain")
        """
    )
    uv_pytester.makepyfile(
        test_opts="""
        import time, warnings
        import pytest

        pytestmark = pytest.mark.hermetic

        def test_flavour(request):
            print("LIVE-OUTPUT")
            assert request.config.getoption("flavour") == "spicy"

        def test_warning_is_error():
            warnings.warn(UserWarning("now an error"))

        def test_short_traceback():
            assert 1 == 2

        def test_slow():
            time.sleep(30)
        """
    )
    result = run(
        uv_pytester,
        "--flavour",
        "spicy",
        "-W",
        "error::UserWarning",
        "--tb=line",
        "-s",
        "--hermetic-timeout=2",
    )
    result.assert_outcomes(passed=1, failed=3)
    text = result.stdout.str()
    assert "LIVE-OUTPUT" in text
    assert "UserWarning: now an error" in text
    result.stdout.fnmatch_lines(["*test_opts.py:*: assert 1 == 2"])
    assert "ran longer than its timeout of 2 s" in text


def test_marker_on_class_groups_and_interleaved_plain_tests(
    uv_pytester: pytest.Pytester, make_project: object
) -> None:
    """A class marker with groups= gets its own env; plain tests around it keep their fixtures."""
    make_project(uv_pytester.path, groups={"gamma": ["toygamma==1.0"]})  # type: ignore[operator]
    log = uv_pytester.path / "fixture.log"
    uv_pytester.makepyfile(
        test_a=f"""
        import pytest

        @pytest.fixture(scope="module")
        def resource():
            open({str(log)!r}, "a").write("up ")
            yield
            open({str(log)!r}, "a").write("down ")

        def test_plain(resource):
            pass

        @pytest.mark.hermetic(groups=["gamma"])
        class TestGamma:
            def test_gamma(self):
                import toygamma

        @pytest.mark.hermetic
        def test_no_gamma():
            import importlib.util
            assert importlib.util.find_spec("toygamma") is None
        """,
        test_b="""
        def test_later():
            pass
        """,
    )
    result = run(uv_pytester, "-v")
    result.assert_outcomes(passed=4)
    assert log.read_text() == "up down "


def test_project_argument_uses_another_projects_env(
    uv_pytester: pytest.Pytester, make_project: object
) -> None:
    """hermetic(project=...) runs the test in the other project's locked env."""
    make_project(  # type: ignore[operator]
        uv_pytester.path / "other", name="other", dependencies=("toybeta==1.0",)
    )
    uv_pytester.makepyfile(
        test_other="""
        import importlib.util
        import pytest

        @pytest.mark.hermetic(project="other")
        def test_in_other():
            import toybeta, toyalpha

        @pytest.mark.hermetic
        def test_in_main():
            assert importlib.util.find_spec("toybeta") is None
        """
    )
    run(uv_pytester).assert_outcomes(passed=2)


def test_keyboard_interrupt_in_a_test_stops_the_session(uv_pytester: pytest.Pytester) -> None:
    """A test raising KeyboardInterrupt ends the session with exit 2, as in-process."""
    uv_pytester.makepyfile(
        test_interrupt="""
        import pytest

        pytestmark = pytest.mark.hermetic

        def test_interrupt():
            raise KeyboardInterrupt

        def test_after():
            pass
        """
    )
    result = run(uv_pytester, "-v")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*KeyboardInterrupt: raised in the hermetic test test_interrupt.py::test_interrupt*"]
    )
    assert "test_after" not in result.stdout.str()


#: A conftest that logs, once per process that loads it, which interpreter did.
WHO_LOADS_CONFTEST = """
import importlib.util, os
with open(os.path.join(os.path.dirname(__file__), "loads.log"), "a") as fh:
    fh.write("inside\\n" if importlib.util.find_spec("toyalpha") else "outside\\n")
"""


def _hint_file(pytester: pytest.Pytester) -> Path:
    """Where pytest's cache keeps the early-spawn hints."""
    return pytester.path / ".pytest_cache" / "v" / "uvbuild" / "hermetic-main-env"


def _hint(pytester: pytest.Pytester) -> list[Any]:
    """The early-spawn hints pytest's cache holds after a run (one per argument list)."""
    path = _hint_file(pytester)
    return list(json.loads(path.read_text()).values()) if path.exists() else []


def test_a_known_hermetic_suite_spawns_its_worker_at_session_start(
    uv_pytester: pytest.Pytester,
) -> None:
    """The cache remembers which argument lists ran hermetic tests; such a run spawns early."""
    uv_pytester.makeconftest(WHO_LOADS_CONFTEST)
    uv_pytester.makepyfile(
        test_mixed="""
        import pytest

        @pytest.mark.hermetic
        def test_inside():
            import toyalpha

        def test_plain():
            pass
        """
    )
    log = uv_pytester.path / "loads.log"
    run(uv_pytester).assert_outcomes(passed=2)
    assert _hint(uv_pytester) == [["test_mixed.py"]]
    assert log.read_text().split() == ["outside", "inside"]

    # Another command line (-k) has a hint of its own: with none yet, the
    # worker starts at the first hermetic test collected, finds nothing to
    # do once it is deselected, is shut down cleanly, and "none" is kept.
    log.unlink()
    run(uv_pytester, "-k", "plain").assert_outcomes(passed=1, deselected=1)
    assert sorted(log.read_text().split()) == ["inside", "outside"]
    assert _hint(uv_pytester) == [["test_mixed.py"], False]

    # Now that hint says "no hermetic tests": nothing is spawned for tests
    # that are collected and then deselected, and a run that does select
    # some still starts its worker when the first one runs.
    log.unlink()
    run(uv_pytester, "-k", "plain").assert_outcomes(passed=1, deselected=1)
    assert log.read_text().split() == ["outside"]
    run(uv_pytester, "-p", "no:cacheprovider").assert_outcomes(passed=2)
    # The -k runs left the whole suite's hint as it was.
    run(uv_pytester).assert_outcomes(passed=2)
    assert _hint(uv_pytester) == [["test_mixed.py"], False]


def test_a_stale_hint_never_loses_a_test(uv_pytester: pytest.Pytester) -> None:
    """The early worker collects the hinted files; new, moved or deleted files still run."""
    uv_pytester.makepyfile(
        test_a="import pytest\n\n@pytest.mark.hermetic\ndef test_a():\n    import toyalpha\n"
    )
    run(uv_pytester, "-q").assert_outcomes(passed=1)
    assert _hint(uv_pytester) == [["test_a.py"]]
    # A new hermetic file: the worker collecting test_a.py alone is replaced.
    uv_pytester.makepyfile(
        test_b="import pytest\n\n@pytest.mark.hermetic\ndef test_b():\n    import toyalpha\n"
    )
    run(uv_pytester, "-q").assert_outcomes(passed=2)
    assert _hint(uv_pytester) == [["test_a.py", "test_b.py"]]
    # A hinted file is gone: the worker collects what is left.
    (uv_pytester.path / "test_a.py").unlink()
    run(uv_pytester, "-q").assert_outcomes(passed=1)
    assert _hint(uv_pytester) == [["test_b.py"]]


def test_an_early_worker_collecting_more_files_than_needed_is_not_used(
    uv_pytester: pytest.Pytester,
) -> None:
    """A worker that collected extra hinted files is replaced: their conftests must not act."""
    hermetic_a = "import pytest\n\n@pytest.mark.hermetic\ndef test_a():\n    import toyalpha\n"
    uv_pytester.makepyfile(test_a=hermetic_a)
    sub = uv_pytester.mkpydir("sub")
    (sub / "conftest.py").write_text(
        "import importlib.util\n"
        "import pytest\n\n"
        "def pytest_collection_modifyitems(items):\n"
        "    if importlib.util.find_spec('toyalpha') is not None:  # inside the locked env\n"
        "        for item in items:\n"
        "            item.add_marker(pytest.mark.skip(reason='sub/conftest.py acted'))\n"
    )
    (sub / "test_b.py").write_text(hermetic_a.replace("test_a", "test_b"))
    run(uv_pytester, "-q").assert_outcomes(skipped=2)  # one worker loads both, as in-process
    assert _hint(uv_pytester) == [["sub/test_b.py", "test_a.py"]]
    # test_b now runs outside: the early worker collecting both files is
    # not used for test_a, whose own session never loads sub/conftest.py.
    (sub / "test_b.py").write_text("def test_b():\n    pass\n")
    run(uv_pytester, "-q").assert_outcomes(passed=2)
    assert _hint(uv_pytester) == [["test_a.py"]]


def test_a_corrupt_hint_is_ignored_and_replaced(uv_pytester: pytest.Pytester) -> None:
    """A hint file that is not JSON, not an object, or holds a wrong value never breaks a run."""
    uv_pytester.makepyfile(
        test_a="import pytest\n\n@pytest.mark.hermetic\ndef test_a():\n    import toyalpha\n"
    )
    run(uv_pytester, "-q").assert_outcomes(passed=1)
    (key,) = json.loads(_hint_file(uv_pytester).read_text())
    for corrupt in (
        "{not json",
        "[1, 2]",
        json.dumps({key: [1, 2]}),
        json.dumps({key: "test_a.py"}),
        json.dumps({key: {"test_a.py": True}}),
        json.dumps({key: True}),
    ):
        _hint_file(uv_pytester).write_text(corrupt)
        result = run(uv_pytester, "-q")
        result.assert_outcomes(passed=1)
        assert result.ret == 0, corrupt
        assert _hint(uv_pytester) == [["test_a.py"]], corrupt


def test_the_hints_keep_the_argument_lists_last_changed(uv_pytester: pytest.Pytester) -> None:
    """Hints are bounded: a new argument list's hint pushes out the one changed longest ago."""
    from pytest_uvbuild.hermetic import _HINT_LIMIT

    uv_pytester.makepyfile(
        test_a="import pytest\n\n@pytest.mark.hermetic\ndef test_a():\n    import toyalpha\n"
    )
    older = {f"other-{n}": ["test_x.py"] for n in range(_HINT_LIMIT)}
    _hint_file(uv_pytester).parent.mkdir(parents=True)
    _hint_file(uv_pytester).write_text(json.dumps(older))
    run(uv_pytester, "-q").assert_outcomes(passed=1)
    hints = json.loads(_hint_file(uv_pytester).read_text())
    assert len(hints) == _HINT_LIMIT
    assert list(hints)[:-1] == list(older)[1:]
    assert list(hints.values())[-1] == ["test_a.py"]


def test_collect_only_spawns_no_worker(uv_pytester: pytest.Pytester) -> None:
    """--collect-only lists hermetic tests without starting anything in the locked env."""
    uv_pytester.makeconftest(WHO_LOADS_CONFTEST)
    uv_pytester.makepyfile(
        test_marked="""
        import pytest

        pytestmark = pytest.mark.hermetic

        def test_one():
            import toyalpha
        """
    )
    run(uv_pytester).assert_outcomes(passed=1)
    (uv_pytester.path / "loads.log").unlink()
    result = run(uv_pytester, "--co", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["test_marked.py::test_one"])
    assert (uv_pytester.path / "loads.log").read_text().split() == ["outside"]


def test_atexit_handlers_of_hermetic_tests_run(uv_pytester: pytest.Pytester) -> None:
    """The worker ends without interpreter teardown, yet atexit handlers and output survive."""
    uv_pytester.makepyfile(
        test_atexit="""
        import atexit, os, sys
        import pytest

        @pytest.mark.hermetic
        def test_registers(tmp_path_factory):
            target = os.path.join(os.path.dirname(__file__), "atexit.txt")
            def write():
                with open(target, "w") as fh:
                    fh.write("ran inside " + os.environ["VIRTUAL_ENV"])
            atexit.register(write)
        """
    )
    run(uv_pytester).assert_outcomes(passed=1)
    assert (uv_pytester.path / "atexit.txt").read_text().startswith("ran inside ")


def test_threads_a_hermetic_test_leaves_running_finish(uv_pytester: pytest.Pytester) -> None:
    """The worker joins a non-daemon thread a test started before it exits, as Python does."""
    uv_pytester.makepyfile(
        test_thread="""
        import os, threading, time
        import pytest

        @pytest.mark.hermetic
        def test_starts_a_thread():
            target = os.path.join(os.path.dirname(__file__), "thread.txt")
            def later():
                time.sleep(0.5)
                with open(target, "w") as fh:
                    fh.write("done")
            threading.Thread(target=later).start()
        """
    )
    run(uv_pytester).assert_outcomes(passed=1)
    assert (uv_pytester.path / "thread.txt").read_text() == "done"


def test_an_import_time_cycle_freed_by_a_test_warns_as_in_process(
    uv_pytester: pytest.Pytester,
) -> None:
    """A cycle made at import and freed by a test is collected and warns inside, as outside."""
    uv_pytester.makepyfile(
        test_cycle="""
        import gc
        import pytest

        pytestmark = pytest.mark.hermetic

        class Noisy:
            def __del__(self):
                raise ValueError("raised in __del__")

        HOLDER = [Noisy()]
        HOLDER[0].me = HOLDER[0]  # a cycle: only the collector frees it

        def test_frees_it():
            HOLDER.clear()
            gc.collect()
        """
    )
    plain = uv_pytester.runpytest_subprocess()
    hermetic = run(uv_pytester)
    for result in (plain, hermetic):
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(["*PytestUnraisableExceptionWarning*", "*raised in __del__"])


def test_hermetic_all_keeps_warnings_from_the_session_end(uv_pytester: pytest.Pytester) -> None:
    """A conftest's pytest_sessionfinish warning is in the summary and counts, as in-process."""
    uv_pytester.makeconftest(
        """
        import warnings

        def pytest_sessionfinish(session):
            warnings.warn(UserWarning("said at the end"))
        """
    )
    uv_pytester.makepyfile(test_end="def test_one():\n    pass\n")
    plain = uv_pytester.runpytest_subprocess("--max-warnings=0")
    inside = run(uv_pytester, "--hermetic-all", "--max-warnings=0")
    for result in (plain, inside):
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(
            ["*UserWarning: said at the end", "*maximum allowed warnings exceeded: 1 > 0*"]
        )
        assert result.ret == plain.ret != 0


def _short_summary(result: pytest.RunResult) -> list[str]:
    """The lines of a run's short test summary."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "short test summary info" in line)
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"^(=+ |!+ )", lines[i]))
    return lines[start + 1 : end]


def test_the_short_summary_quotes_only_what_it_quotes_in_process(
    uv_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CI a doctest, missing fixture or collection error adds no text to its summary line."""
    monkeypatch.setenv("CI", "true")
    uv_pytester.makepyfile(
        test_summary='''
        import pytest

        def add(a, b):
            """
            >>> add(1, 1)
            3
            """
            return a + b

        def test_missing(no_such_fixture):
            pass

        @pytest.mark.xfail(reason="strictly fixed", strict=True)
        def test_xpass_strict():
            pass
        ''',
        test_broken="import no_such_module_here\n",
    )
    args = ("--doctest-modules", "--continue-on-collection-errors")
    plain = uv_pytester.runpytest_subprocess(*args)
    hermetic = run(uv_pytester, "--hermetic-all", *args)
    for result in (plain, hermetic):
        # test_broken.py fails twice: as a test module and as a doctest module.
        result.assert_outcomes(failed=2, errors=3)
    assert _short_summary(hermetic) == _short_summary(plain)
    assert "FAILED test_summary.py::test_summary.add" in _short_summary(plain)


def test_plain_fixtures_torn_down_at_a_hermetic_test_are_captured(
    uv_pytester: pytest.Pytester,
) -> None:
    """A plain test's fixture torn down at a hermetic test: captured, one report, as in-process."""
    uv_pytester.makepyfile(
        test_server="""
        import logging
        import pytest

        @pytest.fixture(scope="module")
        def server():
            yield
            print("stopping the server")
            logging.getLogger("server").warning("server stopped")
            raise RuntimeError("the server would not stop")

        def test_plain(server):
            pass

        @pytest.mark.hermetic
        def test_hermetic():
            print("inside")
        """
    )
    uv_pytester.makeini("[pytest]\njunit_logging = all\n")
    plain = uv_pytester.runpytest_subprocess("-rA", "--junitxml=plain.xml")
    hermetic = run(uv_pytester, "-rA", "--junitxml=hermetic.xml")
    for result in (plain, hermetic):
        result.assert_outcomes(passed=2, errors=1)
    assert _terminal_lines(hermetic) == _terminal_lines(plain)
    assert _junit(uv_pytester.path / "hermetic.xml") == _junit(uv_pytester.path / "plain.xml")
    hermetic.stdout.fnmatch_lines(
        ["*Captured stdout teardown*", "stopping the server", "*Captured log teardown*"]
    )
    assert "hermetic.py" not in hermetic.stdout.str()


def test_hermetic_all_shares_fixtures_and_applies_marker_arguments(
    uv_pytester: pytest.Pytester,
) -> None:
    """Under --hermetic-all a session fixture is set up once, and network=False is enforced."""
    uv_pytester.makepyfile(
        test_shared="""
        import socket
        import pytest

        SETUPS = []

        @pytest.fixture(scope="session")
        def resource():
            SETUPS.append(1)
            yield

        def test_first(resource):
            pass

        @pytest.mark.hermetic(network=False)
        def test_offline(resource):
            with pytest.raises(OSError, match="name lookup of '203.0.113.5' refused"):
                socket.getaddrinfo("203.0.113.5", 80)

        def test_last(resource):
            assert len(SETUPS) == 1
        """
    )
    run(uv_pytester, "--hermetic-all").assert_outcomes(passed=3)


def test_hermetic_all_knows_ini_keys_registered_inside(
    uv_pytester: pytest.Pytester, make_project: object
) -> None:
    """An ini key that only a conftest.py or lock-only plugin registers passes --strict-config."""
    uv_pytester.makeconftest(
        """
        def pytest_addoption(parser):
            parser.addini("inner_only", "registered by the suite's conftest.py")
        """
    )
    uv_pytester.makepyfile(
        test_ini="""
        def test_reads_it(request):
            assert request.config.getini("inner_only") == "yes"
        """
    )
    uv_pytester.makeini("[pytest]\naddopts = --strict-config\ninner_only = yes\n")
    strict = run(uv_pytester, "--hermetic-all")
    strict.assert_outcomes(passed=1)
    uv_pytester.makeini("[pytest]\ninner_only = yes\n")
    lenient = run(uv_pytester, "--hermetic-all")
    lenient.assert_outcomes(passed=1)
    assert "Unknown config option" not in lenient.stdout.str() + lenient.stderr.str()
    # A worker that cannot start: its error is the one shown, not the unchecked key.
    uv_pytester.makeini("[pytest]\naddopts = --strict-config\ninner_only = yes\n")
    make_project(uv_pytester.path, with_pytest=False)  # type: ignore[operator]
    broken = run(uv_pytester, "--hermetic-all")
    assert broken.ret == pytest.ExitCode.USAGE_ERROR
    assert "Fix: run `uv add --dev pytest`" in broken.stderr.str()


def test_hermetic_all_takes_options_only_the_inside_knows(
    uv_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--hermetic-all takes conftest options from the command line, addopts and PYTEST_ADDOPTS."""
    uv_pytester.makeconftest(
        """
        import toyalpha  # only the lock has it: this conftest is never imported outside

        def pytest_addoption(parser):
            parser.addoption("--flavour", default="plain")
            parser.addoption("--runslow", action="store_true")
            parser.addoption("--size", default="m")
        """
    )
    uv_pytester.mkdir("suite")
    uv_pytester.makepyfile(
        **{
            "suite/test_opts": """
            def test_options(request):
                got = [request.config.getoption(n) for n in ("flavour", "runslow", "size")]
                assert got == ["spicy", True, "xl"]
            """,
            "elsewhere": "def test_not_collected():\n    assert False\n",
        }
    )
    uv_pytester.makeini("[pytest]\naddopts = --size=xl\n")
    # A value after a space, a flag before a path: the path stays the session's argument.
    # A cold cache: the env made to ask for the options is the session's own.
    options = ("--hermetic-all", "--flavour", "spicy", "--runslow", "suite")
    result = run(uv_pytester, f"--uv-cache-dir={uv_pytester.path / 'cold'}", *options)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["uv-build: building env *", "*test session starts*", "env * miss (first build*"]
    )
    assert result.stdout.str().count("building env") == 1
    # PYTEST_ADDOPTS, which the worker's environment does not carry, reaches it too.
    monkeypatch.setenv("PYTEST_ADDOPTS", "--flavour spicy --runslow")
    run(uv_pytester, "--hermetic-all", "suite").assert_outcomes(passed=1)
    monkeypatch.delenv("PYTEST_ADDOPTS")
    unknown = run(uv_pytester, "--hermetic-all", "--no-such-option")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    assert "unrecognized arguments: --no-such-option" in unknown.stderr.str()
    # An env that cannot be made is the error shown, not the options it left unknown.
    pyproject = uv_pytester.path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("toyalpha==1.0", "toybeta==1.0"))
    stale = run(uv_pytester, *options)
    assert stale.ret == pytest.ExitCode.USAGE_ERROR
    assert "Fix: run `uv lock`" in stale.stderr.str()
    assert "unrecognized arguments" not in stale.stderr.str()
