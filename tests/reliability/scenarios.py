"""The reliability scenarios: each function runs trials and returns one :class:`Trial` each.

The tests in this directory call them with a few trials (CI budget); the
script ``bench/reliability.py`` calls them with the full counts of issue 5
and renders ``docs/reliability.md`` from what they return. A trial's
``ok`` is the conjunction of every invariant the scenario promises; its
``detail`` says what was observed, so that a failure can be read without
rerunning.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from reliability import envcheck
from reliability.lab import Lab, Session, Stop, Trial, kill_group, reap_group

__all__ = [
    "ENV_STOPS",
    "RECORD_STOPS",
    "env_kill_trials",
    "record_kill_trials",
]

# -- suite 1: SIGKILL during a cold env build and during a build-record write --

#: Moments of a cold env build (see envbuild.build_env): the export that lists
#: the local packages (asked when the lock has one besides the project, as the
#: project of bench/reliability.py does), the project layer's wheel builds and
#: install (in a thread), the dependency sync, and the Python code that writes
#: the completion record.
ENV_STOPS: tuple[Stop, ...] = (
    Stop("uv export --locked*", "before"),
    Stop("uv export --locked*", "start", 0.004),
    Stop("uv build --wheel*", "before"),
    Stop("uv build --wheel*", "end"),
    Stop("uv pip install*", "start", 0.003),
    Stop("uv sync *", "before"),
    Stop("uv sync *", "start", 0.015),
    Stop("uv sync *", "start", 0.04),
    Stop("uv sync *", "start", 0.08),
    Stop("uv sync *", "end"),
    Stop("uv sync *", "end", 0.002),
    Stop("uv sync *", "end", 0.006),
    Stop("uv sync *", "end", 0.015),
    Stop("uv sync *", "end", 0.04),
    # Only the pytest process dies (the OOM killer's choice): uv lives on as
    # an orphan and may still write into the env while the next session runs.
    Stop("uv sync *", "start", 0.01, group=False),
    Stop("uv sync *", "start", 0.05, group=False),
    Stop("uv pip install*", "start", 0.0, group=False),
)

#: Moments of a build-record write (see artifacts.record_session): the sdist
#: build that lists the sources, the hashed export, git facts for the
#: metadata, then the Python code that writes the files and SHA256SUMS.
RECORD_STOPS: tuple[tuple[str, Stop], ...] = (
    ("new", Stop("uv build --sdist*", "before")),
    ("new", Stop("uv build --sdist*", "start", 0.01)),
    ("new", Stop("uv build --sdist*", "end")),
    ("new", Stop("uv export --frozen*", "before")),
    ("new", Stop("uv export --frozen*", "end")),
    ("new", Stop("git *status*", "before")),
    ("new", Stop("git *status*", "end")),
    ("new", Stop("git *status*", "end", 0.003)),
    ("new", Stop("git *status*", "end", 0.008)),
    ("new", Stop("git *status*", "end", 0.015)),
    ("new", Stop("git *status*", "end", 0.03)),
    ("reused", Stop("git *status*", "before")),
    ("reused", Stop("git *status*", "end")),
    ("reused", Stop("git *status*", "end", 0.002)),
    ("reused", Stop("git *status*", "end", 0.005)),
    ("reused", Stop("git *status*", "end", 0.01)),
    ("reused", Stop("git *status*", "end", 0.02)),
    ("new", Stop("uv export --frozen*", "start", 0.0, group=False)),
)


def _env_state(cache: Path) -> tuple[bool, list[str]]:
    """(whether a complete-looking env exists, problems of anything that looks complete)."""
    complete = False
    problems: list[str] = []
    for env in sorted((cache / "envs").glob("[!.]*")):
        record = env / "pytest-uvbuild.json"
        if not record.exists():
            continue
        complete = True
        try:
            key = json.loads(record.read_text())["key"]
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{env.name}: unreadable completion record ({exc})")
            continue
        if key != env.name:
            problems.append(f"{env.name}: record names key {key}")
        problems += [f"{env.name}: missing {p}" for p in envcheck.problems(str(env))]
    for layer in sorted((cache / "layers").glob("[!.]*")):
        if not (layer / "layer.json").is_file():
            problems.append(f"layer {layer.name} has no layer.json")
            continue
        problems += [
            f"layer {layer.name}: missing {p}" for p in envcheck.missing_files(str(layer / "site"))
        ]
    return complete, problems


def _reason(announced: str) -> str:
    """The reason at the end of a ``uv-build: building ...: REASON`` line."""
    if ", install " in announced:
        return announced.split(", install ", 1)[1].split(": ", 1)[-1]
    return announced.rsplit(": ", 1)[-1]


def _expect_session(session: Session, state: str) -> list[str]:
    """Problems with a follow-up session that should pass with a ``state`` (hit/miss) env."""
    said = []
    if session.returncode != 0:
        said.append(f"session failed with exit {session.returncode}: {session.output[-1500:]}")
    inside = session.inside()
    if not inside:
        said.append("the test did not run inside an env")
    elif state and not inside[0].endswith(state):
        said.append(f"expected a {state}, got {inside[0]!r}")
    return said


def env_kill_trials(
    lab: Lab, project: Path, stops: Sequence[Stop] = ENV_STOPS, *, confirm: bool = True
) -> list[Trial]:
    """Kill a cold env build at each moment; the next session reuses a whole env or rebuilds.

    Invariants per trial: the moment was reached; anything that looks
    complete afterwards (completion record, layer record) is whole (every
    RECORD file present); the next session passes, reports a hit only if a
    complete env existed and a miss otherwise, and the env it uses is whole
    while it uses it; once any orphaned uv is gone the env is still whole
    and (``confirm``) a third session hits it.
    """
    trials = []
    for number, stop in enumerate(stops):
        cache = lab.root / f"env-kill-{number}"
        shutil.rmtree(cache, ignore_errors=True)
        reached, pgid = lab.kill_at(project, cache, stop)
        problems: list[str] = []
        if not reached:
            problems.append("the session ended before the moment came")
        complete, broken = _env_state(cache)
        problems += broken
        after = lab.run(project, cache)
        problems += _expect_session(after, "hit" if complete else "miss")
        reap_group(pgid)
        _, broken = _env_state(cache)
        problems += [f"after the orphans ended: {p}" for p in broken]
        if confirm:
            third = lab.run(project, cache)
            problems += [f"third session: {p}" for p in _expect_session(third, "hit")]
        state = "a complete env was left" if complete else "no complete env was left"
        reason = next((_reason(ln) for ln in after.output.splitlines() if "building env" in ln), "")
        detail = f"{state}; next session: {'rebuilt (' + reason + ')' if reason else 'hit'}"
        scenario = f"env build: {stop.describe()}"
        trials.append(Trial("kill", scenario, not problems, "; ".join(problems) or detail))
        kill_group(pgid)
        shutil.rmtree(cache, ignore_errors=True)
    return trials


def _record_state(builds: Path) -> tuple[list[str], list[str]]:
    """(names of complete records, problems): complete ones must check, others must say so."""
    from pytest_uvbuild.artifacts import is_complete
    from pytest_uvbuild.errors import UvBuildError
    from pytest_uvbuild.records import check_sums, show_lines

    complete: list[str] = []
    problems: list[str] = []
    for record in sorted(builds.glob("[!.]*")):
        if not record.is_dir():
            continue
        if is_complete(record):
            complete.append(record.name)
            bad = [f"{n} {s}" for n, s in check_sums(record) if s != "ok"]
            if bad:
                problems.append(f"{record.name} looks complete but: {', '.join(bad)}")
            continue
        try:
            shown = show_lines(record)
        except UvBuildError:
            continue  # `show` refuses it: not presented as a record at all
        if "(complete)" in shown[0]:
            problems.append(f"{record.name} is incomplete but `show` says {shown[0]!r}")
    return complete, problems


def record_kill_trials(
    lab: Lab,
    project: Path,
    cache: Path,
    stops: Sequence[tuple[str, Stop]] = RECORD_STOPS,
) -> list[Trial]:
    """Kill a session while it writes its build record (new or reused); nothing half is complete.

    The env is warm, so the kill lands in the record. Invariants per trial:
    the moment was reached; every record dir that looks complete passes its
    SHA256SUMS, and any other is shown as incomplete (or refused); the next
    session passes and leaves a complete record that checks.
    """
    trials = []
    builds = project / "builds"
    warm = lab.run(project, cache)
    if warm.returncode != 0:
        return [Trial("kill", "record: warm-up session", False, warm.output[-1500:])]
    for kind, stop in stops:
        if kind == "new":
            shutil.rmtree(builds, ignore_errors=True)
            shutil.rmtree(cache / "sdist-sources", ignore_errors=True)
        elif not _record_state(builds)[0]:
            lab.run(project, cache)
        reached, pgid = lab.kill_at(project, cache, stop)
        problems = [] if reached else ["the session ended before the moment came"]
        complete, broken = _record_state(builds)
        problems += broken
        after = lab.run(project, cache)
        problems += _expect_session(after, "hit")
        reap_group(pgid)
        complete_after, broken = _record_state(builds)
        problems += [f"after the next session: {p}" for p in broken]
        if not complete_after:
            problems.append("the next session left no complete record")
        state = "a complete record was left" if complete else "no complete record was left"
        trials.append(
            Trial(
                "kill",
                f"{kind} record: {stop.describe()}",
                not problems,
                "; ".join(problems) or f"{state}; the next session wrote a complete record",
            )
        )
        kill_group(pgid)
    return trials


def summarize(trials: Sequence[Trial]) -> str:
    """One line per failed trial, for assertion messages."""
    return "\n".join(f"{t.scenario}: {t.detail}" for t in trials if not t.ok) or "all passed"


def env_python(cache: Path) -> Path:
    """The interpreter of the (only) env in ``cache``."""
    (env,) = (p for p in (cache / "envs").iterdir() if not p.name.startswith("."))
    return env / "bin" / "python"


def uv_sync_count(lab: Lab) -> dict[str, int]:
    """How many `uv sync` calls each env dir got, from the wrapper's log."""
    counts: dict[str, int] = {}
    for env_dir, _args in lab.calls("uv", "sync"):
        counts[os.path.basename(env_dir)] = counts.get(os.path.basename(env_dir), 0) + 1
    return counts


