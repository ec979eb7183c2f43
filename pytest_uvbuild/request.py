"""What a user asks an env to be: the ``--uv-*`` options, a marker, or the factory's arguments.

This module is deliberately tiny: the plugin imports it at start-up, while
the cache machinery is imported only when an env is actually needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, NamedTuple

__all__ = ["INSTALL_MODES", "EnvRequest", "InstallMode"]

#: How the project itself reaches the env: a wheel of the working tree, the
#: working tree's import root on ``sys.path``, or not at all.
InstallMode = Literal["wheel", "source", "no"]
INSTALL_MODES: Final[tuple[InstallMode, ...]] = ("wheel", "source", "no")


class EnvRequest(NamedTuple):
    """An env request; equal requests share one env within a session."""

    project_dir: Path | None = None
    python: str | None = None
    groups: tuple[str, ...] = ()
    only_groups: tuple[str, ...] = ()
    no_default_groups: bool = False
    extras: tuple[str, ...] = ()
    all_extras: bool = False
    install_project: InstallMode = "wheel"
    offline: bool = False
    #: Whether uv may download a Python when none on this machine matches (opt-in).
    python_downloads: bool = False
