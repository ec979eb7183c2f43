"""Options that only the locked env's session knows, registered in the outer parser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_uvbuild import passthrough
from pytest_uvbuild.runner import WORKER_SCRIPT


class _Config:
    """Just what ``learn_inner_options`` keeps its result in."""

    def __init__(self) -> None:
        self.stash = pytest.Stash()


def _parser() -> pytest.Parser:
    parser = pytest.Parser(_ispytest=True)
    parser.addoption("--known", action="count", default=0)
    return parser


def test_unknown_options_lists_only_option_tokens() -> None:
    """Known options, values, paths and a lone dash are not reported as unknown options."""
    args = ["--known", "--flavour", "spicy", "tests", "-", "--runslow"]
    assert passthrough.unknown_options(_parser(), args) == ["--flavour", "--runslow"]


def test_inner_options_are_registered_to_carry_their_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flags count, valued options keep their arity, known ones stay ours, paths stay paths."""
    table = [
        {"names": ["--flavour"], "flag": False, "nargs": None},
        {"names": ["--runslow"], "flag": True, "nargs": None},
        {"names": ["--pair"], "flag": False, "nargs": 2},
        {"names": ["--known"], "flag": True, "nargs": None},
        {"names": ["--flavour"], "flag": False, "nargs": None},
    ]
    monkeypatch.setattr(passthrough, "_inner_options_table", lambda config: table)
    parser = _parser()
    config: Any = _Config()
    args = ["--flavour", "spicy", "--runslow", "--pair", "a", "b", "tests"]
    passthrough.learn_inner_options(config, parser, args)
    assert config.stash[passthrough.PASSTHROUGH_KEY] == ("--flavour", "--runslow", "--pair")
    namespace, unknown = parser.parse_known_and_unknown_args(args)
    assert unknown == []
    assert namespace.file_or_dir == ["tests"]
    assert namespace.uvbuild_inner_flavour == ["spicy"]
    assert namespace.uvbuild_inner_runslow == 1
    assert namespace.uvbuild_inner_pair == [["a", "b"]]


def test_nothing_is_asked_when_every_option_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no unknown option, no session is started in the locked env."""

    def refuse(config: object) -> list[dict[str, Any]]:
        raise AssertionError("the locked env was asked")

    monkeypatch.setattr(passthrough, "_inner_options_table", refuse)
    config: Any = _Config()
    passthrough.learn_inner_options(config, _parser(), ["--known", "tests"])
    assert passthrough.PASSTHROUGH_KEY not in config.stash


def test_the_worker_lists_each_option_once_with_its_arity(tmp_path: Path) -> None:
    """worker.py --options-table lists a conftest's options once each, flags as flags."""
    (tmp_path / "conftest.py").write_text(
        "def pytest_addoption(parser):\n"
        "    parser.addoption('--flavour')\n"
        "    parser.addoption('--runslow', action='store_true')\n"
        "    parser.addoption('--pair', nargs=2)\n"
    )
    out = tmp_path / "options.json"
    # An option only the outer session knows must not stop the listing.
    args = [f"--rootdir={tmp_path}", "--uv-build", str(tmp_path)]
    subprocess.run(
        [sys.executable, str(WORKER_SCRIPT), "--options-table", str(out), "--", *args],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    rows = json.loads(out.read_text())
    names = [name for row in rows for name in row["names"]]
    assert len(names) == len(set(names))
    mine = {name: (row["flag"], row["nargs"]) for row in rows for name in row["names"]}
    assert mine["--flavour"] == (False, None)
    assert mine["--runslow"] == (True, None)
    assert mine["--pair"] == (False, 2)
    assert mine["--verbose"] == (True, None)