# -- suite 2: concurrency ------------------------------------------------------

XDIST_TEST = """\
import pytest

import envcheck


@pytest.mark.parametrize("n", range(8))
def test_env_in_worker(uv_env, n):
    layer_sites = [str(p) for p in uv_env.layer if p.name == "site"]
    assert not envcheck.problems(str(uv_env.path), layer_sites)
    print("INSIDE", uv_env.key, "hit" if uv_env.hit else "miss", flush=True)
"""


def concurrent_rounds(
    lab: Lab,
    project: Path,
    *,
    sessions: int = 8,
    rounds: int = 5,
    xdist: int = 0,
    slow_sync: float = 0.3,
) -> list[Trial]:
    """Start ``sessions`` pytest runs at once on a cold cache; two keys, each built once.

    Half the sessions install the project as a wheel and half as source, so
    two keys race. ``uv sync`` is slowed down to make every session arrive
    while the first build is still running. Invariants per round: every
    session passes; each key got exactly one ``uv sync``; exactly two builds
    were announced; every session (and xdist worker) ran inside the env of
    its key; every build record left in ``builds/`` is complete.
    """
    trials = []
    extra_args = ["-p", "xdist", "-n", str(xdist)] if xdist else []
    for number in range(rounds):
        cache = lab.root / f"concurrent-{xdist}-{number}"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(project / "builds", ignore_errors=True)
        lab.log.unlink(missing_ok=True)
        env = {"RELIABILITY_SLOW": "uv sync *", "RELIABILITY_SLOW_SECONDS": str(slow_sync)}
        procs = [
            lab.start(
                project,
                cache,
                *extra_args,
                f"--uv-install-project={'wheel' if i % 2 == 0 else 'source'}",
                env=env,
            )
            for i in range(sessions)
        ]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        problems = []
        for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
            if proc.returncode != 0:
                problems.append(f"session {i} exited {proc.returncode}: {out[-1200:]}")
        keys_by_mode: dict[str, set[str]] = {"wheel": set(), "source": set()}
        for i, out in enumerate(outputs):
            mode = "wheel" if i % 2 == 0 else "source"
            keys_by_mode[mode] |= {ln.split()[1] for ln in out.splitlines() if "INSIDE " in ln}
        if any(len(k) != 1 for k in keys_by_mode.values()):
            problems.append(f"sessions of one mode saw several keys: {keys_by_mode}")
        syncs = uv_sync_count(lab)
        if len(syncs) != 2 or any(n != 1 for n in syncs.values()):
            problems.append(f"uv sync calls per env: {syncs} (want 2 keys, once each)")
        built = sum(out.count("uv-build: building env") for out in outputs)
        if built != 2:
            problems.append(f"{built} builds announced (want 2)")
        _, broken = _record_state(project / "builds")
        problems += broken
        waited = sum("waiting for another process" in out for out in outputs)
        trials.append(
            Trial(
                "concurrency",
                f"{sessions} sessions at once{f' with -n {xdist}' if xdist else ''}, cold cache",
                not problems,
                "; ".join(problems)
                or f"2 keys, 1 `uv sync` each; {waited} of {sessions} sessions waited",
            )
        )
    return trials


PRUNE_ALL = ("-m", "pytest_uvbuild", "cache", "prune", "--all")


