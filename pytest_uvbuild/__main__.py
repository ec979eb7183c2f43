"""``python -m pytest_uvbuild``."""

from __future__ import annotations

import sys

from pytest_uvbuild.cli import main

if __name__ == "__main__":
    sys.exit(main())
