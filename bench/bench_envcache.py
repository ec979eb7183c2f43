"""The env cache against uv itself, side by side in one run (medians, min, max).

(a) A cache hit inside the plugin (``EnvCache.materialise`` on a warm key,
    in-process) against uv's own no-op ``uv sync --locked`` of an env that is
    already in sync (a subprocess, as any tool that delegates to uv pays it).
(b) A cold env build with a warm uv package cache against raw ``uv sync
    --locked`` into a fresh directory. Goal: 1.2x or less. Rows: a new
    lock with unchanged sources (every repeat adds a comment to ``uv.lock``,
    in one env cache, so the project layer of the previous env is linked,
    not built); a first build ever (a fresh env cache each repeat: the
    project wheel is built too), against uv's editable install and against
    the raw uv command that also installs a fresh wheel of the working tree
    (``--no-editable --reinstall-package``); and a first build ever of the
    env alone (``--uv-install-project=no`` against ``--no-install-project``).
    Ours runs ``uv sync --no-install-local`` with the project layer
    alongside; ``uv export`` is not asked, since the project is the lock's
    only local package.
(c) A warm ``python -m pytest --uv-build`` of one test that asks for
    ``uv_env`` against plain ``python -m pytest`` of one trivial test.
    Goal: 1.10x or less. ``--uv-build`` also writes (or, with
    ``--uv-no-artifacts``, still audits) a build record; the fixture alone,
    without ``--uv-build``, measures the env cache by itself.

Everything is offline against the toy wheelhouse (``support.wheelhouse``);
nothing touches the user's caches. Each side takes ``3 * N`` interleaved
samples (the in-process hit ``10 * N``): single runs on a shared 2-core
machine vary by 10% and more, and the goals are 10-20% apart. Run:
``python bench/bench_envcache.py [--repeats N]``.
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import support
import toys
from support import row, side_by_side

SUITE = "envcache"

ENV_TEST = "def test_env(uv_env):\n    assert uv_env.packages['toyalpha'] == '1.0'\n"
TRIVIAL_TEST = "def test_trivial():\n    assert True\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three comparisons and write ``bench/results/envcache.json``."""
    repeats: int = support.argument_parser(__doc__).parse_args(argv).repeats
    samples = 3 * repeats

    # The in-process side (a) must see the same isolated caches as the subprocesses.
    scratch, env, house = support.workspace(SUITE, in_process=True)
    project = toys.write_project(scratch / "project", house)
    # Both sides of (c) run in the same project dir, with the same config and
    # one named test file each, so that only the plugin's work differs.
    (project / "test_env.py").write_text(ENV_TEST)
    (project / "test_trivial.py").write_text(TRIVIAL_TEST)
    uv = str(toys.UV)
    rows: list[dict[str, Any]] = []

    # Warm uv's package cache and our env cache once.
    support.run_checked(
        [sys.executable, "-m", "pytest", "-q", "--uv-build", "test_env.py"], cwd=project, env=env
    )

    # (a) the cache hit against uv's no-op sync.
    from pytest_uvbuild.envcache import EnvCache, EnvRequest
    from pytest_uvbuild.request import InstallMode

    cache_root = Path(env["PYTEST_UVBUILD_CACHE_DIR"])
    request = EnvRequest(project_dir=project, offline=True)

    def hit() -> None:
        EnvCache(cache_root).materialise(request, start_dir=project).release()

    synced_env = scratch / "synced-venv"
    sync_env = {**env, "UV_PROJECT_ENVIRONMENT": str(synced_env)}
    sync = [uv, "sync", "--locked", "--offline", "--python", sys.executable]
    support.run_checked(sync, cwd=project, env=sync_env)
    ours, base = side_by_side(
        hit, lambda: support.run_checked(sync, cwd=project, env=sync_env), repeats * 10
    )
    rows.append(
        row(
            SUITE,
            "cache hit inside the plugin (EnvCache.materialise, warm)",
            ours,
            "uv sync --locked (no-op, in sync)",
            base,
            goal="5 ms or less",
            note="ours in-process: no uv call, no lock parse; uv's no-op is a subprocess",
        )
    )

    # (b) a cold build with a warm uv package cache, in a copy of the project
    # whose lock the first row edits.
    cold_project = Path(shutil.copytree(project, scratch / "cold-project"))
    cold_request = EnvRequest(project_dir=cold_project, offline=True)
    counter = iter(range(1_000_000))
    fresh: dict[str, Path] = {"cache": scratch / "cold" / "cache-relocked"}

    def new_venv() -> Path:
        fresh["venv"] = scratch / "cold" / f"venv-{next(counter)}"
        return fresh["venv"]

    def new_lock() -> None:
        # A comment changes the lock's bytes (so the env key) but not what
        # it locks: uv accepts it with --locked, and the sources stay as they were.
        with (cold_project / "uv.lock").open("a") as fh:
            fh.write(f"# bench {new_venv().name}\n")

    def new_cache() -> None:
        fresh["cache"] = scratch / "cold" / f"cache-{new_venv().name}"

    def cold_ours(install_project: InstallMode = "wheel") -> None:
        request = cold_request._replace(install_project=install_project)
        EnvCache(fresh["cache"]).materialise(request, start_dir=cold_project).release()

    def cold_uv(*flags: str) -> None:
        support.run_checked(
            [*sync, *flags],
            cwd=cold_project,
            env={**env, "UV_PROJECT_ENVIRONMENT": str(fresh["venv"])},
        )

    # (case, setup, our install mode, baseline, the baseline's flags, note)
    cold_cases: list[tuple[str, Callable[[], None], InstallMode, str, tuple[str, ...], str]] = [
        (
            "cold env build (new lock, same sources), warm uv package cache",
            new_lock,
            "wheel",
            "uv sync --locked into a fresh dir",
            (),
            "ours = uv sync --no-install-local; uv export is not asked (the project is the "
            "lock's only local package); the project layer of the previous env (same "
            "sources, interpreter, uv) is hard-linked",
        ),
        (
            "cold env build (first build ever), warm uv package cache",
            new_cache,
            "wheel",
            "uv sync --locked into a fresh dir",
            (),
            "a fresh env cache each repeat: ours also builds the project as a wheel of the "
            "working tree (uv build --wheel, then uv pip install --target), alongside the "
            "sync; uv's editable install builds nothing",
        ),
        (
            "cold env build (first build ever), warm uv package cache",
            new_cache,
            "wheel",
            "uv sync --locked --no-editable --reinstall-package demo into a fresh dir",
            ("--no-editable", "--reinstall-package", "demo"),
            "the raw uv command that also installs a wheel of the working tree; without "
            "--reinstall-package, uv sync --no-editable installs the wheel it cached "
            "earlier, which misses later source edits",
        ),
        (
            "cold env build (first build ever, --uv-install-project=no), warm uv package cache",
            new_cache,
            "no",
            "uv sync --locked --no-install-project into a fresh dir",
            ("--no-install-project",),
            "the env alone on both sides: no project layer, no project install",
        ),
    ]
    for case, setup, install_project, baseline, flags, note in cold_cases:
        ours, base = side_by_side(
            functools.partial(cold_ours, install_project),
            functools.partial(cold_uv, *flags),
            samples,
            setup=setup,
        )
        rows.append(row(SUITE, case, ours, baseline, base, goal="1.2x or less", note=note))

    # The same work done by hand with uv, one command after the other: what
    # the first build costs without our orchestration (and its parallelism).
    def cold_by_hand() -> None:
        venv, layer = fresh["venv"], fresh["cache"] / "layer"
        common = ["--python", sys.executable, "--offline"]
        support.run_checked(
            [uv, "sync", "--locked", "--no-install-local", "-q", *common],
            cwd=cold_project,
            env={**env, "UV_PROJECT_ENVIRONMENT": str(venv)},
        )
        support.run_checked(
            [uv, "build", "--wheel", "-q", "-o", str(layer / "w"), *common],
            cwd=cold_project,
            env=env,
        )
        wheels = [str(w) for w in (layer / "w").glob("*.whl")]
        install = [uv, "pip", "install", "--no-deps", "-q", "--target", str(layer / "site")]
        support.run_checked([*install, *common, *wheels], cwd=cold_project, env=env)

    ours, base = side_by_side(cold_ours, cold_by_hand, samples, setup=new_cache)
    shutil.rmtree(scratch / "cold", ignore_errors=True)
    rows.append(
        row(
            SUITE,
            "cold env build (first build ever), warm uv package cache",
            ours,
            "the same uv commands run by hand in sequence",
            base,
            note="sync --no-install-local, build --wheel, pip install --target",
        )
    )

    # (c) a warm pytest session asking for uv_env against a plain trivial run.
    # The project is no git checkout, so the build record asks git nothing;
    # the last case is the same project committed to git, where two git
    # queries run while the session does.
    checkout = Path(shutil.copytree(project, scratch / "checkout"))
    # As in any project, bytecode is ignored (builds/ ignores itself).
    (checkout / ".gitignore").write_text("__pycache__/\n")
    git_env = {**env, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid"}
    git_env.update(GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid")
    for git_args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        support.run_checked(["git", *git_args], cwd=checkout, env=git_env)
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    for case, extra, where in (
        ("warm pytest --uv-build, one test using uv_env", ["--uv-build"], project),
        (
            "warm pytest --uv-build --uv-no-artifacts, one test using uv_env",
            ["--uv-build", "--uv-no-artifacts"],
            project,
        ),
        ("warm pytest (no --uv-build), one test using uv_env", [], project),
        (
            "warm pytest --uv-build in a git checkout, one test using uv_env",
            ["--uv-build"],
            checkout,
        ),
    ):
        ours, base = side_by_side(
            functools.partial(
                support.run_checked, [*pytest_cmd, *extra, "test_env.py"], cwd=where, env=env
            ),
            functools.partial(
                support.run_checked, [*pytest_cmd, "test_trivial.py"], cwd=where, env=env
            ),
            samples,
        )
        rows.append(
            row(
                SUITE,
                case,
                ours,
                "python -m pytest, one trivial test (same project)",
                base,
                goal="1.10x or less",
            )
        )

    support.write_results(SUITE, rows, f"python bench/bench_envcache.py --repeats {repeats}")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
