"""Acceptance tests of the ``uv_env`` and ``uv_env_factory`` fixtures, as test authors use them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import MakeProject

#: The running Python's version: uv_env's interpreter unless told otherwise.
RUNNING = "{}.{}".format(*sys.version_info[:2])


def test_uv_env_and_factory_attributes(
    uv_pytester: pytest.Pytester,
    make_project: MakeProject,
    tmp_path: Path,
    pyenv_python: Callable[[str], Path],
) -> None:
    """uv_env gives path, python, key, packages and run; the factory makes a second env."""
    real312 = pyenv_python("3.12")
    other = make_project(
        tmp_path / "other", name="other", dependencies=["toybeta"], groups={"lint": ["toygamma"]}
    )
    uv_pytester.makepyfile(
        test_fixtures=f"""
        import importlib.metadata
        import os, subprocess, sys
        from pathlib import Path

        SHOW = "import os, sys; print(sys.prefix, os.environ['EXTRA'], os.environ['PATH'])"

        def test_attributes(uv_env):
            assert (uv_env.path / "pyvenv.cfg").is_file()
            assert uv_env.python == uv_env.path / "bin" / "python"
            assert len(uv_env.key) == 16 and uv_env.path.name == uv_env.key
            assert uv_env.packages["toyalpha"] == "1.0"
            assert uv_env.packages["demo"] == "0.1.0"
            host = {{d.metadata["Name"] for d in importlib.metadata.distributions()}}
            assert "toyalpha" not in host

        def test_run(uv_env):
            out = uv_env.run(
                ["python", "-c", SHOW],
                env={{"EXTRA": "yes"}}, capture_output=True, text=True, check=True,
            )
            prefix, extra, path = out.stdout.split()
            assert Path(prefix) == uv_env.path
            assert extra == "yes"
            assert Path(path.split(os.pathsep)[0]) == uv_env.path / "bin"
            assert isinstance(out, subprocess.CompletedProcess)
            failed = uv_env.run(["python", "-c", "raise SystemExit(3)"])
            assert failed.returncode == 3

        def test_factory(uv_env, uv_env_factory):
            second = uv_env_factory({str(other)!r}, python="3.12", groups=["lint"])
            assert second.key != uv_env.key
            assert second.interpreter.path == Path({str(real312)!r}).resolve()
            mine = {{k: v for k, v in second.packages.items() if k.startswith(("other", "toy"))}}
            want = {{"other": "0.1.0", "toyalpha": "2.0", "toybeta": "1.0", "toygamma": "1.0"}}
            assert mine == want
            assert "pytest" in second.packages
            again = uv_env_factory({str(other)!r}, python="3.12", groups=["lint"])
            assert again is second
            code = "import other, toygamma, sys; print(sys.version_info[:2])"
            out = second.run(["python", "-c", code], capture_output=True, text=True, check=True)
            assert out.stdout.strip() == "(3, 12)"
        """
    )
    result = uv_pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*= uv-build =*", f"env * [[]CPython {RUNNING}.*", "env * [[]CPython 3.12.*"]
    )


def test_run_takes_a_command_line_and_the_factory_one_name_as_a_string(
    uv_pytester: pytest.Pytester, make_project: MakeProject, tmp_path: Path
) -> None:
    """`run("cmd", shell=True)` runs that command line in the env; `groups="lint"` is one group."""
    other = make_project(tmp_path / "other", name="other", groups={"lint": ["toygamma"]})
    uv_pytester.makepyfile(
        test_strings=f"""
        def test_command_line(uv_env):
            out = uv_env.run(
                "python -c 'import sys, toyalpha; print(sys.prefix)'",
                shell=True, capture_output=True, text=True, check=True,
            )
            assert out.stdout.strip() == str(uv_env.path)
            code = "import sys; print(sys.prefix)"
            alone = uv_env.run("python", input=code, capture_output=True, text=True)
            assert alone.stdout.strip() == str(uv_env.path)

        def test_one_group_name(uv_env_factory):
            env = uv_env_factory({str(other)!r}, groups="lint")
            assert env is uv_env_factory({str(other)!r}, groups=["lint"])
            assert "toygamma" in env.packages
        """
    )
    result = uv_pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_errors_inside_fixtures_are_one_message(
    pytester: pytest.Pytester, make_project: MakeProject
) -> None:
    """A fixture that cannot make its env errors the test with one message and no traceback."""
    pytester.makepyfile(
        test_errors="""
        def test_no_project(uv_env):
            pass

        def test_bad_group(uv_env_factory, tmp_path):
            uv_env_factory(PROJECT, groups=["nope"])

        def test_bad_mode(uv_env_factory):
            uv_env_factory(PROJECT, install_project="egg")
        """.replace("PROJECT", repr(str(make_project())))
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=0, errors=1, failed=2)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*uv_env: No uv project (pyproject.toml with uv.lock) at or above *",
            "*uv_env_factory: Unknown dependency group(s) nope for project *Fix:*",
            "*uv_env_factory: install_project='egg' is not one of wheel, source, no. Fix:*",
        ]
    )
    assert "Traceback" not in output
    assert "During handling of the above exception" not in output
    assert "envcache.py" not in output
