"""Check that an installed environment is whole, using only the standard library.

Every wheel install leaves a ``RECORD`` file in its ``.dist-info`` listing
each file it installed. An env is *whole* when every file named by every
``RECORD`` exists. The reliability suites use this after a kill, and copy
this file into their toy projects so that a test running in the session can
check the env it was handed at the moment it uses it.
"""

from __future__ import annotations

import csv
import os
import sys


def missing_files(site_dir: str) -> list[str]:
    """Return files that some ``RECORD`` under ``site_dir`` names but that do not exist."""
    missing: list[str] = []
    try:
        names = sorted(os.listdir(site_dir))
    except OSError as exc:
        return [f"{site_dir} ({exc.strerror})"]
    for name in names:
        if not name.endswith(".dist-info"):
            continue
        record = os.path.join(site_dir, name, "RECORD")
        try:
            with open(record, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except OSError:
            missing.append(f"{name}/RECORD")
            continue
        for row in rows:
            if not row or not row[0]:
                continue
            path = os.path.normpath(os.path.join(site_dir, row[0]))
            if not os.path.lexists(path):
                missing.append(os.path.relpath(path, site_dir))
    return missing


def site_dirs(env_dir: str) -> list[str]:
    """The ``site-packages`` directories of a virtual environment."""
    lib = os.path.join(env_dir, "lib")
    try:
        return [
            os.path.join(lib, name, "site-packages")
            for name in sorted(os.listdir(lib))
            if os.path.isdir(os.path.join(lib, name, "site-packages"))
        ]
    except OSError:
        return []


def problems(env_dir: str, extra_dirs: list[str] | None = None) -> list[str]:
    """Everything wrong with the env at ``env_dir`` (and extra site dirs such as a layer)."""
    sites = site_dirs(env_dir)
    if not sites:
        return [f"{env_dir} has no site-packages"]
    found: list[str] = []
    for site in [*sites, *(extra_dirs or [])]:
        found += missing_files(site)
    return found


if __name__ == "__main__":
    # python envcheck.py ENV_DIR [EXTRA_SITE_DIR...]: print problems, exit 1 if any.
    bad = problems(sys.argv[1], sys.argv[2:])
    for line in bad:
        print(line)
    sys.exit(1 if bad else 0)
