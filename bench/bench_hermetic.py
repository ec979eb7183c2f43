"""Hermetic runs side by side with their baselines, in one run (medians, min, max).

(a) 300 trivial ``@pytest.mark.hermetic`` tests under ``python -m pytest
    --uv-build`` (the outer session in a tool env that holds pytest-uvbuild
    and its runtime dependencies only, as a CI job's would; the bodies in the
    locked env's worker; warm env cache) against the same 300 tests under
    ``uv run --locked pytest`` in-process, in the project's own env.
    Goal: 1.30x or less. Ours forks its worker from the warm zygote the
    previous run left (the default outside CI); a second row turns that off
    (``hermetic_keep_warm=0``, the default on CI). Another row leaves out the build record
    (``--uv-no-artifacts``), to show what the hermetic run alone costs; a
    third times the worker's own start (the locked env's python importing
    pytest), the fixed cost that no in-process run pays. pytest's cache is
    on for both sides, as for any user (ours keeps its early-spawn hint there).
(b) The cost of one more test: the difference of two suite sizes' times over
    the difference in tests (20 and 620; 10 and 40 for pytest-isolated, whose
    fresh subprocess per test costs a third of a second), for ours against
    pytest-forked (a fork per test) and pytest-isolated. Goal: ours 20x
    cheaper or better. A last row gives in-process pytest's own cost of one
    more test, which bounds ours from below.
(c) Peak memory (``ru_maxrss``) of the outer pytest process with the 300
    hermetic tests, against plain in-process pytest of the same 300 tests.

pytest-forked and pytest-isolated, and the tool env's pytest-uvbuild (built
from this working tree) with its locked runtime dependencies, are installed
by uv into throwaway venvs in the scratch dir (from the registry), never
into this project's lock; the measured runs are offline against the toy
wheelhouse. Run:
``python bench/bench_hermetic.py [--repeats N]``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import support
import toys
from support import Stats, row, side_by_side, stats

from pytest_uvbuild import prewarm
from pytest_uvbuild.hermetic import KEEP_WARM_VARIABLE

SUITE = "hermetic"
#: Suite sizes whose difference gives the cost of one more test: wide enough
#: that start-up noise does not swamp it; a process per test gets fewer.
SIZES = (20, 620)
SLOW_SIZES = (10, 40)

#: Prints the outer process's own peak RSS (KiB on Linux) after pytest exits.
MAXRSS_SHIM = """\
import atexit, resource, runpy, sys
out = sys.argv.pop(1)
def report():
    with open(out, "w") as fh:
        fh.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(report)
