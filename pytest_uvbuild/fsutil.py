"""Small race-safe file-system helpers shared by the cache and the build record."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal, overload

if TYPE_CHECKING:
    from filelock import BaseFileLock

__all__ = [
    "HeldLock",
    "file_sha256",
    "hold_flock",
    "hold_lock",
    "remove_tree",
    "write_atomic",
]


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same directory, are flushed to
    disk, and the file is renamed over ``path``. A crash leaves at worst a
    stray ``.tmp`` file, never a truncated ``path``. A cache whose reader
    checks what it reads may pass ``fsync=False``: after a power loss the
    file may be empty, never half-written by us, and is then computed again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_tree(path: Path) -> None:
    """Delete a directory tree, including read-only entries; a missing path is fine."""

    def _make_writable(func: object, name: str, _exc: object) -> None:
        parent = os.path.dirname(name)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IWUSR | stat.S_IXUSR)
        os.chmod(name, os.stat(name).st_mode | stat.S_IWUSR)
        if os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name, ignore_errors=True)
        else:
            os.unlink(name)

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if path.exists():
        shutil.rmtree(path, onerror=_make_writable)


class HeldLock:
    """An exclusive lock on a file, held until :meth:`release`.

    Taken by :func:`hold_lock` (a :mod:`filelock` lock) or by
    :func:`hold_flock` (the same ``flock``, on a descriptor of our own).
    """

    __slots__ = ("_fd", "_lock", "path")

    def __init__(self, path: Path, lock: BaseFileLock | None = None, fd: int | None = None) -> None:
        self.path = path
        self._lock = lock
        self._fd = fd

    def release(self, *, unlink: bool = False) -> None:
        """Give the lock up; with ``unlink`` remove its file first, while still holding it.

        Removing first means nobody can find the file unlocked and mistake it
        for one left by a dead process (filelock retries a lock whose file
        was removed under it).
        """
        if unlink:
            self.path.unlink(missing_ok=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


@overload
def hold_lock(path: Path, *, wait: Literal[True]) -> HeldLock: ...
@overload
def hold_lock(
    path: Path, *, wait: Literal[False] = False, timeout: float = 0
) -> HeldLock | None: ...
def hold_lock(path: Path, *, wait: bool = False, timeout: float = 0) -> HeldLock | None:
    """Lock ``path`` (created if missing), waiting for it as long as ``wait`` or ``timeout`` say.

    With ``wait`` the lock is waited for without limit; otherwise for up
    to ``timeout`` seconds (filelock polls every 50 ms), and ``None`` means
    another process still holds it. filelock is imported here, on first
    use: a session that never needs an env (no ``--uv-build``, no
    ``uv_env``) never pays for it.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=-1 if wait else timeout, poll_interval=0.05)
    except Timeout:
        return None
    return HeldLock(path, lock)


@overload
def hold_flock(path: Path, *, wait: Literal[True]) -> HeldLock: ...
@overload
def hold_flock(path: Path, *, wait: Literal[False] = False) -> HeldLock | None: ...
def hold_flock(path: Path, *, wait: bool = False) -> HeldLock | None:
    """Lock ``path`` (created if missing) as :func:`hold_lock` does, without importing filelock.

    It is the lock filelock takes on POSIX (``flock`` on the open file), so
    filelock's locks and ``cache prune`` see it as held; it is taken
    directly where importing filelock would cost more than the rest of the
    work: a cache hit's lease, the build record's lock, and the test at
    exit whether a zygote holds its name. Without ``wait``, ``None`` means
    another process holds it, or removed the file while it was being
    locked (a lease then takes another name). With ``wait``, a file removed
    meanwhile is opened and locked again. Without :mod:`fcntl` (Windows),
    filelock takes it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX has fcntl
        return hold_lock(path, wait=True) if wait else hold_lock(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            # `cache prune` removes a lease file it could lock (its session is
            # gone): locked after that, this descriptor holds a file nobody sees.
            removed = os.fstat(fd).st_nlink == 0
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if not removed:
            return HeldLock(path, fd=fd)
        os.close(fd)
        if not wait:
            return None
