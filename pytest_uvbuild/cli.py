"""``python -m pytest_uvbuild``: env keys, cache management, build records, warm workers.

Each sub-command is one function taking the parsed arguments and returning
an exit status; :func:`main` turns our errors into one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pytest_uvbuild.cacheadmin import parse_age
from pytest_uvbuild.envcache import EnvCache, default_cache_dir
from pytest_uvbuild.errors import UvBuildError
from pytest_uvbuild.request import INSTALL_MODES, EnvRequest

__all__ = ["build_parser", "main"]


def _cache(args: argparse.Namespace) -> EnvCache:
    # Absent unless given somewhere on the line (see ``build_parser``).
    given = getattr(args, "uv_cache_dir", None)
    return EnvCache(Path(given) if given else default_cache_dir())


def _human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def cmd_key(args: argparse.Namespace) -> int:
    """Print the env key for the project and selection (for CI cache keys)."""
    request = EnvRequest(
        project_dir=Path(args.project) if args.project else None,
        python=args.python,
        groups=tuple(args.group),
        only_groups=tuple(args.only_group),
        no_default_groups=args.no_default_groups,
        extras=tuple(args.extra),
        all_extras=args.all_extras,
        install_project=args.install_project,
    )
    _project, _sel, _interp, key, inputs = _cache(args).resolve(request, Path.cwd())
    if args.json:
        print(json.dumps({"key": key, "inputs": inputs}, indent=2, sort_keys=True))
    else:
        print(key)
    return 0


def cmd_cache_dir(args: argparse.Namespace) -> int:
    """Print where the cache lives."""
    print(_cache(args).root)
    return 0


def _listed_in_full(as_json: bool, rows: Sequence[Mapping[str, object]], none: str) -> bool:
    """Print ``rows`` as JSON, or ``none`` if there are none; whether that was all to print."""
    if as_json:
        print(json.dumps(list(rows), indent=2))
    elif not rows:
        print(none)
    return as_json or not rows


def cmd_cache_list(args: argparse.Namespace) -> int:
    """Print one line (or JSON object) per cached env."""
    entries = _cache(args).entries()
    if _listed_in_full(
        args.json, [e.as_json() for e in entries], f"no envs cached in {_cache(args).root}"
    ):
        return 0
    print(f"{'KEY':<16}  {'PYTHON':<15}  {'SIZE':>9}  {'LAST USED':<16}  PROJECT")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        python = e.python.split(" (", 1)[0]  # the interpreter's path is in --json
        flags = ("" if e.complete else "  [incomplete]") + ("  [in use]" if e.in_use else "")
        print(
            f"{e.key:<16}  {python:<15}  {_human_size(e.size):>9}  {used:<16}  {e.project}{flags}"
        )
    return 0


def cmd_cache_prune(args: argparse.Namespace) -> int:
    """Remove unused envs; never one that a running session holds."""
    if not args.all and args.older_than is None:
        print("error: cache prune needs --older-than AGE (e.g. 30d) or --all", file=sys.stderr)
        return 2
    try:
        older = parse_age(args.older_than) if args.older_than is not None else None
    except ValueError as exc:
        print(f"error: cache prune --older-than: {exc}", file=sys.stderr)
        return 2
    removed, busy = _cache(args).prune(older_than=older, everything=args.all)
    for e in removed:
        print(f"removed {e.key} ({_human_size(e.size)}) {e.project}")
    for e in busy:
        print(f"kept {e.key}: in use by a running session")
    print(f"{len(removed)} removed, {len(busy)} in use")
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    """Check every cached env file by file; damaged ones are rebuilt by the next session."""
    results = _cache(args).verify()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "key": r.key,
                        "busy": r.busy,
                        "damaged": r.damaged,
                        "problems": list(r.problems),
                        "damaged_layers": list(r.damaged_layers),
                        "changed_in_place": list(r.changed),
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    for r in results if not args.json else ():
        if r.busy:
            print(f"busy    {r.key}: being built, not checked")
        elif not r.damaged:
            print(f"ok      {r.key}")
        else:
            shown = [*r.problems[:5], *(f"project layer {n}" for n in r.damaged_layers)]
            more = len(r.problems) - 5 if len(r.problems) > 5 else 0
            print(f"DAMAGED {r.key}: {'; '.join(shown)}{f' and {more} more' if more else ''}")
    damaged = sum(r.damaged for r in results)
    changed = sorted({name for r in results for name in r.changed})
    if not args.json:
        print(
            f"{len(results)} checked, {damaged} damaged"
            + (": the next session rebuilds them" if damaged else "")
        )
        if changed:
            # uv hard-links envs from its cache: a file edited in place is
            # edited there too, and a rebuild would link it again.
            print(
                "Files were changed in place, so uv's own cache (which envs are hard-linked "
                f"from) may hold the same changes. Fix: uv cache clean {' '.join(changed)}"
            )
    return 1 if damaged else 0


#: How long ``warm stop`` waits for the warm workers it stopped to be gone.
WARM_STOP_SECONDS = 5.0


def _seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def cmd_warm_list(args: argparse.Namespace) -> int:
    """Print one line (or JSON object) per warm worker waiting for the next session."""
    from pytest_uvbuild.prewarm import socket_dir_in, waiting

    zygotes = waiting()
    if _listed_in_full(
        args.json, [z.as_json() for z in zygotes], f"no warm workers waiting in {socket_dir_in()}"
    ):
        return 0
    now = time.time()
    print(f"{'PID':<8}  {'STATE':<9}  {'AGE':>5}  {'LEFT':>5}  PYTHON")
    for z in zygotes:
        age = "?" if z.started is None else _seconds(now - z.started)
        left = "?" if z.until is None else _seconds(z.until - now)
        print(f"{z.pid:<8}  {z.state:<9}  {age:>5}  {left:>5}  {z.python or '?'}")
    return 0


def cmd_warm_stop(args: argparse.Namespace) -> int:
    """Stop every warm worker of this user that waits; 1 if one is still there after 5 s."""
    from pytest_uvbuild.prewarm import stop_waiting, waiting

    stopped = stop_waiting(timeout=WARM_STOP_SECONDS)
    print(f"{stopped} stopped")
    left = waiting()
    if left:
        pids = ", ".join(str(z.pid) for z in left)
        print(
            f"error: {len(left)} warm worker(s) still waiting after {WARM_STOP_SECONDS:g} s "
            f"(pid {pids}). Fix: run warm stop again, or kill them.",
            file=sys.stderr,
        )
        return 1
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def cmd_show(args: argparse.Namespace) -> int:
    """Print a summary of one build record."""
    from pytest_uvbuild.records import load_metadata, show_lines

    if args.json:
        print(json.dumps(load_metadata(Path(args.build)), indent=2))
        return 0
    for line in show_lines(Path(args.build)):
        print(line)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """Print the audit difference between two build records (A is the baseline)."""
    from pytest_uvbuild.records import diff_lines

    differs, lines = diff_lines(Path(args.a), Path(args.b))
    for line in lines:
        print(line)
    return 1 if differs and args.check else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-check SHA256SUMS and rebuild the requirements and sdist; 1 unless identical."""
    from pytest_uvbuild.records import verify_lines, verify_record

    result = verify_record(
        Path(args.build),
        project_dir=Path(args.project) if args.project else None,
        offline=args.offline,
    )
    for line in verify_lines(result):
        print(line)
    return 0 if result.ok else 1