sys.argv[0] = "pytest"
runpy.run_module("pytest", run_name="__main__")
"""


def write_tests(directory: Path, count: int, *, header: str = "", decorator: str = "") -> Path:
    """A directory with ``count`` trivial tests in modules of 50."""
    directory.mkdir(parents=True, exist_ok=True)
    for start in range(0, count, 50):
        body = ["import pytest", header]
        for n in range(start, min(count, start + 50)):
            body += [f"{decorator}def test_{n}():", "    assert True", ""]
        (directory / f"test_m{start // 50}.py").write_text("\n".join(body) + "\n")
    return directory


def peer_python(scratch: Path, env: dict[str, str], name: str, *pins: str) -> tuple[Path, str]:
    """A throwaway venv with the peer ``name``; its python and pinned versions."""
    venv = scratch / f"{name}-venv"
    uv_env = {**env, "UV_NO_PROGRESS": "1"}
    subprocess.run([str(toys.UV), "venv", "-q", str(venv)], env=uv_env, check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(toys.UV), "pip", "install", "-q", "--python", str(python), name, *pins],
        env=uv_env,
        check=True,
    )
    listing = subprocess.run(
        [str(toys.UV), "pip", "list", "--python", str(python), "--format", "freeze"],
        env=uv_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = ", ".join(
        line for line in listing.split() if line.startswith(("pytest==", f"{name}=="))
    )
    return python, versions


def _settle(temp: Path) -> None:
    """Wait (10 s at most) until the last run's zygote listens, as after a moment's pause.

    A zygote imports pytest right after the session that left it ends; in a
    tight loop of runs that work would land in the next measured command,
    whichever side it is.
    """
    toys.wait_until(lambda: prewarm.listening(temp), 10)


def _locked_env_python(project: Path, env: dict[str, str]) -> Path:
    """The interpreter of the project's cached locked env (from ``cache list --json``)."""
    listing = subprocess.run(
        [sys.executable, "-m", "pytest_uvbuild", "cache", "list", "--json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (entry,) = [e for e in json.loads(listing) if Path(e["project"]) == project.resolve()]
    return Path(entry["path"]) / "bin" / "python"


def per_test(sizes: dict[int, Stats]) -> Stats:
    """The cost of one more test, from runs of two suite sizes."""
    small, large = sorted(sizes)
    extra = large - small
    a, b = sizes[small], sizes[large]
    return Stats(
        (b.median - a.median) / extra,
        max(0.0, b.min - a.max) / extra,
        (b.max - a.min) / extra,
        min(a.samples, b.samples),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparisons and write ``bench/results/hermetic.json``."""
    repeats: int = support.argument_parser(__doc__).parse_args(argv).repeats

    scratch, env, house = support.workspace(SUITE)
    project = toys.write_project(scratch / "project", house)
    (project / "pyproject.toml").write_text(
        (project / "pyproject.toml").read_text()
        + '\n[tool.pytest.ini_options]\nmarkers = ["hermetic: run in the lock"]\n'
    )
    toys.run_uv("lock", "--offline", cwd=project)
    hermetic = "pytestmark = pytest.mark.hermetic\n"
    for count in sorted({*SIZES, *SLOW_SIZES, 300}):
        write_tests(project / f"hermetic_{count}", count, header=hermetic)
        write_tests(project / f"plain_{count}", count)
        write_tests(project / f"isolated_{count}", count, decorator="@pytest.mark.isolated\n")
    # pytest's cache stays on, as for any user: it tells a hermetic session
    # to spawn its worker at session start (both sides pay for the cache).
    # Ours runs from a tool env with pytest-uvbuild alone, the baseline in
    # the project's env: each session loads only the plugins it needs.
    ours_cmd = [str(support.tool_python(scratch, env)), "-m", "pytest", "--uv-build", "-q"]
    uv_run_cmd = [str(toys.UV), "run", "--locked", "pytest", "-q"]
    # Warm workers are on by default outside CI, off on CI: say which, whoever
    # runs this. Their sockets go to the scratch dir, and none outlives the run.
    temp = scratch / "tmp"
    temp.mkdir()
    env = {**env, "TMPDIR": str(temp), KEEP_WARM_VARIABLE: "120"}
    cold_env = {**env, KEEP_WARM_VARIABLE: "0"}
    call = functools.partial(support.run_checked, cwd=project, env=env)
    call_cold = functools.partial(support.run_checked, cwd=project, env=cold_env)
    rows: list[dict[str, Any]] = []
    try:
        settle = functools.partial(_settle, temp)
        _measure(
            rows, repeats, scratch, env, project, call, call_cold, ours_cmd, uv_run_cmd, settle
        )
    finally:
        prewarm.stop_waiting(temp)
    support.write_results(SUITE, rows, f"python bench/bench_hermetic.py --repeats {repeats}")
    return 0


def _measure(
    rows: list[dict[str, Any]],
    repeats: int,
    scratch: Path,
    env: dict[str, str],
    project: Path,
    call: Callable[..., Any],
    call_cold: Callable[..., Any],
    ours_cmd: list[str],
    uv_run_cmd: list[str],
    settle: Callable[[], None],
) -> None:
    """Every case, appended to ``rows``; ``settle`` runs before each timed command."""

    # (a) 300 tests: ours, in three variants, against uv run pytest.
    print("(a) 300 hermetic tests vs uv run pytest", flush=True)
    in_process = functools.partial(call, [*uv_run_cmd, "plain_300"], expect="300 passed")

    def against_in_process(
        case: str, ours: Callable[[], Any], baseline: str, *, goal: str | None = None, note: str
    ) -> None:
        """Time ``ours`` side by side with 300 tests of in-process pytest; add the row."""
        ours_stats, base = side_by_side(ours, in_process, repeats, setup=settle)
        rows.append(row(SUITE, case, ours_stats, baseline, base, goal=goal, note=note))

    goal = "\u2264 1.30\u00d7"
    for case, run, extra, case_goal, note in (
        (
            "300 trivial tests, warm env cache",
            call,
            [],
            goal,
            "ours: pytest --uv-build, bodies in one worker in the locked env, forked from the "
            "warm zygote the previous run left (the default outside CI); includes writing "
            "the build record",
        ),
        (
            "300 trivial tests, warm env cache, no warm worker",
            call_cold,
            [],
            goal,
            "ours: as above with hermetic_keep_warm=0 (the default on CI): the worker starts "
            "Python and imports pytest",
        ),
        (
            "300 trivial tests, warm env cache, no build record",
            call,
            ["--uv-no-artifacts"],
            None,
            "ours: pytest --uv-build --uv-no-artifacts (the audit still runs)",
        ),
    ):
        against_in_process(
            case,
            functools.partial(run, [*ours_cmd, *extra, "hermetic_300"], expect="300 passed"),
            "uv run --locked pytest (in-process)",
            goal=case_goal,
            note=note,
        )

    # What the gap is made of: the worker is a second interpreter that must
    # start and import pytest before it can collect, which no in-process run pays.
    env_python = _locked_env_python(project, env)
    against_in_process(
        "the worker's start alone: python -c 'import pytest' in the locked env",
        lambda: call([str(env_python), "-c", "import pytest"]),
        "uv run --locked pytest (in-process), 300 trivial tests",
        note="a fixed cost of every hermetic session; the ratio is its share of the "
        "baseline's whole run",
    )

    # (b) the cost of one more test against the peers.
    print("(b) per-test cost vs pytest-forked and pytest-isolated", flush=True)

    def timed(argv: list[str], count: int, times: int) -> Stats:
        call(argv, expect=f"{count} passed")  # warm-up
        samples = []
        for _ in range(times):
            settle()
            samples.append(support.time_call(lambda: call(argv, expect=f"{count} passed")))
        return stats(samples)

    # Ours and in-process pytest side by side at each size: in-process
    # pytest's own cost of one more test (a hermetic test pays it too, as the
    # worker runs pytest's own protocol) is the floor for ours.
    pairs = {
        count: side_by_side(
            functools.partial(call, [*ours_cmd, f"hermetic_{count}"], expect=f"{count} passed"),
            functools.partial(call, [*uv_run_cmd, f"plain_{count}"], expect=f"{count} passed"),
            repeats,
            setup=settle,
        )
        for count in SIZES
    }
    ours_each = per_test({count: pair[0] for count, pair in pairs.items()})
    in_process_each = per_test({count: pair[1] for count, pair in pairs.items()})
    # pytest-forked moves reports with marshal, which pytest 9's reports break.
    for name, folder, extra, pins, sizes in (
        ("pytest-forked", "plain", ["--forked"], ["pytest<9"], SIZES),
        ("pytest-isolated", "isolated", [], [], SLOW_SIZES),
    ):
        python, versions = peer_python(scratch, env, name, *pins)
        peer_cmd = [str(python), "-m", "pytest", "-q", *extra]
        # A process per test is slow: at most three timed runs of each size.
        peer_each = per_test(
            {
                count: timed([*peer_cmd, f"{folder}_{count}"], count, min(repeats, 3))
                for count in sizes
            }
        )
        small, large = sizes
        rows.append(
            row(
                SUITE,
                "cost of one more test",
                ours_each,
                f"{name} (a process per test)",
                peer_each,
                goal="\u2264 0.05\u00d7 (20\u00d7 cheaper)",
                note=f"ours: (t({SIZES[1]}) - t({SIZES[0]})) / {SIZES[1] - SIZES[0]}; "
                f"{name}: (t({large}) - t({small})) / {large - small}; {versions}",
            )
        )

    rows.append(
        row(
            SUITE,
            "cost of one more test",
            ours_each,
            "in-process pytest (uv run --locked pytest)",
            in_process_each,
            note=f"context for the goal above: (t({SIZES[1]}) - t({SIZES[0]})) / "
            f"{SIZES[1] - SIZES[0]} on both sides; what pytest spends per test, which a "
            "hermetic test pays as well",
        )
    )

    # (c) peak memory of the outer process.
    print("(c) peak memory of the outer process", flush=True)
    shim = scratch / "maxrss.py"
    shim.write_text(MAXRSS_SHIM)
    out = scratch / "maxrss.txt"

    def peak(argv: list[str]) -> float:
        call([sys.executable, str(shim), str(out), *argv], expect="300 passed")
        return int(out.read_text()) / 1024  # KiB -> MiB

    ours_mem = [peak(["--uv-build", "-q", "hermetic_300"])]
    base_mem = [peak(["-q", "plain_300"])]
    for _ in range(repeats - 1):
        ours_mem.append(peak(["--uv-build", "-q", "hermetic_300"]))
        base_mem.append(peak(["-q", "plain_300"]))
    memory = row(
        SUITE,
        "peak memory of the outer pytest, 300 tests",
        stats(ours_mem),
        "plain pytest, in-process",
        stats(base_mem),
        note="ru_maxrss of the outer process only (the worker is a separate process); "
        "both sides run in this project's dev env, with the same plugins loaded",
    )
    memory["unit"] = "MiB"
    rows.append(memory)


if __name__ == "__main__":
    sys.exit(main())
