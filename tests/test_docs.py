"""The docs tell the truth: the tutorial runs, the generated pages are current, the README is CI's.

Budget: about 10 seconds, most of it the tutorial's cold env build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import toys

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "tutorial.md"

#: The tutorial's tool-env set-up; the test's own venv (which has the plugin) stands in.
TOOL_SETUP = (
    "uv venv ~/uvbuild-tool",
    "uv pip install --python ~/uvbuild-tool /path/to/pytest-uvbuild",
)
#: The version of packaging the tutorial pins, and the one its output shows on the host.
LOCKED_PACKAGING = "24.0"
SHOWN_HOST_PACKAGING = "26.3"
#: The Python the tutorial's output shows; the test's own stands in.
SHOWN_PYTHON = "cpython 3.11.7"

_FENCE = re.compile(r'^```(\w+)(?: title="([^"]+)")?\n(.*?)^```$', re.MULTILINE | re.DOTALL)
_COUNTS = re.compile(r"(\d+) (passed|failed)")
#: Output lines that differ from run to run: ids, paths, timings, elisions, rulers.
_VARYING = re.compile(r"[0-9a-f]{16}|/|\d ?(ms|s)\b|\.\.\.|^[=_-]{3}")


@dataclass
class Command:
    """A ``$`` line of a console block and the output the page shows under it."""

    line: str
    shown: list[str] = field(default_factory=list)


@dataclass
class Step:
    """A console command to run, or a file to write, in page order."""

    command: Command | None = None
    path: str | None = None
    text: str = ""


def tutorial_steps(markdown: str) -> list[Step]:
    """Console commands and titled file blocks of a page, in order."""
    steps: list[Step] = []
    for match in _FENCE.finditer(markdown):
        kind, title, body = match.groups()
        if title:
            steps.append(Step(path=title, text=body))
        elif kind == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    steps.append(Step(command=Command(line[2:])))
                elif steps and steps[-1].command is not None:
                    steps[-1].command.shown.append(line)
    return steps


def _load_tool(relpath: str) -> ModuleType:
    """Import a script of this repository (docs/ and bench/ are not packages)."""
    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(f"_docs_test_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module executes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def packaging_24(pytestconfig: pytest.Config) -> Path:
    """A directory with the wheel of packaging 24.0, fetched once and kept in pytest's cache."""
    assert pytestconfig.cache is not None
    dest = pytestconfig.cache.mkdir("uvbuild-tutorial-wheels")
    toys.fetch_registry_wheels(dest, [f"packaging=={LOCKED_PACKAGING}"])
    return dest


