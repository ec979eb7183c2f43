"""Run every benchmark suite, then render ``docs/performance.md`` and its plots.

Each ``bench/bench_<suite>.py`` runs in its own process and writes
``bench/results/<suite>.json`` (see ``bench/support.py``). A suite that is
missing or fails does not stop the others: the page renders what exists and
says what is missing, and a failed suite's older results are not shown as if
they were new. Every number on the page comes from those JSON files; the
plots are SVG written by this script.

Usage::

    uv run --locked python bench/run.py            # all suites, 5 repeats
    uv run --locked python bench/run.py --quick    # 2 repeats, smaller cases
    uv run --locked python bench/run.py --render-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
RUN_RECORD = RESULTS / "_run.json"
PAGE = REPO / "docs" / "performance.md"
ASSETS = REPO / "docs" / "assets"
RATIO_PLOT = ASSETS / "performance-ratios.svg"
SCALING_PLOT = ASSETS / "performance-scaling.svg"
QUICK_ENV = "PYTEST_UVBUILD_BENCH_QUICK"
#: Typographic signs for the page, spelled out so that the source stays ASCII.
TIMES, DASH, DIVIDE = "\u00d7", "\u2013", "\u00f7"

#: Suites in page order, with their section titles; others follow alphabetically.
SUITES: dict[str, str] = {
    "envcache": "Env cache",
    "hermetic": "Hermetic runs",
    "record": "Build record",
    "peers": "Against the peers, and scaling",
}

#: How to read a suite's table, printed under it.
READING: dict[str, str] = {
    "envcache": (
        "The 1.2\u00d7 goal is for a cold build: a new env key, with a warm uv package "
        "cache (the *new lock* row). A *first build ever* also makes the project layer: by "
        "default (`--uv-install-project=wheel`) the project is installed as a wheel of the "
        "working tree, which the baseline's editable install never builds. The raw uv command "
        "that does that work too is `uv sync --no-editable --reinstall-package <project>`; "
        "plain `uv sync --no-editable` is no such baseline, since it installs the wheel uv "
        "cached of the project until `pyproject.toml` changes, so an edited source file is "
        "not in it. The *--uv-install-project=no* row is the env alone on both sides."
    ),
}


# -- running ---------------------------------------------------------------


@dataclass
class SuiteRun:
    """What happened to one suite in the last run."""

    suite: str
    status: str  # "ok", "failed", "missing" or "not run"
    seconds: float = 0.0
    detail: str = ""
    #: sha256 of the results file this run wrote, so that a later re-render
    #: can tell when the file was replaced by another run.
    digest: str = ""
    #: When the suite finished (UTC), and the code it measured.
    finished: str = ""
    commit: str = ""


def suite_names() -> list[str]:
    """The suites that exist, plus the expected ones that do not (yet)."""
    found = {p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py")}
    return [*SUITES, *sorted(found - set(SUITES))]


def run_suites(names: Sequence[str], repeats: int, *, quick: bool) -> list[SuiteRun]:
    """Run each suite in its own process; a failure is recorded, not raised."""
    runs = []
    env = {**os.environ, QUICK_ENV: "1" if quick else "0"}
    for name in names:
        commit = git_commit()
        script = BENCH / f"bench_{name}.py"
        if not script.exists():
            runs.append(SuiteRun(name, "missing", detail=f"bench/bench_{name}.py does not exist"))
            continue
        print(f"=== {name}: python bench/bench_{name}.py --repeats {repeats}", flush=True)
        started = time.time()
        proc = subprocess.run(
            [sys.executable, str(script), "--repeats", str(repeats)], cwd=REPO, env=env, check=False
        )
        seconds = time.time() - started
        result = RESULTS / f"{name}.json"
        fresh = result.exists() and result.stat().st_mtime >= started
        if proc.returncode != 0:
            runs.append(SuiteRun(name, "failed", seconds, f"exit status {proc.returncode}"))
        elif not fresh:
            runs.append(SuiteRun(name, "failed", seconds, f"wrote no bench/results/{name}.json"))
        else:
            digest = hashlib.sha256(result.read_bytes()).hexdigest()
            finished = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
            runs.append(SuiteRun(name, "ok", seconds, "", digest, finished, commit))
    return runs


def git_commit() -> str:
    """The checked-out commit, with ``+dirty`` when the working tree has changes.

    The files a benchmark run writes itself (results, this page, its plots)
    do not count: a run of several suites would otherwise mark all but the
    first as dirty.
    """

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD")
    if not sha:
        return "unknown"
    own_output = [
        f":(exclude){path}" for path in ("bench/results", "docs/performance.md", "docs/assets")
    ]
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *own_output)
    return sha + ("+dirty" if changed else "")


def machine_facts() -> dict[str, Any]:
    """What the machine is, beyond what each suite records."""
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    sys.path.insert(0, str(BENCH))
    import support

    return {**support.machine(), "cpu": cpu, "memory": memory, "load_before": load}


def merge_runs(new: Sequence[SuiteRun]) -> list[SuiteRun]:
    """This run's suites, plus the last recorded status of the suites it did not run."""
    previous: dict[str, SuiteRun] = {}
    if RUN_RECORD.exists():
        previous = {r["suite"]: SuiteRun(**r) for r in json.loads(RUN_RECORD.read_text())["runs"]}
    latest = {r.suite: r for r in new}
    return [
        latest.get(name) or previous.get(name) or SuiteRun(name, "not run")
        for name in suite_names()
    ]


