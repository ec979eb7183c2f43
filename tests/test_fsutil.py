"""Unit tests of the file-system helpers: the lock a cache hit and the build record take."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from filelock import FileLock

from pytest_uvbuild.fsutil import hold_lock


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
    """hold_lock answers None while another process holds the file; waiting takes it after."""
    path = tmp_path / "x.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""\
                import sys, time
                from pathlib import Path
                from pytest_uvbuild.fsutil import hold_lock
                held = hold_lock(Path({str(path)!r}))
                print("held", flush=True)
                time.sleep(0.3)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert hold_lock(path) is None
        waited = hold_lock(path, wait=True)
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