def _add_record_commands(sub: Any) -> None:
    show = sub.add_parser("show", help="Print a summary of a build record")
    show.add_argument("build", metavar="BUILD", help="A build record directory (builds/<id>)")
    show.add_argument("--json", action="store_true", help="Print metadata.json instead")
    show.set_defaults(func=cmd_show)
    diff = sub.add_parser("diff", help="Print the audit difference between two build records")
    diff.add_argument(
        "a", metavar="A", help="The earlier record (dir, audit.json or metadata.json)"
    )
    diff.add_argument("b", metavar="B", help="The later record")
    diff.add_argument("--check", action="store_true", help="Exit with 1 when they differ")
    diff.set_defaults(func=cmd_diff)
    verify = sub.add_parser("verify", help="Re-check SHA256SUMS and rebuild to prove byte identity")
    verify.add_argument("build", metavar="BUILD", help="A build record directory (builds/<id>)")
    verify.add_argument(
        "--project",
        metavar="DIR",
        default=None,
        help="Project to rebuild from (default: the one recorded, else the current dir)",
    )
    verify.add_argument("--offline", action="store_true", help="Run uv in offline mode")
    verify.set_defaults(func=cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m pytest_uvbuild``."""
    # Accepted before or after each sub-command; SUPPRESS keeps a sub-parser's
    # unset copy from overwriting a value given earlier on the line.
    common = _Parser(add_help=False)
    common.add_argument(
        "--uv-cache-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="Env cache location (default: $PYTEST_UVBUILD_CACHE_DIR or "
        "$XDG_CACHE_HOME/pytest-uvbuild)",
    )
    parser = _Parser(
        prog="python -m pytest_uvbuild",
        description="Inspect pytest-uvbuild's env cache, build records and warm workers.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    key = sub.add_parser("key", parents=[common], help="Print the env key (for CI cache keys)")
    # The same choices as the plugin's --uv-* options, so that CI computes the
    # key the tests will use.
    key.add_argument(
        "--project",
        metavar="DIR",
        default=None,
        help="uv project (default: nearest dir at or above the cwd with pyproject.toml and "
        "uv.lock), like --uv-project",
    )
    key.add_argument(
        "--python", metavar="SPEC", default=None, help="Python version or path, like --uv-python"
    )
    key.add_argument("--group", metavar="NAME", action="append", default=[], help="Like --uv-group")
    key.add_argument(
        "--only-group", metavar="NAME", action="append", default=[], help="Like --uv-only-group"
    )
    key.add_argument("--no-default-groups", action="store_true", help="Like --uv-no-default-groups")
    key.add_argument("--extra", metavar="NAME", action="append", default=[], help="Like --uv-extra")
    key.add_argument("--all-extras", action="store_true", help="Like --uv-all-extras")
    key.add_argument(
        "--install-project",
        choices=INSTALL_MODES,
        default="wheel",
        help="Like --uv-install-project (default: wheel)",
    )
    key.add_argument("--json", action="store_true", help="Also print the key's inputs")
    key.set_defaults(func=cmd_key)

    cache = sub.add_parser("cache", parents=[common], help="Manage the env cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    c_dir = cache_sub.add_parser("dir", parents=[common], help="Print the cache location")
    c_dir.set_defaults(func=cmd_cache_dir)
    c_list = cache_sub.add_parser("list", parents=[common], help="List cached envs")
    c_list.add_argument(
        "--json", action="store_true", help="Print a JSON list with every field of each env"
    )
    c_list.set_defaults(func=cmd_cache_list)
    c_prune = cache_sub.add_parser("prune", parents=[common], help="Remove unused envs")
    c_prune.add_argument("--older-than", metavar="AGE", default=None, help="e.g. 30d, 12h")
    c_prune.add_argument("--all", action="store_true", help="Remove every env not in use")
    c_prune.set_defaults(func=cmd_cache_prune)
    c_verify = cache_sub.add_parser(
        "verify",
        parents=[common],
        help="Check every file of every cached env against its RECORD; exit 1 if any is damaged",
    )
    c_verify.add_argument("--json", action="store_true", help="Print a JSON list of results")
    c_verify.set_defaults(func=cmd_cache_verify)
    _add_record_commands(sub)
    warm = sub.add_parser("warm", help="List or stop warm workers (see hermetic_keep_warm)")
    warm_sub = warm.add_subparsers(dest="warm_command", required=True)
    w_list = warm_sub.add_parser(
        "list", help="List this user's warm workers waiting for the next session ($TMPDIR)"
    )
    w_list.add_argument(
        "--json", action="store_true", help="Print a JSON list with every field of each one"
    )
    w_list.set_defaults(func=cmd_warm_list)
    w_stop = warm_sub.add_parser(
        "stop", help="Stop every warm worker of this user that waits; print how many"
    )
    w_stop.set_defaults(func=cmd_warm_stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UvBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
