"""Remember facts about a binary (its version, its platform) keyed by its stat.

Asking an interpreter or uv about itself costs a process start (15-30 ms).
The answer only changes when the file changes, so it is cached under the
binary's real path, size, modification time and inode. The cache-hit path of
the environment cache reads these small records instead of running anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_uvbuild.fsutil import write_atomic

__all__ = ["probe", "stat_token"]


def stat_token(path: Path) -> str:
    """The real path, size, modification time and inode of a file, as one string."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"


def probe(
    cache_dir: Path | None,
    kind: str,
    binary: Path,
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Return ``compute()`` for ``binary``, reusing an earlier answer if the file is unchanged.

    Without a ``cache_dir`` the answer is computed every time. A record that
    cannot be read is treated as missing; one that cannot be written is
    simply not kept.
    """
    if cache_dir is None:
        return compute()
    token = stat_token(binary)
    digest = hashlib.sha256(f"{kind}\0{token}".encode()).hexdigest()[:32]
    record = cache_dir / "probes" / f"{kind}-{digest}.json"
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    else:
        if isinstance(data, dict) and data.get("token") == token:
            value = data.get("value")
            if isinstance(value, dict):
                return value
    value = compute()
    # An unwritable cache only costs speed here; the env cache itself
    # reports unwritable directories with a proper error.
    with contextlib.suppress(OSError):
        write_atomic(record, json.dumps({"token": token, "value": value}).encode(), fsync=False)
    return value