# -- reading results -------------------------------------------------------


def load_results(runs: Sequence[SuiteRun], results_dir: Path) -> dict[str, dict[str, Any]]:
    """The JSON of every suite whose last run succeeded and whose file is still that run's.

    A suite whose file changed since the run is marked ``stale`` in ``runs``.
    """
    results = {}
    for run in runs:
        path = results_dir / f"{run.suite}.json"
        if run.status != "ok" or not path.exists():
            continue
        data = path.read_bytes()
        if run.digest and hashlib.sha256(data).hexdigest() != run.digest:
            run.status, run.detail = "stale", f"{path.name} changed since this run"
            continue
        results[run.suite] = json.loads(data)
    return results


def fmt_time(seconds: float) -> str:
    """A duration with a unit that keeps three significant figures or so."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_stats(stats: dict[str, Any], unit: str) -> str:
    """The median, then the min and max in brackets."""
    if unit == "s":
        low, high = fmt_time(stats["min"]), fmt_time(stats["max"])
        return f"{fmt_time(stats['median'])} ({low}{DASH}{high})"
    return f"{stats['median']:.1f} {unit} ({stats['min']:.1f}{DASH}{stats['max']:.1f})"


def fmt_ratio(ratio: float | None) -> str:
    """A ratio of medians, ours over the baseline, with two significant figures when small."""
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}{TIMES}" if ratio >= 0.1 else f"{ratio:.2g}{TIMES}"


# -- plots -----------------------------------------------------------------

PLOT_WIDTH = 820
FONT = 'font-family="sans-serif" font-size="12"'
OURS_COLOUR = "#1f6fb2"
BASE_COLOUR = "#c0392b"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{width}" height="{height}" fill="white"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def ratio_plot(rows: Sequence[dict[str, Any]]) -> str:
    """Horizontal bars of ours/baseline on a log axis, with a line at one."""
    # Time rows only: a memory ratio (``unit`` MiB) is in the tables, not on a time axis.
    rows = [r for r in rows if r.get("ratio") and r.get("unit", "s") == "s"]
    width, label_w, bar_h, top = 960, 520, 18, 40
    plot_w = width - label_w - 60
    height = top + bar_h * len(rows) + 50
    ratios = [r["ratio"] for r in rows] or [1.0]
    lo = 10 ** math.floor(math.log10(min(*ratios, 1.0)))
    hi = 10 ** math.ceil(math.log10(max(*ratios, 1.0) * 1.0001))
    if lo == hi:
        hi = lo * 10

    def x(value: float) -> float:
        return label_w + plot_w * (math.log10(value) - math.log10(lo)) / math.log10(hi / lo)

    body = [
        f'<text x="{width / 2}" y="20" text-anchor="middle" {FONT} font-weight="bold">'
        f"Time ratio, ours {DIVIDE} baseline (medians; log scale; "
        f"left of 1{TIMES} means we are faster)</text>"
    ]
    decade = lo
    while decade <= hi * 1.0001:
        gx = x(decade)
        body.append(
            f'<line x1="{gx:.1f}" y1="{top - 5}" x2="{gx:.1f}" y2="{height - 40}" stroke="#ddd"/>'
        )
        body.append(
            f'<text x="{gx:.1f}" y="{height - 25}" text-anchor="middle" {FONT}>'
            f"{decade:g}{TIMES}</text>"
        )
        decade *= 10
    for i, r in enumerate(rows):
        y = top + i * bar_h
        label = f"{r['suite']}: {r['case']} vs {r['baseline_name']}"
        label = label if len(label) <= 72 else label[:71] + "\u2026"
        x0, x1 = sorted((x(1.0), x(r["ratio"])))
        body.append(
            f'<text x="{label_w - 6}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" {FONT}>'
            f"{escape(label)}</text>"
        )
        body.append(
            f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1):.1f}" height="{bar_h - 6}" '
            f'fill="{OURS_COLOUR}"/>'
        )
        # The value sits right of the bar's end, or right of the 1x line for a
        # faster bar, where it cannot run into the labels.
        body.append(
            f'<text x="{x1 + 4:.1f}" y="{y + bar_h * 0.7:.1f}" {FONT}>'
            f"{fmt_ratio(r['ratio'])}</text>"
        )
    one = x(1.0)
    body.append(
        f'<line x1="{one:.1f}" y1="{top - 5}" x2="{one:.1f}" y2="{height - 40}" '
        'stroke="black" stroke-width="1.5"/>'
    )
    return _svg(width, height, body, "Ratio of medians, ours over baseline")


def _panel(
    series: dict[str, list[tuple[int, dict[str, Any]]]],
    origin: tuple[float, float],
    size: tuple[float, float],
    title: str,
    x_label: str,
) -> list[str]:
    """One line chart with min-to-max whiskers, log x axis, linear y axis from 0."""
    ox, oy = origin
    w, h = size
    points = [p for line in series.values() for p in line]
    xs = [p[0] for p in points]
    x_lo, x_hi = math.log10(min(xs)), math.log10(max(xs))
    x_span = (x_hi - x_lo) or 1.0
    y_hi = max(p[1]["max"] for p in points) * 1.1 or 1.0

    def px(value: int) -> float:
        return ox + w * (math.log10(value) - x_lo) / x_span

    def py(seconds: float) -> float:
        return oy + h - h * seconds / y_hi

    body = [
        f'<text x="{ox + w / 2}" y="{oy - 12}" text-anchor="middle" {FONT} '
        f'font-weight="bold">{escape(title)}</text>',
        f'<line x1="{ox}" y1="{oy + h}" x2="{ox + w}" y2="{oy + h}" stroke="black"/>',
        f'<line x1="{ox}" y1="{oy}" x2="{ox}" y2="{oy + h}" stroke="black"/>',
        f'<text x="{ox + w / 2}" y="{oy + h + 34}" text-anchor="middle" {FONT}>'
        f"{escape(x_label)}</text>",
    ]
    for value in sorted(set(xs)):
        body.append(
            f'<text x="{px(value):.1f}" y="{oy + h + 16}" text-anchor="middle" {FONT}>'
            f"{value}</text>"
        )
    for i in range(5):
        seconds = y_hi * i / 4
        body.append(
            f'<text x="{ox - 6}" y="{py(seconds) + 4:.1f}" text-anchor="end" {FONT}>'
            f"{fmt_time(seconds) if seconds else '0'}</text>"
        )
        body.append(
            f'<line x1="{ox}" y1="{py(seconds):.1f}" x2="{ox + w}" y2="{py(seconds):.1f}" '
            'stroke="#eee"/>'
        )
    for (label, unsorted), colour in zip(series.items(), (OURS_COLOUR, BASE_COLOUR), strict=False):
        line = sorted(unsorted, key=lambda p: p[0])
        path = " ".join(f"{px(v):.1f},{py(s['median']):.1f}" for v, s in line)
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for v, s in line:
            body.append(
                f'<line x1="{px(v):.1f}" y1="{py(s["min"]):.1f}" x2="{px(v):.1f}" '
                f'y2="{py(s["max"]):.1f}" stroke="{colour}"/>'
            )
            body.append(
                f'<circle cx="{px(v):.1f}" cy="{py(s["median"]):.1f}" r="3" fill="{colour}"/>'
            )
        legend_y = oy + 14 + 16 * list(series).index(label)
        body.append(
            f'<rect x="{ox + 8}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>'
        )
        body.append(f'<text x="{ox + 22}" y="{legend_y}" {FONT}>{escape(label)}</text>')
    return body


def scaling_plot(rows: Sequence[dict[str, Any]]) -> str | None:
    """One panel per scaling series: ours and the baseline against the series' x."""
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("series"):
            series.setdefault(r["series"], []).append(r)
    if not series:
        return None
    panel_w, panel_h, pad = 330, 220, 70
    width = max(PLOT_WIDTH, len(series) * (panel_w + 2 * pad))
    body: list[str] = []
    for i, (name, members) in enumerate(sorted(series.items())):
        baseline = members[0]["baseline_name"]
        lines = {
            "ours": [(int(r["x"]), r["ours"]) for r in members],
            baseline: [(int(r["x"]), r["baseline"]) for r in members],
        }
        unit = "tests" if "test" in name else "packages in the lock"
        body += _panel(
            lines,
            (pad + i * (panel_w + 2 * pad), 50),
            (panel_w, panel_h),
            name,
            f"{unit} (log scale); whiskers: min{DASH}max",
        )
    return _svg(width, 50 + panel_h + 70, body, "Scaling: median wall time")