def _prune(lab: Lab, cache: Path) -> str:
    import subprocess

    proc = subprocess.run(
        [sys.executable, *PRUNE_ALL, f"--uv-cache-dir={cache}"],
        env=lab.environ(),
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout + proc.stderr


def prune_during_sessions(lab: Lab, project: Path, *, sessions: int = 4, prunes: int = 3) -> Trial:
    """``cache prune --all`` in a loop while sessions build, wait for and use one env.

    Another env (source mode) is complete and unused, so prune has real work.
    Sessions start on a cold key and, once inside their test (holding the
    env), wait for the harness; prune runs throughout. Invariants: every
    session passes, checking its env after the prunes; the unused env is
    removed; the env in use is never removed and is reported in use; after
    the sessions end, prune removes it (their leases were released).
    """
    import time

    cache = lab.root / "prune"
    ready = lab.root / "prune-ready"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(ready, ignore_errors=True)
    ready.mkdir()
    idle = lab.run(project, cache, "--uv-install-project=source")
    problems = [] if idle.returncode == 0 else [f"setup session failed: {idle.output[-800:]}"]
    idle_key = next((ln.split()[1] for ln in idle.output.splitlines() if "INSIDE " in ln), "?")
    env = {
        "RELIABILITY_READY": str(ready),
        "RELIABILITY_SLOW": "uv sync *",
        "RELIABILITY_SLOW_SECONDS": "0.3",
    }
    procs = [lab.start(project, cache, env=env) for _ in range(sessions)]
    said: list[str] = []
    deadline = time.monotonic() + 300
    while len(list(ready.iterdir())) < sessions and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        said.append(_prune(lab, cache))
    for _ in range(prunes):
        said.append(_prune(lab, cache))
    (ready / "go").touch()
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        if proc.returncode != 0:
            problems.append(f"session {i} exited {proc.returncode}: {out[-1200:]}")
    keys = {ln.split()[1] for out in outputs for ln in out.splitlines() if "INSIDE " in ln}
    used_key = next(iter(keys), "?")
    text = "\n".join(said)
    if f"removed {idle_key}" not in text:
        problems.append(f"the unused env {idle_key} was never pruned")
    if f"removed {used_key}" in text:
        problems.append(f"the env in use {used_key} was pruned")
    if f"kept {used_key}: in use" not in text:
        problems.append(f"prune never reported {used_key} as in use")
    final = _prune(lab, cache)
    if f"removed {used_key}" not in final:
        problems.append(f"after the sessions, prune did not remove {used_key}: {final}")
    return Trial(
        "concurrency",
        f"`cache prune --all` run {len(said)} times while {sessions} sessions build and use an env",
        not problems,
        "; ".join(problems)
        or f"unused env removed; env in use kept by all {len(said)} prunes; removed once released",
    )


# -- suite 3: a damaged cache ------------------------------------------------------


def _only_env(cache: Path) -> Path:
    (env,) = (p for p in (cache / "envs").iterdir() if not p.name.startswith("."))
    return env


def _site(env: Path) -> Path:
    return Path(envcheck.site_dirs(str(env))[0])


def _layer_site(cache: Path) -> Path:
    (layer,) = (p for p in (cache / "layers").iterdir() if not p.name.startswith("."))
    return layer / "site"


def _edit_record(cache: Path, **changes: object) -> None:
    record = _only_env(cache) / "pytest-uvbuild.json"
    data = json.loads(record.read_text())
    data.update(changes)
    record.write_text(json.dumps(data))


def _damage_record_deleted(cache: Path) -> None:
    (_only_env(cache) / "pytest-uvbuild.json").unlink()


def _damage_record_truncated(cache: Path) -> None:
    record = _only_env(cache) / "pytest-uvbuild.json"
    record.write_bytes(record.read_bytes()[:40])


def _damage_record_other_key(cache: Path) -> None:
    _edit_record(cache, key="0123456789abcdef")


def _damage_interpreter_removed(cache: Path) -> None:
    (_only_env(cache) / "bin" / "python").unlink()


def _damage_base_interpreter_gone(cache: Path) -> None:
    python = _only_env(cache) / "bin" / "python"
    python.unlink()
    python.symlink_to("/nonexistent/python3")


def _damage_pyvenv_cfg_removed(cache: Path) -> None:
    (_only_env(cache) / "pyvenv.cfg").unlink()


def _damage_module_file_removed(cache: Path) -> None:
    (_site(_only_env(cache)) / "toyalpha" / "__init__.py").unlink()


def _damage_package_dir_removed(cache: Path) -> None:
    shutil.rmtree(_site(_only_env(cache)) / "toyalpha")


def _damage_dist_info_removed(cache: Path) -> None:
    shutil.rmtree(_site(_only_env(cache)) / "toyalpha-1.0.dist-info")


def _damage_pytest_file_removed(cache: Path) -> None:
    (_site(_only_env(cache)) / "_pytest" / "pastebin.py").unlink()


def _damage_layer_record_removed(cache: Path) -> None:
    (_layer_site(cache).parent / "layer.json").unlink()


def _damage_layer_file_removed(cache: Path) -> None:
    (_layer_site(cache) / "demo" / "__init__.py").unlink()


def _damage_layer_removed(cache: Path) -> None:
    shutil.rmtree(_layer_site(cache).parent)


#: name -> (damage, what the next session must say when it rebuilds, whether only
#: ``cache verify`` can see it: a file removed below the top of site-packages)
DAMAGES: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "completion record deleted": (_damage_record_deleted, "no completion record", False),
    "completion record truncated": (_damage_record_truncated, "unreadable", False),
    "completion record names another key": (_damage_record_other_key, "another key", False),
    "env interpreter removed": (_damage_interpreter_removed, "interpreter is gone", False),
    "base interpreter gone (dangling bin/python)": (
        _damage_base_interpreter_gone,
        "interpreter is gone",
        False,
    ),
    "pyvenv.cfg removed": (_damage_pyvenv_cfg_removed, "pyvenv.cfg is gone", False),
    "site-packages: a package dir removed": (
        _damage_package_dir_removed,
        "toyalpha gone from site-packages",
        False,
    ),
    "site-packages: a dist-info removed": (
        _damage_dist_info_removed,
        "toyalpha-1.0.dist-info gone from site-packages",
        False,
    ),
    "site-packages: a package's module removed": (
        _damage_module_file_removed,
        "`cache verify` found the cached env damaged",
        True,
    ),
    "site-packages: a file deep in pytest removed": (
        _damage_pytest_file_removed,
        "`cache verify` found the cached env damaged",
        True,
    ),
    "project layer: layer.json removed": (_damage_layer_record_removed, "it is damaged", False),
    "project layer: removed entirely": (_damage_layer_removed, "local sources changed", False),
    "project layer: the project's module removed": (
        _damage_layer_file_removed,
        "it is damaged",
        True,
    ),
}


def _verify_cache(lab: Lab, cache: Path) -> tuple[int, str]:
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pytest_uvbuild", "cache", "verify", f"--uv-cache-dir={cache}"],
        env=lab.environ(),
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def damage_trials(lab: Lab, project: Path, names: Sequence[str] = tuple(DAMAGES)) -> list[Trial]:
    """Damage a whole env one way at a time; each next session rebuilds it (saying why).

    The cases run one after the other on one cache: each starts from the
    env the previous rebuild left, which is checked whole first.
    """
    trials = []
    cache = lab.root / "damage-cache"
    shutil.rmtree(cache, ignore_errors=True)
    first = lab.run(project, cache)
    setup_problems = _expect_session(first, "miss")
    for name in names:
        damage, reason, deep = DAMAGES[name]
        complete, broken = _env_state(cache)
        problems = [*setup_problems, *broken] + ([] if complete else ["no whole env to damage"])
        damage(cache)
        found_by = "the next session"
        if deep:
            status, said_by_verify = _verify_cache(lab, cache)
            if status != 1 or "DAMAGED" not in said_by_verify:
                problems.append(f"`cache verify` missed it (exit {status}): {said_by_verify}")
            found_by = "`cache verify`"
        after = lab.run(project, cache)
        problems += _expect_session(after, "")
        said = [ln for ln in after.output.splitlines() if ln.startswith("uv-build: building")]
        if not said or reason not in said[0]:
            problems.append(f"no rebuild saying {reason!r}: {said or after.output[-1500:]}")
        _, broken = _env_state(cache)
        problems += broken
        trials.append(
            Trial(
                "damage",
                name,
                not problems,
                "; ".join(problems) or f"found by {found_by}; rebuilt: {_reason(said[0])}",
            )
        )
    return trials


