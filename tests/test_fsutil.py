"""Unit tests of the file-system helpers: the lock a cache hit and the build record take."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from filelock import FileLock

from pytest_uvbuild.fsutil import hold_lock, hold_new_lock


def test_hold_lock_and_filelock_see_each_other(tmp_path: Path) -> None:
    """A file held with hold_lock cannot be taken with filelock, and the other way round."""
    path = tmp_path / "x.lock"
    held = hold_lock(path)
    assert held is not None
    other = FileLock(str(path))
    assert _busy(other)
    held.release()
    assert not _busy(other)
    with other:
        assert hold_lock(path) is None


def _busy(lock: FileLock) -> bool:
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def test_a_lock_held_by_another_process_is_not_taken(tmp_path: Path) -> None:
    """hold_lock answers None while another process holds the lock, and takes it once let go."""
    path = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""\
                import sys
                from pathlib import Path
                from pytest_uvbuild.fsutil import hold_lock
                held = hold_lock(Path({str(path)!r}))
                print("held", flush=True)
                sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdin is not None
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert hold_lock(path) is None
        assert hold_lock(path, timeout=0.2) is None
        holder.stdin.write("let go\n")
        holder.stdin.flush()
        waited = hold_lock(path, timeout=60)
        assert waited is not None
        waited.release()
    finally:
        holder.kill()
        holder.wait()


def test_release_with_unlink_removes_the_file_while_still_held(tmp_path: Path) -> None:
    """A released lease leaves no file behind; the next hold makes a fresh one."""
    path = tmp_path / "x.lock"
    held = hold_lock(path)
    assert held is not None
    held.release(unlink=True)
    assert not path.exists()
    again = hold_lock(path)
    assert again is not None
    assert path.exists()
    again.release()


def test_a_new_lock_and_filelock_see_each_other(tmp_path: Path) -> None:
    """A lease taken with hold_new_lock is held for filelock, and the other way round."""
    path = tmp_path / "lease.lock"
    held = hold_new_lock(path)
    assert held is not None
    assert hold_lock(path) is None
    assert hold_new_lock(path) is None
    held.release(unlink=True)
    assert not path.exists()
    with FileLock(str(path)):
        assert hold_new_lock(path) is None
    again = hold_new_lock(path)
    assert again is not None
    again.release()
    assert hold_lock(path) is not None


def test_a_new_lock_whose_file_was_removed_meanwhile_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease file removed between its creation and its lock (prune clearing it) is not kept."""
    path = tmp_path / "lease.lock"
    real_flock = fcntl.flock

    def removed_first(fd: int, operation: int) -> None:
        path.unlink()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", removed_first)
    closed: list[int] = []
    real_close = os.close

    def recorded_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "close", recorded_close)
    assert hold_new_lock(path) is None
    assert len(closed) == 1  # its descriptor is not left open
