"""The build record against doing its build steps by hand, side by side in one run.

(a) Writing a record cold (a new id: ``uv export``, ``uv build --sdist``,
    the deterministic repack, SBOM, audit, manifest), in-process, against
    running ``uv build --sdist`` and ``uv export --frozen`` by hand.
(b) A warm record (the same id: the record is reused, only ``metadata.json``,
    ``audit.*`` and ``SHA256SUMS`` are rewritten, and git is asked for the
    commit), in-process, against the same two uv commands. Goal: under 20 ms.
(c) A warm ``python -m pytest --uv-build`` session with its record against
    the same session with the record plugin blocked (``-p no:uvbuild-record``):
    what the record adds to a user's session, imports included.

Everything is offline against the toy wheelhouse; nothing touches the user's
caches. Run: ``python bench/bench_record.py [--repeats N]``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

import support
import toys
from support import row, side_by_side

SUITE = "record"
ENV_TEST = "def test_env(uv_env):\n    assert uv_env.packages['toyalpha'] == '1.0'\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the three comparisons and write ``bench/results/record.json``."""
    repeats: int = support.argument_parser(__doc__).parse_args(argv).repeats

    scratch, env, house = support.workspace(SUITE, in_process=True)
    os.environ.pop("SOURCE_DATE_EPOCH", None)
    project = toys.write_project(scratch / "project", house)
    (project / "test_env.py").write_text(ENV_TEST)
    # A real project is a git checkout, and the record asks git about it.
    (project / ".gitignore").write_text(".pytest_cache/\n__pycache__/\n")
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    for git_args in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-q", "-m", "bench"]):
        support.run_checked(["git", "-C", str(project), *git_args], cwd=project, env=env)

    from pytest_uvbuild import artifacts
    from pytest_uvbuild.envcache import EnvCache
    from pytest_uvbuild.request import EnvRequest

    cache = EnvCache(scratch / "env-cache")
    uv_env = cache.materialise(EnvRequest(project_dir=project), start_dir=project)
    builds = scratch / "builds"
    index = scratch / "index"
    run_facts = {"exit_status": 0}

    def record() -> None:
        artifacts.record_session(
            uv_env,
            cache.uv,
            builds_root=builds,
            index_dir=index,
            baseline=None,
            gate=False,
            verify=False,
            offline=True,
            run=run_facts,
        )

    by_hand_out = scratch / "by-hand"

    requirements = by_hand_out / "requirements.txt"
    python = str(uv_env.interpreter.path)
    build_argv = [str(toys.UV), "build", "--sdist", "--offline", "--python", python, "-q"]
    export_argv = [str(toys.UV), "export", "--frozen", "--offline", "--no-emit-project", "-q"]

    def by_hand() -> None:
        shutil.rmtree(by_hand_out, ignore_errors=True)
        support.run_checked([*build_argv, "-o", str(by_hand_out)], cwd=project, env=env)
        support.run_checked([*export_argv, "-o", str(requirements)], cwd=project, env=env)

    def forget_records() -> None:
        shutil.rmtree(builds, ignore_errors=True)
        shutil.rmtree(index, ignore_errors=True)

    baseline_name = "uv build --sdist + uv export"
    rows = []
    cold, hand = side_by_side(record, by_hand, repeats, setup=forget_records)
    rows.append(row(SUITE, "record, cold (new id)", cold, baseline_name, hand, note="in-process"))
    record()
    warm, hand = side_by_side(record, by_hand, repeats)
    rows.append(
        row(
            SUITE,
            "record, warm (same id, reused)",
            warm,
            baseline_name,
            hand,
            goal="< 20 ms",
            note="in-process",
        )
    )

    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--uv-build"]
    support.run_checked(pytest_argv, cwd=project, env=env)  # materialise, write the record once
    with_record, without = side_by_side(
        lambda: support.run_checked(pytest_argv, cwd=project, env=env),
        lambda: support.run_checked(
            [*pytest_argv, "-p", "no:uvbuild-record"], cwd=project, env=env
        ),
        repeats,
    )
    rows.append(
        row(
            SUITE,
            "pytest --uv-build session, warm record",
            with_record,
            "same session, record plugin blocked",
            without,
            note="subprocess, imports included",
        )
    )
    command = f"python bench/bench_record.py --repeats {repeats}"
    support.write_results(SUITE, rows, command)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