def rebuild_while_in_use(lab: Lab, project: Path) -> Trial:
    """``--uv-rebuild`` while another session uses the env must not pull it from under it.

    Session A holds the env and checks it every 20 ms; session B asks for
    ``--uv-rebuild`` of the same key. Invariants: A passes (its env stayed
    whole); B either waits or stops with one clear message naming the fix;
    once A has ended, ``--uv-rebuild`` works.
    """
    import time

    cache = lab.root / "rebuild-in-use"
    ready = lab.root / "rebuild-ready"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(ready, ignore_errors=True)
    ready.mkdir()
    problems = _expect_session(lab.run(project, cache), "miss")
    holder = lab.start(
        project, cache, env={"RELIABILITY_READY": str(ready), "RELIABILITY_WATCH": "1"}
    )
    deadline = time.monotonic() + 120
    while not list(ready.iterdir()) and time.monotonic() < deadline and holder.poll() is None:
        time.sleep(0.02)
    rebuild = lab.run(project, cache, "--uv-rebuild")
    (ready / "go").touch()
    held = holder.communicate(timeout=300)[0]
    if holder.returncode != 0:
        problems.append(f"the session using the env failed: {held[-1500:]}")
    if rebuild.returncode not in (0, 4) or "Traceback" in rebuild.output:
        problems.append(f"--uv-rebuild ended with {rebuild.returncode}: {rebuild.output[-800:]}")
    elif rebuild.returncode == 4 and "Fix:" not in rebuild.output:
        problems.append(f"--uv-rebuild refused without naming the fix: {rebuild.output[-800:]}")
    after = lab.run(project, cache, "--uv-rebuild")
    problems += [f"--uv-rebuild once free: {p}" for p in _expect_session(after, "miss")]
    said = next((ln for ln in rebuild.output.splitlines() if ln.startswith("ERROR:")), "waited")
    return Trial(
        "concurrency",
        "`--uv-rebuild` while another session uses the env",
        not problems,
        "; ".join(problems) or f"the env in use stayed whole; the rebuild said: {said}",
    )


# -- suite 5: bad inputs -----------------------------------------------------------


@dataclass
class BadInputContext:
    """What a bad-input case may use: a private copy of the good project and scratch space."""

    lab: Lab
    project: Path
    cache: Path
    scratch: Path
    served: Path | None = None


#: A case returns (project dir, extra pytest arguments, extra environment).
Setup = Callable[[BadInputContext], tuple[Path, list[str], dict[str, str]]]


