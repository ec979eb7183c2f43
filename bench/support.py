"""Shared pieces of the benchmark scripts: timing, result rows, isolated fixtures.

Every bench script measures our case and its baseline *side by side in one
run*, interleaved, and reports medians with min and max. Results go to
``bench/results/<suite>.json``; ``bench/run.py`` renders them into
``docs/performance.md``. Nothing here asserts a speed: the numbers are
reported, never tested.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "tests"))

import toys  # noqa: E402 - lives in tests/, shared with the test suite


@dataclass(frozen=True)
class Stats:
    """Median, min and max of repeated timings, in seconds."""

    median: float
    min: float
    max: float
    samples: int


def stats(samples: Sequence[float]) -> Stats:
    """Summarise timings."""
    return Stats(statistics.median(samples), min(samples), max(samples), len(samples))


def time_call(fn: Callable[[], object]) -> float:
    """Return the wall time of one call, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    repeats: int,
    *,
    setup: Callable[[], object] | None = None,
) -> tuple[Stats, Stats]:
    """Time ``ours`` and ``baseline`` alternately ``repeats`` times each (after one warm-up)."""
    for fn in (ours, baseline):
        if setup:
            setup()
        fn()
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        if setup:
            setup()
        a.append(time_call(ours))
        if setup:
            setup()
        b.append(time_call(baseline))
    return stats(a), stats(b)


def row(
    suite: str,
    case: str,
    ours: Stats,
    baseline_name: str,
    baseline: Stats,
    *,
    goal: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One result row: our timing, the baseline's, and their ratio of medians."""
    return {
        "suite": suite,
        "case": case,
        "ours": asdict(ours),
        "baseline_name": baseline_name,
        "baseline": asdict(baseline),
        "ratio": ours.median / baseline.median if baseline.median else None,
        "goal": goal,
        "note": note,
    }


def machine() -> dict[str, Any]:
    """Facts about the machine and tool versions, for the report."""
    uv_version = subprocess.run(
        [str(toys.UV), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    import pytest

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "uv": uv_version,
        "pytest": pytest.__version__,
    }


def write_results(suite: str, rows: list[dict[str, Any]], command: str) -> Path:
    """Write ``bench/results/<suite>.json`` and print a small table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{suite}.json"
    payload = {"suite": suite, "command": command, "machine": machine(), "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "n/a"
        print(
            f"{r['case']:<55} ours {r['ours']['median'] * 1000:9.1f} ms  "
            f"{r['baseline_name']:<35} {r['baseline']['median'] * 1000:9.1f} ms  {ratio}"
        )
    return out


def isolated_env(scratch: Path) -> dict[str, str]:
    """Environment variables that keep a benchmark away from the user's caches."""
    env = dict(os.environ)
    env.update(
        UV_PYTHON_DOWNLOADS="never",
        UV_NO_PROGRESS="1",
        UV_CACHE_DIR=str(scratch / "uv-cache"),
        PYTEST_UVBUILD_CACHE_DIR=str(scratch / "env-cache"),
    )
    env.pop("VIRTUAL_ENV", None)
    # Some shells (and this project's sandbox) set it; a user's machine keeps
    # .pyc files, and without them every run recompiles pytest.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def share_caches_in_process(env: dict[str, str]) -> None:
    """Point this process at the isolated caches too, for cases measured in-process."""
    os.environ.update(
        {k: env[k] for k in ("UV_CACHE_DIR", "PYTEST_UVBUILD_CACHE_DIR", "UV_PYTHON_DOWNLOADS")}
    )


def run_checked(
    argv: Sequence[str | Path], *, cwd: Path, env: dict[str, str], expect: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; stop the benchmark if it fails or its stdout lacks ``expect``.

    A benchmark that times a failing command measures nothing, so any
    failure ends the run with the command's output.
    """
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    command = " ".join(map(str, argv))
    if expect is not None and expect not in proc.stdout:
        raise SystemExit(f"{command} did not report {expect!r}:\n{proc.stdout}{proc.stderr}")
    if expect is None and proc.returncode != 0:
        raise SystemExit(f"{command} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line every suite shares: its docstring's first line and ``--repeats``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each side")
    return parser


def workspace(suite: str, *, in_process: bool = False) -> tuple[Path, dict[str, str], Path]:
    """A fresh scratch dir, the isolated environment for it, and the offline wheelhouse.

    With ``in_process``, this process uses the same isolated caches, for the
    cases a suite measures in-process rather than in a subprocess.
    """
    scratch = scratch_dir(suite)
    env = isolated_env(scratch)
    if in_process:
        share_caches_in_process(env)
    return scratch, env, wheelhouse(scratch)


def tool_python(scratch: Path, env: dict[str, str]) -> Path:
    """A venv that holds pytest-uvbuild (this working tree) and its locked runtime dependencies.

    It is what a CI job runs a hermetic suite from: the outer session loads
    pytest's plugins and ours, as an in-process baseline in the project's
    own env loads pytest's alone. (This project's dev env also has
    pytest-xdist and dozens of other distributions, which every session
    there imports or scans.)
    """
    venv = scratch / "tool-venv"
    uv = str(toys.UV)
    requirements = scratch / "tool-requirements.txt"
    export = [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "-q"]
    run_checked([*export, "-o", str(requirements)], cwd=REPO, env=env)
    run_checked([uv, "venv", "-q", "--python", sys.executable, str(venv)], cwd=scratch, env=env)
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "-q", "--python", str(python)]
    run_checked([*install, "-r", str(requirements)], cwd=scratch, env=env)
    run_checked([*install, "--no-deps", str(REPO)], cwd=scratch, env=env)
    return python


def scratch_dir(name: str) -> Path:
    """A fresh temporary directory for one benchmark run."""
    return Path(tempfile.mkdtemp(prefix=f"uvbuild-bench-{name}-"))


def wheelhouse(scratch: Path) -> Path:
    """Build the toy wheelhouse (plus pytest from the registry) under ``scratch``."""
    import pytest

    registry = REPO / ".pytest_cache" / "d" / toys.REGISTRY_WHEELS_DIR
    if not list(registry.glob(f"pytest-{pytest.__version__}-*.whl")):
        (registry / ".complete").unlink(missing_ok=True)
    toys.fetch_registry_wheels(registry, toys.registry_wheels(pytest.__version__))
    return toys.fill_wheelhouse(scratch / "wheelhouse", registry, scratch / "toy-src")
