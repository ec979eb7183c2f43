"""Side-by-side benchmarks against the peers, and how our costs scale.

Peers: the same trivial tests run by ``uv run pytest`` (in-process, in the
project's own env), pytest-isolated (a fresh subprocess per test, and one per
module), pytest-forked (a fork per test) and tox with tox-uv (``uv sync`` into
its env, then the suite). Ours is ``pytest --uv-build`` with every test marked
``@pytest.mark.hermetic``, from a tool env that holds pytest-uvbuild and its
runtime dependencies only (``support.tool_python``), with a warm env cache.

Scaling: a cold env build against raw ``uv sync --locked`` for locks of 10, 50
and 150 packages, and a hermetic run against ``uv run pytest`` for 10 to 2000
tests.

Everything is offline except installing the tools: pytest-isolated,
pytest-forked, tox and tox-uv, and our tool env (pytest-uvbuild built from
this working tree, with its locked runtime dependencies), are installed from
the registry by uv into throwaway venvs in the scratch dir, never into this
project's lock. The toy
projects resolve against a local wheelhouse (``support.wheelhouse``).

Run: ``python bench/bench_peers.py [--repeats N] [--quick]``. ``--quick`` (or
``PYTEST_UVBUILD_BENCH_QUICK=1``, which ``bench/run.py --quick`` sets) skips the
2000-test cases and the largest lock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import support
import toys
from support import Stats, row, side_by_side, stats, time_call

SUITE = "peers"
#: Tests per module: pytest-isolated's grouped mode runs one subprocess per module.
MODULE_SIZE = 50
ISOLATED = "pytest-isolated"
FORKED = "pytest-forked"
TOX_TOOLS = ("tox", "tox-uv")
QUICK_ENV = "PYTEST_UVBUILD_BENCH_QUICK"

#: Test-suite variants: (module header, decorator before each function).
VARIANTS: dict[str, tuple[str, str]] = {
    "hermetic": ("pytestmark = pytest.mark.hermetic\n", ""),
    "plain": ("", ""),
    "isolated_each": ("", "@pytest.mark.isolated\n"),
    "isolated_grouped": ("pytestmark = pytest.mark.isolated\n", ""),
}

TOX_INI = """\
[tox]
env_list = py

[testenv]
runner = uv-venv-lock-runner
dependency_groups = dev
commands = pytest -q -p no:cacheprovider {posargs}
"""


class BenchError(RuntimeError):
    """A benchmarked command did not do what it should have."""


def run(
    argv: Sequence[str | Path], *, cwd: Path, env: dict[str, str], expect: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; raise with its output if it fails or lacks ``expect``."""
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or (expect is not None and expect not in proc.stdout):
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise BenchError(f"{' '.join(map(str, argv))} (exit {proc.returncode}):\n{tail}")
    return proc


def display(argv: Sequence[str | Path], scratch: Path) -> str:
    """A command line as a reader would type it: the host ``python``, ``uv``, ``$SCRATCH``."""
    names = {sys.executable: "python", str(toys.UV): "uv"}
    return " ".join(names.get(str(arg), str(arg).replace(str(scratch), "$SCRATCH")) for arg in argv)


def write_suite(project: Path, count: int) -> None:
    """Write ``count`` trivial tests in every variant, ``MODULE_SIZE`` per module."""
    for variant, (header, decorator) in VARIANTS.items():
        tests = project / f"tests_{variant}"
        tests.mkdir(exist_ok=True)
        for module, first in enumerate(range(0, count, MODULE_SIZE)):
            bodies = [
                f"{decorator}def test_{i}():\n"
                "    import toyalpha\n\n"
                '    assert toyalpha.__version__ == "1.0"\n'
                for i in range(first, min(first + MODULE_SIZE, count))
            ]
            text = "import pytest\n\n" + header + "\n\n" + "\n\n".join(bodies)
            (tests / f"test_m{module:03d}.py").write_text(text)


def make_venv(
    where: Path, packages: Sequence[str], env: dict[str, str], find_links: Path | None = None
) -> Path:
    """A throwaway venv with ``packages`` installed by uv; returns its interpreter."""
    if not where.exists():
        run([toys.UV, "venv", "-q", "--python", sys.executable, where], cwd=where.parent, env=env)
    python = where / "bin" / "python"
    links: list[str | Path] = ["--find-links", find_links] if find_links else []
    run(
        [toys.UV, "pip", "install", "-q", "--python", python, *links, *packages], cwd=where, env=env
    )
    return python


