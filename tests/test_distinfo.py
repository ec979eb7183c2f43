"""Unit tests of reading installed names and versions from ``*.dist-info`` directories."""

from __future__ import annotations

from pathlib import Path

from pytest_uvbuild.distinfo import installed_versions


def test_names_and_versions_come_from_dist_info_names(tmp_path: Path) -> None:
    """Names are normalised, the first path wins, and nothing but dist-info counts."""
    layer, site = tmp_path / "layer", tmp_path / "site"
    for base, entry in (
        (layer, "Demo_Pkg-2.0.dist-info"),
        (site, "demo_pkg-1.0.dist-info"),
        (site, "toyalpha-1.0+local.dist-info"),
        (site, "toyalpha"),
        (site, "old-0.1.egg-info"),
    ):
        (base / entry).mkdir(parents=True)
    assert installed_versions([layer, site]) == {"demo-pkg": "2.0", "toyalpha": "1.0+local"}


def test_an_odd_dist_info_name_falls_back_to_metadata(tmp_path: Path) -> None:
    """A dist-info named without a version is read from METADATA; an unreadable one is skipped."""
    odd = tmp_path / "Strange.dist-info"
    odd.mkdir()
    (odd / "METADATA").write_text("Metadata-Version: 2.1\nName: Strange.Name\nVersion: 3.1\n\n")
    (tmp_path / "broken.dist-info").mkdir()
    assert installed_versions([tmp_path]) == {"strange-name": "3.1"}
