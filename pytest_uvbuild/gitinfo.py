"""Which commit a run came from: commit, branch, dirty flag, a digest of the diff, the remote.

Everything is asked of the real ``git`` binary. Outside a repository (or
without git) the answer is ``None``. Nothing secret leaves this module: the
uncommitted diff is reduced to a sha256 digest, and the remote URL loses any
user name, password, token, query string and fragment (:func:`redact_url`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["GitQuery", "git_info", "redact_url"]

_SCP_LIKE: Final = re.compile(r"^(?P<user>[^@/:]+)@(?P<host>[^/:]+):(?P<path>.*)$")
# git itself forwards these to child processes; a user's GIT_DIR must not make
# us describe another repository than the project's.
_GIT_LOCATION_VARS: Final = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_CEILING_DIRECTORIES",
)


def redact_url(url: str, *, keep_query: bool = False) -> str:
    """Return ``url`` without credentials, and without query string or fragment.

    ``https://user:token@host/x.git`` and ``https://token@host/x.git`` become
    ``https://host/x.git``. For ssh a bare user name is kept (``git@host:x``
    and ``ssh://git@host/x`` name an account, not a secret) but a password is
    dropped. Local paths come back unchanged. ``keep_query`` keeps the query
    and fragment, which in a lock's git source are the revision and commit.
    """
    text = url.strip()
    scp = _SCP_LIKE.match(text)
    if scp and "://" not in text:
        user = scp.group("user").split(";", 1)[0]
        return f"{user}@{scp.group('host')}:{scp.group('path')}"
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        # Unparseable: keep only the scheme, which cannot hold a secret.
        return text.split("://", 1)[0] + "://<redacted>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    scheme = parts.scheme.lower()
    if parts.username and scheme in ("ssh", "git+ssh", "ssh+git"):
        netloc = f"{parts.username}@{netloc}"
    if keep_query:
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _git_environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    return env


def _git(git: str, root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [git, "-C", str(root), *args],
        capture_output=True,
        env=_git_environ(),
        stdin=subprocess.DEVNULL,
        check=False,
        timeout=60,
    )


def _parse_status(output: bytes) -> tuple[str | None, str | None, list[bytes], list[bytes]]:
    """Split ``git status --porcelain=v2 --branch -z`` into commit, branch, changes, untracked."""
    commit = branch = None
    changes: list[bytes] = []
    untracked: list[bytes] = []
    records = output.split(b"\0")
    index = 0
    while index < len(records):
        record = records[index]
        index += 1
        if record.startswith(b"# branch.oid "):
            oid = record[len(b"# branch.oid ") :].decode()
            commit = None if oid == "(initial)" else oid
        elif record.startswith(b"# branch.head "):
            head = record[len(b"# branch.head ") :].decode(errors="replace")
            branch = None if head == "(detached)" else head
        elif record.startswith(b"? "):
            untracked.append(record[2:])
        elif record.startswith(b"2 "):
            # A rename record is followed by the original path as its own field.
            changes.append(record)
            index += 1
        elif record[:2] in (b"1 ", b"u "):
            changes.append(record)
    return commit, branch, changes, untracked


def _diff_digest(git: str, root: Path, untracked: list[bytes]) -> str:
    """Digest of the uncommitted changes: the binary diff against HEAD plus untracked files."""
    # Paths in porcelain v2 are relative to the top of the checkout, which
    # only a dirty checkout needs to know.
    top = Path(os.fsdecode(_git(git, root, "rev-parse", "--show-toplevel").stdout.strip()))
    digest = hashlib.sha256()
    diff = _git(git, top, "diff", "HEAD", "--binary", "--no-ext-diff", "--no-color")
    digest.update(diff.stdout)
    for rel in sorted(untracked):
        digest.update(b"\0untracked\0" + rel + b"\0")
        path = top / os.fsdecode(rel)
        try:
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()


def _remotes(config_output: bytes) -> tuple[str | None, str | None]:
    remotes: dict[str, str] = {}
    for line in config_output.decode(errors="replace").splitlines():
        key, _, value = line.partition(" ")
        name = key[len("remote.") : -len(".url")]
        remotes.setdefault(name, value)
    if not remotes:
        return None, None
    name = "origin" if "origin" in remotes else sorted(remotes)[0]
    return name, redact_url(remotes[name])


#: The independent queries behind :func:`git_info`: each costs milliseconds, mostly start-up.
_QUERIES: Final = (
    ("status", "--porcelain=v2", "--branch", "--untracked-files=all", "-z"),
    ("config", "--get-regexp", r"^remote\..*\.url$"),
)


def _in_checkout(root: Path) -> bool:
    """Whether a ``.git`` (directory, or file of a worktree) is at or above ``root``.

    git finds its repository the same way (the variables that would point it
    elsewhere are not passed on), so without one it can only say "not a git
    repository"; no process is started to hear that.
    """
    directory = os.path.abspath(root)
    while True:
        if os.path.exists(os.path.join(directory, ".git")):
            return True
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent


class GitQuery:
    """The git queries about ``root``, started at once; see :meth:`result`.

    With ``background``, a short-lived thread starts the git processes
    (each start costs the starter a few milliseconds, waiting for ``exec``),
    so that a session pays nothing for them while it collects; call
    :meth:`started` before anything that may fork (the tests), so that no
    thread of ours is alive then. The answer describes the checkout as it
    was when git was asked.
    """

    def __init__(self, root: Path, *, background: bool = False) -> None:
        self.root = root
        self._git = shutil.which("git") if _in_checkout(root) else None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._starter: threading.Thread | None = None
        if self._git is None:
            return
        if background:
            self._starter = threading.Thread(
                target=self._start, name="pytest-uvbuild-git", daemon=True
            )
            self._starter.start()
        else:
            self._start()

    def _start(self) -> None:
        assert self._git is not None
        try:
            for args in _QUERIES:
                self._procs.append(
                    subprocess.Popen(
                        [self._git, "-C", str(self.root), *args],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        stdin=subprocess.DEVNULL,
                        env=_git_environ(),
                    )
                )
        except OSError:
            self._git = None  # result() then answers None; cancel() reaps what started

    def started(self) -> None:
        """Wait until every git process has been started (the starter thread is gone)."""
        if self._starter is not None:
            self._starter.join()
            self._starter = None

    def cancel(self) -> None:
        """Stop queries that are still running (the session ends without a record)."""
        self.started()
        _reap(self._procs)
        self._procs = []

    def result(self) -> dict[str, Any] | None:
        """The checkout's facts; ``None`` outside a git checkout or without git."""
        self.started()
        git, procs = self._git, self._procs
        self._procs = []
        if git is None or len(procs) != len(_QUERIES):
            _reap(procs)
            return None
        try:
            answers = []
            for proc in procs:
                out, _ = proc.communicate(timeout=60)
                answers.append((proc.returncode, out))
            (status_rc, status_out), (_, config_out) = answers
            if status_rc != 0:
                return None  # not a checkout
            commit, branch, changes, untracked = _parse_status(status_out)
            dirty = bool(changes or untracked)
            remote_name, remote_url = _remotes(config_out)
            diff_sha = _diff_digest(git, self.root, untracked) if dirty and commit else None
        except (OSError, subprocess.SubprocessError):
            _reap(procs)
            return None
        return {
            "commit": commit,
            "branch": branch,
            "dirty": dirty,
            "diff_sha256": diff_sha,
            "remote": remote_name,
            "remote_url": remote_url,
        }


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    """Stop and wait for git processes whose answer is not wanted."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def git_info(root: Path) -> dict[str, Any] | None:
    """Describe the git checkout containing ``root``; ``None`` outside one or without git."""
    return GitQuery(root).result()