def forked_venv(
    scratch: Path, house: Path, env: dict[str, str], same_pytest: Sequence[str]
) -> tuple[Path, str]:
    """pytest-forked's venv: the host's pytest if pytest-forked works with it, else an older one.

    pytest-forked sends reports through :mod:`marshal`; when that breaks on a
    new pytest, every test fails, and timing that would be meaningless.
    """
    python = make_venv(scratch / "forked-venv", [FORKED, *same_pytest], env, house)
    probe = scratch / "forked-probe"
    probe.mkdir()
    (probe / "test_probe.py").write_text("def test_probe():\n    pass\n")
    argv: list[str | Path] = [
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--forked",
        probe,
    ]
    try:
        run(argv, cwd=probe, env=env, expect="1 passed")
        note = ""
    except BenchError:
        broken = versions(python, ["pytest"], env)
        make_venv(scratch / "forked-venv", [FORKED, f"pytest<{pytest_version()}"], env, house)
        run(argv, cwd=probe, env=env, expect="1 passed")
        note = f"; every test fails under pytest-forked with {broken}, so it runs an older pytest"
    return python, versions(python, [FORKED, "pytest"], env) + note


def versions(python: Path, names: Sequence[str], env: dict[str, str]) -> str:
    """``name version`` of each of ``names`` installed for ``python``."""
    listed = run(
        [toys.UV, "pip", "list", "--python", python, "--format", "json"], cwd=python.parent, env=env
    )
    found = {p["name"].lower(): p["version"] for p in json.loads(listed.stdout)}
    return ", ".join(f"{n} {found.get(n, '?')}" for n in names)


def pytest_version() -> str:
    """The host's pytest version, which the wheelhouse (hence every locked env) also has."""
    import pytest

    return pytest.__version__


def case_row(
    case: str,
    ours: Stats,
    baseline_name: str,
    baseline: Stats,
    *,
    commands: tuple[str, str],
    note: str = "",
    goal: str | None = None,
    series: str | None = None,
    x: int | None = None,
) -> dict[str, Any]:
    """A result row carrying the exact commands, and its place in a scaling series."""
    result = row(SUITE, case, ours, baseline_name, baseline, goal=goal, note=note)
    result["commands"] = {"ours": commands[0], "baseline": commands[1]}
    if series is not None:
        result["series"] = series
        result["x"] = x
    return result