# -- the page --------------------------------------------------------------


def render(
    runs: Sequence[SuiteRun],
    facts: dict[str, Any],
    argv_shown: str,
    *,
    results_dir: Path = RESULTS,
    assets_dir: Path = ASSETS,
) -> str:
    """The Markdown of ``docs/performance.md``; writes the plots into ``assets_dir``."""
    results = load_results(runs, results_dir)
    machine = facts  # what run.py itself recorded about the machine
    lines = [
        "<!-- Generated by bench/run.py from bench/results/*.json; do not edit by hand. -->",
        "",
        "# Performance",
        "",
        "Every number on this page was measured by the scripts in `bench/` and written",
        "here by `bench/run.py`. Each case runs ours and its baseline *side by side in",
        "one run*, alternating, after one warm-up of each (unless a row says otherwise);",
        f"tables give the median and, in brackets, the min{DASH}max, and the ratio is",
        f"ours {DIVIDE} baseline of the medians, so below 1{TIMES} means we are faster.",
        "",
        "## How these were measured",
        "",
        "To reproduce (`--quick` for fewer repeats and smaller cases):",
        "",
        "```console",
        "$ uv run --locked python bench/run.py",
        "```",
        "",
        f"- Last rendered by `{argv_shown}`, finished {facts.get('finished', '?')} (UTC);",
        "  the table below says when each suite ran and which commit it measured",
        "  (`+dirty`: with uncommitted changes in the working tree, other than the",
        "  benchmark's own results).",
        f"- Machine: {facts.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs, "
        f"{facts.get('memory', '?')} RAM; load average before the run: "
        f"{facts.get('load_before', '?')}",
        f"- OS: {machine.get('platform', '?')}",
        f"- Python {machine.get('python', '?')}, pytest {machine.get('pytest', '?')}, "
        f"{machine.get('uv', 'uv ?')}",
        "",
        "| Suite | Command | Status | Wall time | Finished (UTC) | Code measured |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        command = results.get(run.suite, {}).get("command") or f"python bench/bench_{run.suite}.py"
        status = run.status + (f": {run.detail}" if run.detail else "")
        wall = fmt_time(run.seconds) if run.seconds else "—"
        lines.append(
            f"| {run.suite} | `{command}` | {status} | {wall} | {run.finished or '—'} "
            f"| {run.commit or '—'} |"
        )
    missing = [r for r in runs if r.status != "ok"]
    if missing:
        lines += [
            "",
            '!!! warning "Incomplete run"',
            "    These suites have no results on this page: "
            + ", ".join(f"`{r.suite}` ({r.status})" for r in missing)
            + ".",
        ]
    all_rows = [r for name in runs if (res := results.get(name.suite)) for r in res["rows"]]
    if any(r.get("ratio") for r in all_rows):
        assets_dir.mkdir(parents=True, exist_ok=True)
        (assets_dir / RATIO_PLOT.name).write_text(ratio_plot(all_rows))
        lines += ["", f"![Ratio of medians per case](assets/{RATIO_PLOT.name})"]
    scaling = scaling_plot(all_rows)
    if scaling:
        assets_dir.mkdir(parents=True, exist_ok=True)
        (assets_dir / SCALING_PLOT.name).write_text(scaling)
        lines += ["", f"![Scaling: median wall time](assets/{SCALING_PLOT.name})"]
    for run in runs:
        if run.suite not in results:
            continue
        rows = results[run.suite]["rows"]
        title = SUITES.get(run.suite, run.suite)
        lines += [
            "",
            f"## {title}",
            "",
            f"From `{results[run.suite]['command']}`.",
            "",
            "| Case | Ours | Baseline | Baseline's result | Ratio | Goal | Note |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            unit = r.get("unit", "s")
            lines.append(
                f"| {r['case']} | {fmt_stats(r['ours'], unit)} | {r['baseline_name']} "
                f"| {fmt_stats(r['baseline'], unit)} | {fmt_ratio(r.get('ratio'))} "
                f"| {r.get('goal') or '—'} | {(r.get('note') or '—').replace('|', '/')} |"
            )
        if run.suite in READING:
            lines += ["", READING[run.suite]]
        commands = [r for r in rows if r.get("commands")]
        if commands:
            lines += ["", "Exact commands per case:", ""]
            seen = set()
            for r in commands:
                for side in ("ours", "baseline"):
                    text = r["commands"][side]
                    if text not in seen:
                        seen.add(text)
                        lines.append(f"- `{text}`")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suites (unless ``--render-only``) and write the page and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=None, help="Timed runs per case")
    parser.add_argument("--quick", action="store_true", help="2 repeats and smaller cases")
    parser.add_argument("--only", action="append", default=[], help="Run only this suite")
    parser.add_argument(
        "--render-only", action="store_true", help="Re-render from the last run's results"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    shown = "uv run --locked python bench/run.py" + (" --quick" if args.quick else "")
    if args.repeats:
        shown += f" --repeats {args.repeats}"
    shown += "".join(f" --only {name}" for name in args.only)
    if args.render_only:
        record = json.loads(RUN_RECORD.read_text())
        runs = [SuiteRun(**r) for r in record["runs"]]
        facts, shown = record["facts"], record["argv"]
    else:
        names = args.only or suite_names()
        facts = machine_facts()
        runs = merge_runs(run_suites(names, repeats, quick=args.quick))
        facts["finished"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        RESULTS.mkdir(parents=True, exist_ok=True)
        RUN_RECORD.write_text(
            json.dumps(
                {"argv": shown, "facts": facts, "runs": [r.__dict__ for r in runs]}, indent=2
            )
            + "\n"
        )
    PAGE.write_text(render(runs, facts, shown))
    print(f"wrote {PAGE.relative_to(REPO)}")
    for run in runs:
        print(f"{run.suite}: {run.status} {run.detail}".rstrip())
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
