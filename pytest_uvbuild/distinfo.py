"""Installed distributions, named by their ``*.dist-info`` directories.

The wheel spec names that directory ``{name}-{version}.dist-info`` (the
name with ``-`` escaped as ``_``), so one listing of ``site-packages`` gives
every installed name and version without opening a file. Reading each
``METADATA`` instead, as :mod:`importlib.metadata` does, costs about half a
millisecond per distribution, which a warm session would pay for nothing.
A directory name that does not split that way falls back to the ``Name``
and ``Version`` fields of its ``METADATA``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pytest_uvbuild.project import canonicalize_name

__all__ = ["dist_infos", "installed_versions", "parse_headers"]


def parse_headers(fh: Any) -> Any:
    """Parse core metadata headers (RFC 822 style) from an open text file."""
    from email.parser import HeaderParser  # only for odd names and licenses

    return HeaderParser().parse(fh)


def _metadata_name_version(dist_info: Path) -> tuple[str, str] | None:
    try:
        with (dist_info / "METADATA").open(encoding="utf-8", errors="replace") as fh:
            headers = parse_headers(fh)
    except OSError:
        return None
    name, version = headers.get("Name"), headers.get("Version")
    return (str(name), str(version)) if name and version else None


def _listing(base: Path) -> list[str]:
    try:
        return sorted(os.listdir(base))
    except OSError:
        return []


def _name_version(base: Path, entry: str) -> tuple[str, str] | None:
    """Normalised name and version of ``base/entry`` if it is a dist-info directory."""
    if not entry.endswith(".dist-info"):
        return None
    name, _, version = entry[: -len(".dist-info")].rpartition("-")
    if not name or not version:
        parsed = _metadata_name_version(Path(base) / entry)
        if parsed is None:
            return None
        name, version = parsed
    return canonicalize_name(name), version


def dist_infos(paths: Iterable[Path]) -> Iterator[tuple[str, str, Path]]:
    """Yield (normalised name, version, dist-info path) of each distribution, in path order.

    A name may come more than once, from different paths; the first one is
    what Python imports.
    """
    for base in paths:
        for entry in _listing(base):
            found = _name_version(base, entry)
            if found is not None:
                yield found[0], found[1], Path(base) / entry


def installed_versions(paths: Iterable[Path]) -> dict[str, str]:
    """Normalised name to version of what is installed in ``paths``; the first path wins."""
    found: dict[str, str] = {}
    for base in paths:
        for entry in _listing(base):
            name_version = _name_version(base, entry)
            if name_version is not None:
                found.setdefault(*name_version)
    return dict(sorted(found.items()))
