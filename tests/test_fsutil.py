"""Unit tests of the file-system helpers: the lock a cache hit and the build record take."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from pytest_uvbuild.fsutil import hold_flock, hold_lock


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


def _python(code: str, *, piped: bool = False) -> subprocess.Popen[str]:
    """Start a Python process running ``code``; ``piped``: with its stdin and stdout piped."""
    pipe = subprocess.PIPE if piped else None
    return subprocess.Popen([sys.executable, "-c", code], stdin=pipe, stdout=pipe, text=True)


@contextlib.contextmanager
def _held_by_another_process(take: str, release: str) -> Iterator[Callable[[], None]]:
    """Hold a lock in another process (``take``) until the yielded function lets it go."""
    holder = _python(
        f"import sys\n{take}\nprint('held', flush=True)\nsys.stdin.readline()\n"
        f"{release}\nprint('released', flush=True)\nsys.stdin.readline()\n",
        piped=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    stdin, stdout = holder.stdin, holder.stdout

    def let_go() -> None:
        stdin.write("let go\n")
        stdin.flush()
        assert stdout.readline().strip() == "released"

    try:
        assert stdout.readline().strip() == "held"
        yield let_go
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_held_by_another_process_is_not_taken(tmp_path: Path) -> None:
    """hold_lock answers None while another process holds the lock, and takes it once let go."""
    path = tmp_path / "x.lock"
    take = f"from pytest_uvbuild.fsutil import hold_lock\nheld = hold_lock({str(path)!r})"
    with _held_by_another_process(take, "held.release()") as let_go:
        assert hold_lock(path) is None
        assert hold_lock(path, timeout=0.2) is None
        let_go()
        waited = hold_lock(path, timeout=60)
        assert waited is not None
        waited.release()


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
    """A lease taken with hold_flock is held for filelock, and the other way round."""
    path = tmp_path / "lease.lock"
    held = hold_flock(path)
    assert held is not None
    assert hold_lock(path) is None
    assert hold_flock(path) is None
    held.release(unlink=True)
    assert not path.exists()
    with FileLock(str(path)):
        assert hold_flock(path) is None
    again = hold_flock(path)
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
    closed = _recorded_closes(monkeypatch)
    assert hold_flock(path) is None
    assert len(closed) == 1  # its descriptor is not left open


def _recorded_closes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors os.close is called with from now on (it still closes them)."""
    closed: list[int] = []
    real_close = os.close

    def recorded_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(os, "close", recorded_close)
    return closed


def test_a_wait_for_a_lock_cut_short_closes_its_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while waiting for a lock propagates and leaves no descriptor open on the file."""

    def interrupted(fd: int, operation: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fcntl, "flock", interrupted)
    closed = _recorded_closes(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        hold_flock(tmp_path / "record.lock", wait=True)
    assert len(closed) == 1


def test_a_waiting_lock_waits_for_a_filelock_holder_in_another_process(tmp_path: Path) -> None:
    """A waiting hold_flock waits while another process holds the file with filelock, then locks."""
    path = tmp_path / "record.lock"
    take = f"from filelock import FileLock\nlock = FileLock({str(path)!r})\nlock.acquire()"
    with _held_by_another_process(take, "lock.release()") as let_go:
        waiter = _python(
            "from pytest_uvbuild.fsutil import hold_flock\n"
            f"from pathlib import Path\nhold_flock(Path({str(path)!r}), wait=True).release()\n"
        )
        with pytest.raises(subprocess.TimeoutExpired):
            waiter.wait(timeout=0.5)  # still waiting: the holder has it
        let_go()
        assert waiter.wait(timeout=60) == 0
    held = hold_flock(path, wait=True)
    assert _busy(FileLock(str(path)))
    held.release()
    assert not _busy(FileLock(str(path)))


def test_a_waiting_lock_whose_file_was_removed_meanwhile_locks_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record lock file removed while it was waited for is opened and locked again."""
    path = tmp_path / "record.lock"
    real_flock = fcntl.flock
    removals = [True]

    def removed_first(fd: int, operation: int) -> None:
        if removals:
            removals.pop()
            path.unlink()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", removed_first)
    held = hold_flock(path, wait=True)
    assert path.exists()  # the lock is on a file others can see
    assert hold_lock(path) is None
    held.release()