def test_tutorial_commands_run(tmp_path: Path, wheelhouse: Path, packaging_24: Path) -> None:
    """Every command and file of docs/tutorial.md works, with the outcomes the page shows.

    The commands run as written, in order, with three substitutions that keep
    the test offline and away from the user's home:

    - after ``uv init``, the project gets ``[tool.uv] no-index`` with
      ``find-links`` to the test wheelhouse (pytest and its dependencies) and to
      a cached wheel of packaging 24.0, and ``uv add`` gets ``--offline``;
    - the tool env the page builds in ``~/uvbuild-tool`` from a checkout is
      this test's own venv, which has pytest-uvbuild installed and a packaging
      other than 24.0, so those two set-up commands are not run;
    - the host's packaging version in the shown output is this venv's.
    """
    import packaging

    steps = tutorial_steps(TUTORIAL.read_text())
    lines = [s.command.line for s in steps if s.command]
    for setup in TOOL_SETUP:
        assert setup in lines, f"the tutorial no longer shows {setup!r}; update this test"
    assert packaging.__version__ != LOCKED_PACKAGING
    tool_root = Path(sys.executable).parent.parent
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(toys.UV.parent), os.environ["PATH"]]),
        "UV_PYTHON": sys.executable,
        "UV_NO_PROGRESS": "1",
        "COLUMNS": "80",
    }
    cwd = tmp_path
    ran = 0
    for step in steps:
        if step.path is not None:
            target = cwd / step.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.text)
            continue
        assert step.command is not None
        line = step.command.line
        if line in TOOL_SETUP:
            continue
        if line.startswith("cd "):
            cwd = cwd / line[3:]
            continue
        if line.startswith("uv add "):
            pyproject = cwd / "pyproject.toml"
            if "no-index" not in pyproject.read_text():
                links = f'find-links = ["{wheelhouse}", "{packaging_24}"]'
                with pyproject.open("a") as f:
                    f.write(f"\n[tool.uv]\nno-index = true\n{links}\n")
            line = line.replace("uv add ", "uv add --offline ", 1)
        line = line.replace("~/uvbuild-tool", str(tool_root))
        proc = subprocess.run(
            ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        ran += 1
        output = proc.stdout + proc.stderr
        shown = [
            s.replace(f"'{SHOWN_HOST_PACKAGING}'", f"'{packaging.__version__}'").replace(
                SHOWN_PYTHON, f"cpython {platform.python_version()}"
            )
            for s in step.command.shown
        ]
        counts = {kind: int(n) for text in shown for n, kind in _COUNTS.findall(text)}
        context = f"$ {line}\n(exit {proc.returncode})\n{output[-4000:]}"
        assert (proc.returncode != 0) == bool(counts.get("failed")), context
        for kind, n in counts.items():
            assert f"{n} {kind}" in output, context
        squeezed = " ".join(output.split())
        for text in shown:
            if text.strip() and not _VARYING.search(text):
                assert " ".join(text.split()) in squeezed, f"shown line {text!r} missing\n{context}"
    assert ran >= 7


def test_reference_pages_are_current() -> None:
    """docs/reference/options.md and cli.md match what the real parsers generate now."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "docs" / "gen_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_reference_generator_finds_plugin_options() -> None:
    """The options page lists the plugin's options and ini keys and nothing of pytest's own."""
    page = (REPO / "docs" / "reference" / "options.md").read_text()
    for name in ("`--uv-build`", "`--uv-python`", "`uv_build`", "`--hermetic-all`"):
        assert name in page
    assert "`--maxfail`" not in page
    assert "`addopts`" not in page


def test_readme_quick_start_is_what_ci_runs() -> None:
    """.ci/run extracts exactly the two commands of README's Quick start block."""
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", quick_start, re.DOTALL)
    assert block is not None
    shown = [line[2:] for line in block.group(1).splitlines() if line.startswith("$ ")]
    assert len(shown) == 2
    script = (REPO / ".ci" / "run").read_text()
    extract = "\n".join(
        line for line in script.splitlines() if re.match(r"(demo|test)_cmd=\$\(", line)
    )
    assert extract.count("\n") == 1, "the two extraction lines are gone from .ci/run"
    proc = subprocess.run(
        ["bash", "-c", f'{extract}\nprintf "%s\\n%s\\n" "$demo_cmd" "$test_cmd"'],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.splitlines() == shown
    assert 'bash -c "$demo_cmd"' in script
    assert 'bash -c "$test_cmd"' in script


def test_bench_page_names_missing_and_failed_suites(tmp_path: Path) -> None:
    """bench/run.py renders what exists and names the suites that are missing or failed."""
    run = _load_tool("bench/run.py")
    results = tmp_path / "results"
    results.mkdir()
    stats = {"median": 0.2, "min": 0.1, "max": 0.3, "samples": 3}
    row = {
        "suite": "peers",
        "case": "300 hermetic tests",
        "ours": stats,
        "baseline_name": "uv run pytest",
        "baseline": {**stats, "median": 0.1},
        "ratio": 2.0,
        "goal": None,
        "note": "",
        "series": "hermetic run vs test count",
        "x": 300,
    }
    machine = {"python": "3.x", "platform": "p", "cpus": 2, "uv": "uv x", "pytest": "y"}
    for suite in ("peers", "record"):
        payload = {"suite": suite, "command": f"c-{suite}", "machine": machine, "rows": [row]}
        (results / f"{suite}.json").write_text(json.dumps(payload))
    runs = [
        run.SuiteRun("envcache", "missing", detail="bench/bench_envcache.py does not exist"),
        run.SuiteRun("record", "failed", 1.0, "exit status 1"),
        run.SuiteRun("peers", "ok", 2.0),
    ]
    page = run.render(runs, {}, "cmd", results_dir=results, assets_dir=tmp_path / "assets")
    assert "`envcache` (missing)" in page
    assert "`record` (failed)" in page
    assert "From `c-peers`." in page
    assert "From `c-record`." not in page
    assert f"2.00{run.TIMES}" in page
    assert (tmp_path / "assets" / "performance-ratios.svg").read_text().startswith("<svg")
    assert (tmp_path / "assets" / "performance-scaling.svg").exists()
