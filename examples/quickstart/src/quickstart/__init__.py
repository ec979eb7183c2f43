"""A tiny library whose behaviour depends on the locked version of packaging."""

from __future__ import annotations

from packaging.version import Version


def newest(versions: list[str]) -> str:
    """Return the highest of ``versions`` by PEP 440 rules."""
    return str(max(Version(v) for v in versions))
