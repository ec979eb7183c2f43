"""Is an installed environment still what was built? A cheap listing check and a full check.

Every wheel installer, uv included, leaves ``<name>.dist-info/RECORD`` naming
each file it installed with its sha256. Two checks rest on that:

- :func:`top_level` / :func:`missing_top_level` run on every cache hit. One
  directory listing (about 0.1 ms for 150 entries) is compared with the
  names recorded when the env was built, which finds a removed package,
  top-level module or ``.dist-info``. Names that appear later are left to
  the build record's drift audit. ``__pycache__`` is ignored: Python makes
  it on import.
- :func:`verify_site` runs on ``cache verify``. Every file that every
  ``RECORD`` names must exist with its recorded hash, so it finds a file
  removed or changed deep inside a package. It reads every file (about a
  second per 10,000 files), which is why sessions do not run it.

uv installs by hard-linking files from its own cache, so a file changed in
place in an env is changed in uv's cache too, and a rebuild links the
changed file again: :class:`Damage` keeps the distribution's name so that
the fix (``uv cache clean NAME``) can be named.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import NamedTuple

__all__ = ["Damage", "missing_top_level", "top_level", "verify_site"]

_IGNORED: frozenset[str] = frozenset({"__pycache__"})


def top_level(site: Path) -> list[str]:
    """The sorted names directly under ``site``, without the ones Python makes on import."""
    return sorted(name for name in os.listdir(site) if name not in _IGNORED)


def missing_top_level(site: Path, recorded: list[str]) -> list[str]:
    """Recorded names that are no longer under ``site`` (all of them if it is unreadable)."""
    try:
        present = set(os.listdir(site))
    except OSError:
        return list(recorded)
    return [name for name in recorded if name not in present]


# A NamedTuple, not a dataclass: it costs a tenth as much to define, and every
# warm session imports this module.
class Damage(NamedTuple):
    """One file that a RECORD names but that is not as installed."""

    #: The distribution whose RECORD names the file, e.g. ``pluggy``.
    distribution: str
    #: ``missing``, ``changed`` or ``unreadable``.
    kind: str
    #: The file, relative to the site directory.
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def _digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def verify_site(site: Path) -> list[Damage]:
    """Check every file each ``RECORD`` under ``site`` names; return what is missing or changed.

    Paths in a RECORD are relative to ``site`` (scripts are reached with
    ``../../../bin/...``). Entries without a hash (the RECORD itself,
    bytecode) only have to exist.
    """
    import csv

    problems: list[Damage] = []
    try:
        names = sorted(os.listdir(site))
    except OSError:
        return [Damage("", "missing", str(site))]
    for name in names:
        if not name.endswith(".dist-info"):
            continue
        distribution = name.split("-", 1)[0].replace("_", "-").lower()
        record = site / name / "RECORD"
        try:
            with open(record, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error):
            problems.append(Damage(distribution, "unreadable", f"{name}/RECORD"))
            continue
        for row in rows:
            if not row or not row[0]:
                continue
            path = os.path.normpath(os.path.join(site, row[0]))
            shown = os.path.relpath(path, site)
            algorithm, _, expected = (row[1] if len(row) > 1 else "").partition("=")
            try:
                if not expected or algorithm != "sha256":
                    if not os.path.lexists(path):
                        problems.append(Damage(distribution, "missing", shown))
                elif _digest(path) != expected:
                    problems.append(Damage(distribution, "changed", shown))
            except FileNotFoundError:
                problems.append(Damage(distribution, "missing", shown))
            except OSError:
                problems.append(Damage(distribution, "unreadable", shown))
    return problems
