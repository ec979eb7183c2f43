"""Exception types raised by pytest-uvbuild.

Every error a user can cause carries one message that says what went wrong
and how to fix it. The plugin turns them into ``pytest.UsageError`` (exit
status 4, no traceback); the command line prints them and exits with 2.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "HermeticRunError",
    "InterpreterNotFoundError",
    "LockfileError",
    "ProjectNotFoundError",
    "SelectionError",
    "UvBuildError",
    "UvCommandError",
    "UvNotFoundError",
]


class UvBuildError(Exception):
    """Base class of every error pytest-uvbuild reports to the user."""


class ProjectNotFoundError(UvBuildError, FileNotFoundError):
    """No uv project (``pyproject.toml`` plus ``uv.lock``) could be found."""


class LockfileError(UvBuildError, ValueError):
    """``uv.lock`` or ``pyproject.toml`` is missing, malformed or stale."""


class SelectionError(UvBuildError, ValueError):
    """A dependency group or extra that the project does not define was requested."""


class InterpreterNotFoundError(UvBuildError, LookupError):
    """No interpreter on this machine satisfies the requested Python."""

    #: The request as uv would take it (``3.14``, ``>=3.12``), when a download could help.
    request: str | None = None


class UvNotFoundError(UvBuildError, FileNotFoundError):
    """The uv binary could not be located, or does not run."""


class UvCommandError(UvBuildError, RuntimeError):
    """A uv command failed; the message carries uv's own explanation."""

    def __init__(self, message: str, *, returncode: int = 1, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class CacheError(UvBuildError, RuntimeError):
    """The environment cache cannot be used (not writable, damaged beyond repair)."""


class HermeticRunError(UvBuildError, RuntimeError):
    """A hermetic run cannot go on (for example pytest is not in the locked env)."""