@dataclass(frozen=True)
class BadInput:
    """One bad input: how to make it, and what the one message must say."""

    name: str
    setup: Setup
    expect: tuple[str, ...]
    status: int = 4


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def _lock_text(text: str) -> Setup:
    def setup(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
        (c.project / "uv.lock").write_text(text)
        return c.project, [], {}

    return setup


def _args(*args: str, env: dict[str, str] | None = None) -> Setup:
    def setup(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
        return c.project, [a.format(scratch=c.scratch) for a in args], dict(env or {})

    return setup


def _malformed_pyproject(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    (c.project / "pyproject.toml").write_text("[project\nname = 'demo'\n")
    return c.project, [], {}


def _malformed_other_pyproject(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    other = c.scratch / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text("[project\nname = 'other'\n")
    (other / "uv.lock").write_text("version = 1\n")
    return c.project, [f"--uv-project={other}"], {}


def _stale_lock(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    _edit(c.project / "pyproject.toml", "toyalpha==1.0", "toyalpha==2.0")
    return c.project, [], {}


def _marker(source: str) -> Setup:
    def setup(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
        (c.project / "test_marker.py").write_text(source)
        return c.project, [], {}

    return setup


def _baseline(content: bytes) -> Setup:
    def setup(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
        garbage = c.scratch / "baseline.json"
        garbage.write_bytes(content)
        return c.project, [f"--uv-baseline={garbage}"], {}

    return setup


def _build_dir_is_file(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    target = c.scratch / "builds-file"
    target.write_text("I am a file\n")
    return c.project, [f"--uv-build-dir={target}"], {}


def _uv_broken(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    broken = c.scratch / "broken-uv"
    broken.write_text("#!/bin/sh\necho 'uv: cannot start' >&2\nexit 1\n")
    broken.chmod(0o755)
    return c.project, [], {"PYTEST_UVBUILD_UV": str(broken)}


def _not_a_python(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    fake = c.scratch / "python3"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    return c.project, [f"--uv-python={fake}"], {}


def _served(offline: bool) -> Setup:
    def setup(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
        assert c.served is not None
        env = {"UV_CACHE_DIR": str(c.scratch / "cold-uv-cache"), "UV_HTTP_RETRIES": "0"}
        return c.served, ["--uv-offline"] if offline else [], env

    return setup


def _no_project(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    empty = c.scratch / "not-a-project"
    empty.mkdir()
    (empty / "test_x.py").write_text("def test_x():\n    pass\n")
    return empty, [], {}


def _no_lock(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
    (c.project / "uv.lock").unlink()
    return c.project, [], {}


def _ini(text: str) -> Setup:
    def setup(c: BadInputContext) -> tuple[Path, list[str], dict[str, str]]:
        (c.project / "pytest.ini").write_text("[pytest]\n" + text + "\n")
        return c.project, [], {}

    return setup


HERMETIC_BAD_ARGUMENT = """\
import pytest

@pytest.mark.hermetic(nope=1)
def test_x():
    pass
"""
HERMETIC_BAD_TYPE = """\
import pytest

@pytest.mark.hermetic(timeout="x")
def test_x():
    pass
"""

BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput(
        "uv.lock malformed",
        _lock_text("garbage [[[\n"),
        ("uv.lock cannot be parsed", "Fix: regenerate it with `uv lock`"),
    ),
    BadInput("uv.lock empty", _lock_text(""), ("uv.lock", "Fix:")),
    BadInput(
        "uv.lock of a newer schema",
        _lock_text('version = 99\nrequires-python = ">=3.10"\n'),
        ("unsupported schema version (v99", "upgrade uv"),
    ),
    # pytest itself reads the rootdir's pyproject.toml before any plugin
    # loads, so this message is pytest's own (file, line and column).
    BadInput(
        "pyproject.toml malformed (the rootdir's: pytest reports it)",
        _malformed_pyproject,
        ("pyproject.toml: Expected ']' at the end of a table declaration (at line 1",),
    ),
    BadInput(
        "pyproject.toml malformed (of --uv-project)",
        _malformed_other_pyproject,
        ("pyproject.toml is not valid TOML", "Fix: correct the file"),
    ),
    BadInput("stale uv.lock", _stale_lock, ("uv.lock is out of date", "Fix: run `uv lock`")),
    BadInput("uv.lock missing", _no_lock, ("has no uv.lock", "Fix: run `uv lock`")),
    BadInput("no project at all", _no_project, ("No uv project", "Fix: run pytest inside")),
    BadInput(
        "project dir missing",
        _args("--uv-project={scratch}/nowhere"),
        ("does not exist", "Fix: point --uv-project"),
    ),
    BadInput(
        "unknown group",
        _args("--uv-group=nope"),
        ("Unknown dependency group(s) nope", "Defined: dev", "Fix:"),
    ),
    BadInput("unknown extra", _args("--uv-extra=nope"), ("Unknown extra(s) nope", "Fix:")),
    BadInput(
        "python missing",
        _args("--uv-python=3.99"),
        ("No Python interpreter matching '3.99'", "Found: ", "Fix: install that Python"),
    ),
    BadInput("python path is not a python", _not_a_python, ("python3", "Fix:")),
    BadInput(
        "hermetic marker: unknown argument",
        _marker(HERMETIC_BAD_ARGUMENT),
        ("hermetic got an unknown argument 'nope'", "valid arguments are"),
        status=2,
    ),
    BadInput(
        "hermetic marker: timeout='x'",
        _marker(HERMETIC_BAD_TYPE),
        ("hermetic(timeout=...) must be a positive number of seconds", "not 'x'"),
        status=2,
    ),
    BadInput(
        "ini hermetic_timeout not a number",
        _ini("hermetic_timeout = soon"),
        ("hermetic_timeout = 'soon' is not a number", "Fix: set it to e.g. 60"),
    ),
    BadInput(
        "ini uv_install_project unknown",
        _ini("uv_install_project = egg"),
        ("uv_install_project = 'egg' is not one of", "Fix: set it to wheel"),
    ),
    BadInput(
        "baseline path does not exist",
        _args("--uv-baseline={scratch}/no-such-build"),
        ("no-such-build", "Fix:"),
    ),
    BadInput(
        "baseline holds text garbage",
        _baseline(b"not json at all {"),
        ("baseline.json is not JSON", "Fix: point --uv-baseline"),
    ),
    BadInput(
        "baseline holds binary garbage",
        _baseline(b"\x00\xff\xfe garbage"),
        ("baseline.json", "Fix: point --uv-baseline"),
    ),
    BadInput(
        "baseline is JSON of another kind",
        _baseline(b'{"hello": "world"}'),
        ("baseline.json", "Fix:"),
    ),
    BadInput(
        "build dir is a file",
        _build_dir_is_file,
        ("is a file, not a directory", "Fix: pass --uv-build-dir=DIR"),
    ),
    BadInput(
        "SOURCE_DATE_EPOCH not a number",
        _args(env={"SOURCE_DATE_EPOCH": "yesterday"}),
        ("SOURCE_DATE_EPOCH is set but is not a whole number", "Fix:"),
    ),
    BadInput(
        "uv binary missing",
        _args(env={"PYTEST_UVBUILD_UV": "/nonexistent/uv"}),
        ("PYTEST_UVBUILD_UV points at", "Fix: unset"),
    ),
    BadInput(
        "uv binary broken",
        _uv_broken,
        ("does not run (`uv --version` exited 1)", "Fix: point PYTEST_UVBUILD_UV"),
    ),
    BadInput(
        "offline with a cold uv cache",
        _served(offline=True),
        ("offline mode is on", "Fix: run once without --uv-offline"),
    ),
    BadInput(
        "package index unreachable",
        _served(offline=False),
        ("could not reach the package index", "Fix: check the network"),
    ),
)

#: Left out of the before/after comparison of the cache: lock files, which every
#: session opens (and so creates) by design, and ``probes/``, cached facts about
#: the interpreters and uv binaries a session looked at (keyed by the binary's
#: stat; they never decide a result and are not part of any env).
SNAPSHOT_IGNORE = ("locks", "probes")


def _error_line(output: str) -> str:
    """The error a user sees: its first line, and the line naming the fix if that is apart."""
    lines = output.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("ERROR collecting") or " ERROR collecting " in line:
            return lines[number + 1].strip() if number + 1 < len(lines) else line
        if line.startswith("ERROR:") and len(line) > 8:
            if "Fix:" in line:
                return line.strip()
            fix = next((ln.strip() for ln in lines[number + 1 :] if ln.startswith("Fix:")), "")
            return f"{line.strip()} [...] {fix}".strip()
    return ""


def _restore(pristine: Path, work: Path) -> None:
    """Put ``work`` back to ``pristine``, mtimes included (the layer fingerprint uses them)."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work, symlinks=True)


def bad_input_trials(
    lab: Lab,
    project: Path,
    cache: Path,
    cases: Sequence[BadInput] = BAD_INPUTS,
    served: Path | None = None,
) -> list[Trial]:
    """Run each bad input against a warm cache and a complete build record; nothing changes.

    Each case starts from the same copy of the project at the same path,
    with a warm env, project layer and build record. Invariants per case:
    the exit status (4, pytest's usage error, or 2 for a collection error);
    the message's expected parts, including the fix; no traceback and no
    INTERNALERROR; the env cache (but for ``SNAPSHOT_IGNORE``) and
    ``builds/`` identical before and after, file by file.
    """
    from reliability.lab import snapshot, snapshot_diff

    pristine = lab.root / "bad-pristine"
    work = lab.root / "bad-work"
    _restore(project, pristine)
    _restore(pristine, work)
    warm = lab.run(work, cache)
    if warm.returncode != 0:
        return [Trial("bad-input", "warm-up session", False, warm.output[-1500:])]
    _restore(work, pristine)
    trials = []
    for number, case in enumerate(cases):
        scratch = lab.root / f"bad-{number}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        _restore(pristine, work)
        context = BadInputContext(lab, work, cache, scratch, served)
        where, args, env = case.setup(context)
        before_cache = snapshot(cache, ignore=SNAPSHOT_IGNORE)
        before_builds = snapshot(where / "builds")
        session = lab.run(where, cache, *args, env=env)
        problems = []
        if session.returncode != case.status:
            problems.append(f"exit status {session.returncode}, want {case.status}")
        flat = " ".join(session.output.split())
        problems += [f"no {text!r} in the output" for text in case.expect if text not in flat]
        for bad in ("Traceback", "INTERNALERROR"):
            if bad in session.output:
                problems.append(f"{bad} in the output")
        changed = snapshot_diff(before_cache, snapshot(cache, ignore=SNAPSHOT_IGNORE))
        changed += snapshot_diff(before_builds, snapshot(where / "builds"))
        if changed:
            problems.append(f"files changed: {changed[:6]}")
        if problems:
            problems.append(f"output: {session.output[-1200:]}")
        trials.append(
            Trial(
                "bad-input",
                case.name,
                not problems,
                "; ".join(problems) or _error_line(session.output),
            )
        )
        shutil.rmtree(scratch, ignore_errors=True)
    return trials


def served_project(lab: Lab) -> Path:
    """A project whose index (the wheelhouse over loopback HTTP) is gone once it is locked."""
    import toys

    return toys.write_served_project(lab.root / "served", lab.wheelhouse)


# -- suite 3 (continued): a read-only cache, a full disk ---------------------------


def read_only_cache_trial(lab: Lab, project: Path) -> Trial:
    """A warm cache that cannot be written: one clear error, nothing changed, fine afterwards."""
    from reliability.lab import read_only_tree, snapshot, snapshot_diff

    cache = lab.root / "read-only-cache"
    shutil.rmtree(cache, ignore_errors=True)
    problems = _expect_session(lab.run(project, cache), "miss")
    before = snapshot(cache)
    try:
        with read_only_tree(cache) as how:
            session = lab.run(project, cache)
    except RuntimeError as exc:
        return Trial("damage", "cache dir read-only", False, f"cannot simulate: {exc}")
    if session.returncode != 4:
        problems.append(f"exit status {session.returncode}, want 4")
    for text in ("is not writable", "Fix: pass --uv-cache-dir"):
        if text not in session.output:
            problems.append(f"no {text!r} in: {session.output[-800:]}")
    if "Traceback" in session.output:
        problems.append("a traceback")
    changed = snapshot_diff(before, snapshot(cache))
    if changed:
        problems.append(f"files changed: {changed[:6]}")
    problems += [f"once writable: {p}" for p in _expect_session(lab.run(project, cache), "hit")]
    return Trial(
        "damage",
        "cache dir read-only",
        not problems,
        "; ".join(problems) or f"{how}; said: {_error_line(session.output)}",
    )


#: File size limits (bytes) for the disk-full trials: below what the cache root
#: needs, what uv writes during `uv sync`, and what the build record needs.
DISK_LIMITS: tuple[int, ...] = (100, 4_000, 16_000, 24_000, 64_000)


def disk_full_trials(
    lab: Lab, project: Path, limits: Sequence[int] = DISK_LIMITS, *, warm: bool = False
) -> list[Trial]:
    """Build (or, ``warm``, reuse) an env and write a record with RLIMIT_FSIZE at each limit.

    The limit applies to the session and to every uv it starts (the real uv,
    not a wrapper, so that only the product writes). Invariants: the session
    passes, or fails with one message naming the disk or the size limit and
    the fix, without a traceback; nothing left behind looks complete but is
    not; the next session, without a limit, passes.
    """
    import toys

    from reliability.lab import limited_file_size

    trials = []
    real_uv = {"RELIABILITY_LOG": "", "PYTEST_UVBUILD_UV": str(toys.UV)}
    shared = lab.root / "disk-full-warm"
    if warm:
        shutil.rmtree(shared, ignore_errors=True)
        lab.run(project, shared)
    for limit in limits:
        cache = shared if warm else lab.root / f"disk-full-{limit}"
        if not warm:
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(project / "builds", ignore_errors=True)
        session = lab.run(project, cache, env=real_uv, preexec_fn=limited_file_size(limit))
        problems = []
        said = _error_line(session.output) or next(
            (ln for ln in session.output.splitlines() if "FAILED" in ln or "disk" in ln), ""
        )
        if session.returncode != 0:
            flat = " ".join(session.output.split())
            if not any(t in flat for t in ("disk is full", "File too large", "file size limit")):
                problems.append(f"the message does not name a full disk: {session.output[-1500:]}")
            if "Fix:" not in flat:
                problems.append("no fix named")
            for bad in ("Traceback", "INTERNALERROR"):
                if bad in session.output:
                    problems.append(f"{bad} in the output: {session.output[-1500:]}")
        _, broken = _env_state(cache)
        problems += broken
        _, broken = _record_state(project / "builds")
        problems += broken
        after = lab.run(project, cache)
        problems += [f"without the limit: {p}" for p in _expect_session(after, "")]
        outcome = "passed" if session.returncode == 0 else f"exit {session.returncode}: {said}"
        trials.append(
            Trial(
                "damage",
                f"disk full ({'warm env, record' if warm else 'cold build'}): "
                f"files capped at {limit} bytes",
                not problems,
                "; ".join(problems) or outcome,
            )
        )
    return trials


# -- suite 6: secrets --------------------------------------------------------------

#: Distinctive values: any occurrence in a file is a leak.
SECRET_ENV = {
    "GITHUB_TOKEN": "ghp_CANARYgithub0123456789abcdefghijklmnop",
    "AWS_SECRET_ACCESS_KEY": "CANARYaws/Secret+Key0123456789abcdefghij",
    "NPM_TOKEN": "npm_CANARYnpmtoken0123456789",
}
#: Remote URLs with credentials, and what the record may show of each.
SECRET_REMOTES = (
    ("https://oauth2:glpat-CANARYgitlab0123@gitlab.example.invalid/grp/demo.git", "glpat-CANARY"),
    ("https://x-access-token:ghs_CANARYapp0123@github.example.invalid/o/demo.git", "ghs_CANARY"),
    ("https://ghp_CANARYuseronly0123@github.example.invalid/o/demo.git", "ghp_CANARYuseronly"),
    ("ssh://git:CANARYsshpass0123@git.example.invalid/o/demo.git", "CANARYsshpass"),
)

SECRETS_TEST = """\
import os

import pytest

SECRETS = ("GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "NPM_TOKEN")


@pytest.mark.hermetic
def test_no_secret_inside():
    names = [name for name in SECRETS if name in os.environ]
    values = [name for name, value in os.environ.items() if "CANARY" in value]
    assert not names and not values, (names, values)


@pytest.mark.hermetic(env={"PASSED_EXPLICITLY": "yes"})
def test_marker_env_reaches_inside():
    assert os.environ["PASSED_EXPLICITLY"] == "yes"


@pytest.mark.hermetic
def test_passenv_reaches_inside():
    assert os.environ["GITHUB_TOKEN"].startswith("ghp_CANARY")
"""


def secrets_trials(
    lab: Lab, project: Path, remotes: Sequence[tuple[str, str]] = SECRET_REMOTES
) -> list[Trial]:
    """Tokens in the environment and credentials in the git remote never reach a file.

    ``project`` must be a git checkout. For each remote URL one session runs
    with the tokens set, a GitHub step summary and a JUnit report; then
    every file under ``builds/``, the env cache, the summary and the report
    is searched for every secret. Inside a hermetic test the tokens are not
    visible, unless passed with ``hermetic_passenv`` or the marker's ``env``.
    No file or directory under ``builds/`` or the cache is world-writable.
    """
    test_file = project / "test_secrets.py"
    test_file.write_text(SECRETS_TEST)
    try:
        return _secrets_trials(lab, project, remotes)
    finally:
        test_file.unlink()


def _secrets_trials(lab: Lab, project: Path, remotes: Sequence[tuple[str, str]]) -> list[Trial]:
    from reliability.lab import grep_tree, world_writable

    trials = []
    cache = lab.root / "secrets-cache"
    shutil.rmtree(cache, ignore_errors=True)
    summary = lab.root / "step-summary.md"
    junit = lab.root / "junit.xml"
    needles = [*SECRET_ENV.values(), *(shown for _url, shown in SECRET_REMOTES)]
    for number, (url, _shown) in enumerate(remotes):
        if number:
            lab.git(project, "remote", "remove", "origin")
        lab.git(project, "remote", "add", "origin", url)
        summary.write_text("")
        env = {**SECRET_ENV, "GITHUB_STEP_SUMMARY": str(summary)}
        session = lab.run(project, cache, f"--junitxml={junit}", "-k", "not passenv", env=env)
        problems = []
        if session.returncode != 0:
            problems.append(f"session failed: {session.output[-1500:]}")
        leaks = []
        for root in (project / "builds", cache):
            leaks += [f"{root.name}/{hit}" for hit in grep_tree(root, needles)]
        for path in (summary, junit):
            data = path.read_bytes() if path.exists() else b""
            leaks += [f"{path.name}: {n}" for n in needles if n.encode() in data]
        if leaks:
            problems.append(f"secrets found: {leaks[:6]}")
        remote = _recorded_remote(project / "builds")
        if remote is None or "@" in remote.split("//", 1)[-1].split("/", 1)[0].replace("git@", ""):
            problems.append(f"recorded remote {remote!r}")
        scheme = url.split(":", 1)[0]
        trials.append(
            Trial(
                "secrets",
                f"tokens in the environment, {scheme} remote with credentials",
                not problems,
                "; ".join(problems)
                or f"no secret in builds/, the cache, the step summary or JUnit; "
                f"remote recorded as {remote}",
            )
        )
    passenv = lab.run(
        project,
        cache,
        "-o",
        "hermetic_passenv=GITHUB_TOKEN",
        "-k",
        "passenv",
        env=dict(SECRET_ENV),
    )
    trials.append(
        Trial(
            "secrets",
            "a token passed explicitly (hermetic_passenv) reaches the test",
            passenv.returncode == 0,
            "visible inside only when listed in hermetic_passenv"
            if passenv.returncode == 0
            else passenv.output[-1500:],
        )
    )
    writable = [f"builds/{p}" for p in world_writable(project / "builds")]
    writable += [f"cache/{p}" for p in world_writable(cache)]
    trials.append(
        Trial(
            "secrets",
            f"no world-writable file or directory in builds/ or the cache (umask {_umask():03o})",
            not writable,
            ", ".join(writable[:10]) or "none",
        )
    )
    return trials


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _recorded_remote(builds: Path) -> str | None:
    for metadata in builds.glob("[!.]*/metadata.json"):
        git = json.loads(metadata.read_text()).get("git") or {}
        return str(git.get("remote_url"))
    return None


# -- suite 4: the hermetic crash matrix --------------------------------------------

CRASH_CASES_SOURCE = """\
import ctypes, os, signal, sys, threading, time

import pytest

pytestmark = pytest.mark.hermetic


def test_canary_0():
    pass


def test_segfault():
    print("before the segfault", flush=True)
    ctypes.string_at(0)


def test_canary_1():
    pass


def test_os_exit():
    print("before os._exit", flush=True)
    os._exit(3)


def test_canary_2():
    pass


def test_sigkill_self():
    print("before SIGKILL", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def test_canary_3():
    pass


@pytest.mark.hermetic(timeout=2)
def test_hang():
    print("hanging", flush=True)
    time.sleep(600)


def test_canary_4():
    pass


def test_flood_stdout():
    chunk = "x" * 1023 + "\\n"
    for _ in range(STDOUT_KIB):
        sys.stdout.write(chunk)


def test_canary_5():
    pass


def test_non_utf8_output():
    sys.stdout.flush()
    os.write(1, b"bad bytes out: \\xff\\xfe\\x80 end\\n")
    os.write(2, b"bad bytes err: \\xc3\\x28 end\\n")


def test_canary_6():
    pass


class ReprRaises(Exception):
    def __repr__(self):
        raise RuntimeError("repr is broken")

    __str__ = __repr__


def test_exception_repr_raises():
    raise ReprRaises()


def test_canary_7():
    pass


class Unpicklable(Exception):
    def __init__(self):
        super().__init__("cannot pickle me")
        self.lock = threading.Lock()

    def __reduce__(self):
        raise TypeError("no pickling")


def test_unpicklable_exception():
    raise Unpicklable()


def test_canary_8():
    pass


def test_unserialisable_user_properties(record_property):
    record_property("lock", threading.Lock())
    record_property("function", lambda: 1)
    record_property("bytes", b"\\xff")


def test_canary_9():
    pass


@pytest.fixture
def broken_setup():
    raise RuntimeError("setup went wrong")


def test_fixture_setup_error(broken_setup):
    pass


def test_canary_10():
    pass


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown went wrong")


def test_fixture_teardown_error(broken_teardown):
    pass


def test_canary_11():
    pass


@pytest.mark.xfail(strict=True, reason="expected to fail")
def test_strict_xfail_passes():
    pass


def test_canary_12():
    pass


def test_sys_exit_zero():
    sys.exit(0)


def test_canary_13():
    pass
"""

CRASH_SKIP_SOURCE = """\
import pytest

pytest.skip("skipped at module level", allow_module_level=True)


@pytest.mark.hermetic
def test_never_runs():
    pass
"""

#: xdist is in the outer environment (the dev tools) and never in the toy lock.
CRASH_IMPORT_SOURCE = """\
import pytest
import xdist


@pytest.mark.hermetic
def test_needs_xdist():
    assert xdist
"""

CRASH_INTERRUPT_SOURCE = """\
import pytest

pytestmark = pytest.mark.hermetic


def test_before_interrupt():
    pass


def test_keyboard_interrupt():
    raise KeyboardInterrupt


def test_after_interrupt():
    pass
"""


@dataclass(frozen=True)
class Crash:
    """One case of the matrix: its test, what a hermetic run must report, and in-process."""

    name: str
    test: str
    outcomes: frozenset[str]
    shows: tuple[str, ...]
    #: Why an in-process run cannot be compared (it would die or hang), or "".
    not_in_process: str = ""


def _crashes(stdout_mib: int) -> tuple[Crash, ...]:
    m = "test_crash_cases.py::"
    return (
        Crash(
            "segfault (ctypes)",
            m + "test_segfault",
            frozenset({"FAILED"}),
            ("killed by signal 11 (SIGSEGV)", "before the segfault"),
            "in-process the segfault kills pytest itself",
        ),
        Crash(
            "os._exit(3)",
            m + "test_os_exit",
            frozenset({"FAILED"}),
            ("exited with status 3", "before os._exit"),
            "in-process os._exit ends pytest itself",
        ),
        Crash(
            "SIGKILL to itself",
            m + "test_sigkill_self",
            frozenset({"FAILED"}),
            ("killed by signal 9 (SIGKILL)", "before SIGKILL"),
            "in-process the signal kills pytest itself",
        ),
        Crash(
            "a hang under hermetic(timeout=2)",
            m + "test_hang",
            frozenset({"FAILED"}),
            ("ran longer than its timeout of 2 s", "hanging", "in test_hang"),
            "in-process nothing enforces the timeout: pytest hangs",
        ),
        Crash(
            f"{stdout_mib} MiB written to stdout",
            m + "test_flood_stdout",
            frozenset({"PASSED"}),
            ("x" * 1023,),
        ),
        Crash(
            "bytes that are not UTF-8 on stdout and stderr",
            m + "test_non_utf8_output",
            frozenset({"PASSED"}),
            ("bad bytes out:", "bad bytes err:"),
        ),
        Crash(
            "an exception whose __repr__ raises",
            m + "test_exception_repr_raises",
            frozenset({"FAILED"}),
            ("<exception str() failed>",),
        ),
        Crash(
            "an exception that cannot be pickled",
            m + "test_unpicklable_exception",
            frozenset({"FAILED"}),
            ("Unpicklable: cannot pickle me",),
        ),
        Crash(
            "user_properties that cannot be serialised",
            m + "test_unserialisable_user_properties",
            frozenset({"PASSED"}),
            (),
        ),
        Crash(
            "an error in fixture setup",
            m + "test_fixture_setup_error",
            frozenset({"ERROR"}),
            ("setup went wrong",),
        ),
        Crash(
            "an error in fixture teardown",
            m + "test_fixture_teardown_error",
            frozenset({"PASSED", "ERROR"}),
            ("teardown went wrong",),
        ),
        Crash(
            "strict xfail that passes",
            m + "test_strict_xfail_passes",
            frozenset({"FAILED"}),
            ("[XPASS(strict)] expected to fail",),
        ),
        Crash(
            "a module-level skip",
            "test_crash_skip.py",
            frozenset({"SKIPPED"}),
            ("test_crash_skip.py:3: skipped at module level",),
        ),
        Crash(
            "an import error only inside the env",
            "test_crash_import.py::test_needs_xdist",
            frozenset({"ERROR"}),
            ("failed inside the locked environment", "No module named 'xdist'"),
            "in-process the import works (the outer env has xdist): that is the point",
        ),
        Crash(
            "sys.exit(0) in a test",
            m + "test_sys_exit_zero",
            frozenset({"FAILED"}),
            ("SystemExit: 0",),
        ),
    )


def _summary(output: str) -> dict[str, set[str]]:
    """Outcomes per node id (or skip location) from pytest's ``-rA`` short summary."""
    found: dict[str, set[str]] = {}
    in_summary = False
    for line in output.splitlines():
        if "short test summary info" in line:
            in_summary = True
            continue
        if not in_summary:
            continue
        word, _, rest = line.partition(" ")
        if word not in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"):
            continue
        if word == "SKIPPED":
            # "SKIPPED [1] file.py:3: reason"
            node = rest.split("] ", 1)[-1].split(":", 1)[0]
        else:
            node = rest.split(" - ", 1)[0].strip()
        found.setdefault(node, set()).add(word)
    return found


def _junit_properties(path: Path) -> dict[str, list[tuple[str, str]]]:
    import re
    import xml.etree.ElementTree as ET

    props: dict[str, list[tuple[str, str]]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314 - our own report
        name = case.get("name", "")
        for prop in case.iter("property"):
            value = re.sub(r"0x[0-9a-f]+", "0x…", prop.get("value", ""))
            props.setdefault(name, []).append((prop.get("name", ""), value))
    return props


def crash_matrix_trials(lab: Lab, project: Path, *, stdout_mib: int = 50) -> list[Trial]:
    """Run every crash kind in one hermetic batch, with a passing canary after each.

    The same files run in-process too (minus the cases that would kill or
    hang pytest there). Invariants per case: the hermetic outcome is the
    expected one and equals the in-process one where that can run; the
    report shows the expected text (exit status or signal, output so far,
    the error). Then: every canary passed and every test of the batch got a
    report; KeyboardInterrupt is reported as pytest reports it in-process.
    """
    cases_source = CRASH_CASES_SOURCE.replace("STDOUT_KIB", str(stdout_mib * 1024))
    (project / "test_crash_cases.py").write_text(cases_source)
    (project / "test_crash_skip.py").write_text(CRASH_SKIP_SOURCE)
    (project / "test_crash_import.py").write_text(CRASH_IMPORT_SOURCE)
    (project / "test_inside.py").unlink(missing_ok=True)
    cache = lab.root / "crash-cache"
    hermetic_xml, in_process_xml = lab.root / "hermetic.xml", lab.root / "in-process.xml"
    import time

    started = time.perf_counter()
    hermetic = lab.run(project, cache, "-v", "-rA", f"--junitxml={hermetic_xml}")
    seconds = time.perf_counter() - started
    crashes = _crashes(stdout_mib)
    deselect = " or ".join(
        c.test.rsplit("::", 1)[-1] for c in crashes if c.not_in_process and "::" in c.test
    )
    in_process = lab.run(
        project,
        cache,
        "-v",
        "-rA",
        f"--junitxml={in_process_xml}",
        "-k",
        f"not ({deselect})",
        uv_build=False,
    )
    got, want = _summary(hermetic.output), _summary(in_process.output)
    flat = hermetic.output
    trials = []
    for crash in crashes:
        problems = []
        outcome = got.get(crash.test, set())
        if outcome != crash.outcomes:
            problems.append(f"hermetic outcome {sorted(outcome)}, want {sorted(crash.outcomes)}")
        if not crash.not_in_process and want.get(crash.test, set()) != outcome:
            problems.append(f"in-process outcome {sorted(want.get(crash.test, set()))}")
        problems += [f"the report lacks {text!r}" for text in crash.shows if text not in flat]
        if crash.name.startswith("user_properties"):
            ours = _junit_properties(hermetic_xml).get("test_unserialisable_user_properties")
            theirs = _junit_properties(in_process_xml).get("test_unserialisable_user_properties")
            if ours != theirs:
                problems.append(f"JUnit properties {ours} differ from in-process {theirs}")
        how = crash.not_in_process or "same as in-process"
        trials.append(
            Trial(
                "crash",
                crash.name,
                not problems,
                "; ".join(problems) or f"{' + '.join(sorted(outcome))} ({how})",
            )
        )
    import re

    expected = {
        f"test_crash_cases.py::{n}" for n in re.findall(r"^def (test_\w+)", cases_source, re.M)
    }
    expected |= {"test_crash_import.py::test_needs_xdist", "test_crash_skip.py"}
    canaries = sorted(n for n in expected if "test_canary_" in n)
    missing = sorted(expected - set(got))
    failed_canaries = [n for n in canaries if got.get(n) != {"PASSED"}]
    trials.append(
        Trial(
            "crash",
            "every other test in the batch still reports",
            not missing and not failed_canaries,
            f"missing reports: {missing}; canaries not passed: {failed_canaries}"
            if missing or failed_canaries
            else f"all {len(expected)} tests reported; the {len(canaries)} canaries between "
            f"the crashes passed; the hermetic batch took {seconds:.1f} s",
        )
    )
    trials.append(_interrupt_trial(lab, project, cache))
    return trials


def _interrupt_trial(lab: Lab, project: Path, cache: Path) -> Trial:
    """KeyboardInterrupt raised in a test: pytest stops the session and says so (exit 2)."""
    target = project / "test_crash_interrupt.py"
    target.write_text(CRASH_INTERRUPT_SOURCE)
    try:
        in_process = lab.run(project, cache, "-v", target.name, uv_build=False)
        hermetic = lab.run(project, cache, "-v", target.name)
    finally:
        target.unlink()
    problems = []
    if in_process.returncode != 2 or "KeyboardInterrupt" not in in_process.output:
        problems.append(f"in-process run: exit {in_process.returncode}")
    if hermetic.returncode != in_process.returncode:
        problems.append(f"hermetic exit {hermetic.returncode}, in-process {in_process.returncode}")
    if "KeyboardInterrupt" not in hermetic.output:
        said = next((ln for ln in hermetic.output.splitlines() if "hermetic worker" in ln), "")
        problems.append(f"the hermetic report does not name KeyboardInterrupt: {said!r}")
    return Trial(
        "crash",
        "KeyboardInterrupt raised in a test",
        not problems,
        "; ".join(problems) or "the session stops with KeyboardInterrupt, as in-process (exit 2)",
    )