def paired_once(
    ours: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> tuple[Stats, Stats]:
    """Like ``side_by_side`` without the warm-up, for baselines too slow to run twice."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        a.append(time_call(ours))
        b.append(time_call(baseline))
    return stats(a), stats(b)


def bench_test_counts(
    scratch: Path,
    house: Path,
    env: dict[str, str],
    repeats: int,
    *,
    counts: Sequence[int],
    peer_counts: Sequence[int],
    slow_counts: Sequence[int],
) -> list[dict[str, Any]]:
    """Hermetic runs against ``uv run pytest`` for every count, and against the peers for some."""
    rows: list[dict[str, Any]] = []
    # The same pytest as the locked env's, and toyalpha from the wheelhouse.
    same_pytest = [f"pytest=={pytest_version()}", "toyalpha==1.0"]
    isolated_python = make_venv(scratch / "isolated-venv", [ISOLATED, *same_pytest], env, house)
    isolated_versions = versions(isolated_python, [ISOLATED, "pytest"], env)
    forked_python, forked_versions = forked_venv(scratch, house, env, same_pytest)
    tox_python = make_venv(scratch / "tox-venv", TOX_TOOLS, env)
    tox_bin = tox_python.parent / "tox"
    tox_versions = versions(tox_python, TOX_TOOLS, env)
    # Ours runs from a tool env with pytest-uvbuild alone, as each peer from its own.
    ours_python = support.tool_python(scratch, env)

    for count in counts:
        project = toys.write_project(
            scratch / f"suite-{count}",
            house,
            name="suite",
            extra_toml="[tool.pytest.ini_options]\n",
        )
        write_suite(project, count)
        (project / "tox.ini").write_text(TOX_INI)
        passed = f"{count} passed"

        def runner(argv: list[str | Path], project: Path = project, passed: str = passed) -> Any:
            return lambda: run(argv, cwd=project, env=env, expect=passed)

        ours_argv: list[str | Path] = [ours_python, "-m", "pytest", "--uv-build", "-q"]
        ours_argv.append("tests_hermetic")
        ours = runner(ours_argv)
        baselines: list[tuple[str, list[str | Path], str]] = [
            ("uv run pytest", [toys.UV, "run", "--locked", "pytest", "-q", "tests_plain"], "")
        ]
        if count in peer_counts:
            isolated: list[str | Path] = [isolated_python, "-m", "pytest", "-q"]
            forked: list[str | Path] = [forked_python, "-m", "pytest", "-q", "--forked"]
            baselines += [
                (
                    "pytest-isolated, per test",
                    [*isolated, "tests_isolated_each"],
                    isolated_versions,
                ),
                (
                    "pytest-isolated, per module",
                    [*isolated, "tests_isolated_grouped"],
                    f"{isolated_versions}; one subprocess per {MODULE_SIZE}-test module",
                ),
                ("pytest-forked", [*forked, "tests_plain"], forked_versions),
                (
                    "tox + tox-uv",
                    [tox_bin, "run", "-q", "-e", "py", "--", "tests_plain"],
                    f"{tox_versions}; uv-venv-lock-runner, warm tox env",
                ),
            ]
        for name, argv, note in baselines:
            print(f"  {count} tests: ours vs {name}", flush=True)
            baseline = runner(argv)
            if name == "pytest-isolated, per test":
                # A fresh interpreter per test costs minutes per run: fewer runs, no warm-up.
                slow_repeats = 1 if count in slow_counts else min(repeats, 2)
                ours_stats, base_stats = paired_once(ours, baseline, slow_repeats)
                shown_note = f"{note}; {slow_repeats} paired run(s), no warm-up (too slow)"
            else:
                ours_stats, base_stats = side_by_side(ours, baseline, repeats)
                shown_note = note
            rows.append(
                case_row(
                    f"{count} hermetic tests",
                    ours_stats,
                    name,
                    base_stats,
                    commands=(display(ours_argv, scratch), display(argv, scratch)),
                    note=shown_note.strip("; "),
                    goal="\u2264 1.30\u00d7" if name == "uv run pytest" and count == 300 else None,
                    series="hermetic run vs test count" if name == "uv run pytest" else None,
                    x=count,
                )
            )
    return rows


def bench_lock_sizes(
    scratch: Path, house: Path, env: dict[str, str], repeats: int, *, sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """A cold env build (warm uv cache) against raw ``uv sync --locked``, per lock size."""
    from pytest_uvbuild.envcache import EnvCache
    from pytest_uvbuild.request import EnvRequest

    rows: list[dict[str, Any]] = []
    sources = scratch / "scale-src"
    for i in range(max(sizes)):
        toys.build_toy(sources, f"scalepkg{i:03d}", "1.0", (), house)
    for size in sizes:
        project = toys.write_project(
            scratch / f"scale-{size}",
            house,
            name=f"scale{size}",
            dependencies=[f"scalepkg{i:03d}==1.0" for i in range(size)],
            with_pytest=False,
        )
        request = EnvRequest(project_dir=project, install_project="no")

        # One cache root per size, rebuilt each time: the interpreter and uv
        # probes stay warm, as they are for a user whose lock just changed.
        cache = EnvCache(scratch / "scale-envs" / str(size))

        def ours(
            project: Path = project, request: EnvRequest = request, cache: EnvCache = cache
        ) -> None:
            cache.materialise(request, start_dir=project, rebuild=True).release()

        # The same interpreter on both sides: the one the cache resolves.
        interpreter = cache.resolve(request, project)[2].path
        raw_argv: list[str | Path] = [
            toys.UV,
            "sync",
            "--locked",
            "--no-install-project",
            "--python",
            interpreter,
        ]

        def raw(project: Path = project, argv: list[str | Path] = raw_argv) -> None:
            # Like a rebuild, this removes the previous env inside the timing.
            target = scratch / "scale-raw" / "env"
            shutil.rmtree(target, ignore_errors=True)
            run(argv, cwd=project, env={**env, "UV_PROJECT_ENVIRONMENT": str(target)})

        print(f"  lock of {size} packages: cold env build vs uv sync --locked", flush=True)
        ours_stats, raw_stats = side_by_side(ours, raw, repeats)
        rows.append(
            case_row(
                f"cold env build, {size} packages",
                ours_stats,
                "uv sync --locked (fresh env)",
                raw_stats,
                commands=(
                    "EnvCache(root).materialise(EnvRequest(install_project='no'), rebuild=True)",
                    "UV_PROJECT_ENVIRONMENT=<fresh dir> " + display(raw_argv, scratch),
                ),
                note="warm uv cache; project not installed; both sides remove the old env first",
                series="env build vs lock size",
                x=size,
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peer and scaling benchmarks and write ``bench/results/peers.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per case")
    parser.add_argument("--quick", action="store_true", help="Skip the largest cases")
    args = parser.parse_args(argv)
    quick = args.quick or os.environ.get(QUICK_ENV) == "1"

    scratch = support.scratch_dir(SUITE)
    env = support.isolated_env(scratch)
    # In-process env builds (the lock-size series) must see the same caches.
    support.share_caches_in_process(env)
    try:
        house = support.wheelhouse(scratch)
        rows = bench_test_counts(
            scratch,
            house,
            env,
            args.repeats,
            counts=(10, 100, 300) if quick else (10, 100, 300, 1000, 2000),
            peer_counts=(300,) if quick else (300, 2000),
            slow_counts=(2000,),
        )
        rows += bench_lock_sizes(
            scratch, house, env, args.repeats, sizes=(10, 50) if quick else (10, 50, 150)
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    command = "python bench/bench_peers.py " + " ".join(
        [f"--repeats {args.repeats}", *(["--quick"] if quick else [])]
    )
    support.write_results(SUITE, rows, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
