"""Turn a failed uv command into one error that says what went wrong and names the fix.

uv's exit status and stderr are matched against the failures a user can fix:
a stale, missing or malformed lock, offline mode with a cold cache, an
unreachable index, a full disk, a hash mismatch. Only a failure imports this
module (see :meth:`pytest_uvbuild.uvcli.Uv.run`).
"""

from __future__ import annotations

import re
import signal
from typing import Final

from pytest_uvbuild.errors import LockfileError, UvCommandError

__all__ = ["exit_description", "first_error_lines", "translate_failure"]

_NETWORK_PATTERNS: Final = (
    "error sending request",
    "dns error",
    "failed to lookup address",
    "connection refused",
    "Could not connect",
    "tcp connect error",
    "operation timed out",
    "Failed to fetch",
)


# uv's progress chatter ("Using CPython ...", "Creating virtual environment
# at ...") says nothing about a failure; the message starts at "error:".
def first_error_lines(stderr: str, limit: int = 8) -> str:
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    for index, line in enumerate(lines):
        if line.lstrip().startswith("error:"):
            lines = lines[index:]
            break
    return "\n".join("  " + ln for ln in lines[:limit])


# What a program sees when the disk (or a quota, or `ulimit -f`) stops a write.
_DISK_FULL_PATTERNS: Final = (
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
)


def exit_description(returncode: int) -> str:
    """Say how a process ended: ``exit status 2`` or ``killed by SIGXFSZ (file size limit)``."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"killed by signal {-returncode}"
    if name == "SIGXFSZ":
        return "killed by SIGXFSZ (file size limit exceeded)"
    return f"killed by {name}"


def _disk_full(returncode: int, flat: str) -> bool:
    xfsz = getattr(signal, "SIGXFSZ", None)
    return (xfsz is not None and returncode == -xfsz) or any(p in flat for p in _DISK_FULL_PATTERNS)


def translate_failure(what: str, returncode: int, stderr: str) -> UvCommandError | LockfileError:
    """Map a failed uv call to one error whose message names the fix."""
    detail = first_error_lines(stderr)
    # uv wraps its messages to the terminal width ($COLUMNS, often 80 in CI),
    # so a phrase may be split over lines: match on the text with every run
    # of whitespace made one space.
    flat = " ".join(stderr.split())
    if "needs to be updated, but `--locked` was provided" in flat or (
        "needs to be updated" in flat and "--check" in what
    ):
        return LockfileError(
            "uv.lock is out of date with pyproject.toml. Fix: run `uv lock` and commit uv.lock."
        )
    if "Unable to find lockfile" in flat:
        return LockfileError(
            "uv.lock is missing. Fix: run `uv lock` in the project and commit uv.lock."
        )
    if "Failed to parse `uv.lock`" in flat or "unsupported schema version" in flat:
        return LockfileError(
            "uv.lock cannot be parsed:\n"
            f"{detail}\nFix: regenerate it with `uv lock` (or upgrade uv if the lock is newer)."
        )
    if "Network connectivity is disabled" in flat:
        return UvCommandError(
            f"{what} needs packages that are not in uv's cache, and offline mode is on:\n"
            f"{detail}\nFix: run once without --uv-offline (or UV_OFFLINE) to fill the cache.",
            returncode=returncode,
            stderr=stderr,
        )
    if any(p.lower() in flat.lower() for p in _NETWORK_PATTERNS):
        return UvCommandError(
            f"{what} could not reach the package index:\n{detail}\n"
            "Fix: check the network or index URL, or use --uv-offline with a warm uv cache.",
            returncode=returncode,
            stderr=stderr,
        )
    if _disk_full(returncode, flat):
        return UvCommandError(
            f"{what} could not write its files: the disk is full or a file size limit "
            f"stopped it (uv {exit_description(returncode)}).\n{detail}\n"
            "Fix: free disk space where uv's cache (UV_CACHE_DIR) and the env cache "
            "(--uv-cache-dir) live, or raise the limit (ulimit -f).",
            returncode=returncode,
            stderr=stderr,
        )
    hash_match = re.search(r"Hash mismatch for `([^`]+)`", flat)
    if hash_match:
        return UvCommandError(
            f"{what} refused {hash_match.group(1)}: its hash does not match uv.lock.\n{detail}\n"
            "Fix: check the index for tampering, or re-lock with `uv lock --refresh`.",
            returncode=returncode,
            stderr=stderr,
        )
    return UvCommandError(
        f"{what} failed (uv {exit_description(returncode)}):\n{detail}\n"
        "Fix: correct what uv reports above; running the same uv command in the project "
        "shows its full output.",
        returncode=returncode,
        stderr=stderr,
    )
