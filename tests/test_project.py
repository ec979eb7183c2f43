"""Unit tests for finding the uv project, the group/extra selection, and local packages."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import toys

from conftest import MakeProject
from pytest_uvbuild.errors import LockfileError, ProjectNotFoundError, SelectionError
from pytest_uvbuild.interpreters import current_interpreter
from pytest_uvbuild.project import (
    LocalSource,
    UvProject,
    find_project,
    import_root,
    local_selection_digest,
    local_sources_from_export,
    lock_local_dirs,
    read_lock,
    sources_from_lock,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib


def _project(toml: str, root: Path = Path("/nowhere")) -> UvProject:
    return UvProject(root=root, pyproject=tomllib.loads(toml))


GROUPS_TOML = """
[project]
name = "Demo_Pkg"
optional-dependencies = { fast = [], Slow_Mode = [] }
[dependency-groups]
dev = []
lint = []
Docs = []
"""


def test_find_project_walks_up_to_the_nearest_locked_project(tmp_path: Path) -> None:
    """The nearest directory at or above the start dir with pyproject.toml and uv.lock wins."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "outer"\n')
    (tmp_path / "uv.lock").write_text("version = 1\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project(deep).root == tmp_path.resolve()


def test_find_project_names_the_pyproject_without_a_lock(tmp_path: Path) -> None:
    """A pyproject.toml without uv.lock is reported with the `uv lock` fix."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(LockfileError, match=r"has no uv.lock next to it. Fix: run `uv lock`"):
        find_project(tmp_path)


def test_find_project_without_any_project(tmp_path: Path) -> None:
    """No pyproject.toml anywhere above gives the "no uv project" error naming --uv-project."""
    with pytest.raises(ProjectNotFoundError, match="pass --uv-project=DIR"):
        find_project(tmp_path)


def test_explicit_project_dir_must_exist(tmp_path: Path) -> None:
    """An explicit project directory that does not exist is an error naming the option."""
    with pytest.raises(ProjectNotFoundError, match="--uv-project"):
        find_project(tmp_path, tmp_path / "missing")


def test_explicit_workspace_member_names_the_workspace_root(tmp_path: Path) -> None:
    """A workspace member as the project names the root that holds the lock, not `uv lock`."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "root"\n[tool.uv.workspace]\nmembers = ["packages/*"]\n'
        'exclude = ["packages/skip"]\n'
    )
    (tmp_path / "uv.lock").write_text("version = 1\n")
    for name in ("member", "skip"):
        (tmp_path / "packages" / name).mkdir(parents=True)
        (tmp_path / "packages" / name / "pyproject.toml").write_text(
            f'[project]\nname = "{name}"\n'
        )
    root = tmp_path.resolve()
    with pytest.raises(
        ProjectNotFoundError,
        match=rf"member of the uv workspace at {root} .* Fix: pass --uv-project={root}",
    ):
        find_project(tmp_path, tmp_path / "packages" / "member")
    with pytest.raises(LockfileError, match=r"skip/uv.lock is missing. Fix: run `uv lock`"):
        find_project(tmp_path, tmp_path / "packages" / "skip")


def test_malformed_pyproject_is_a_lockfile_error(tmp_path: Path) -> None:
    """A pyproject.toml that is not TOML is one error naming the file."""
    (tmp_path / "pyproject.toml").write_text("[project\n")
    (tmp_path / "uv.lock").write_text("")
    with pytest.raises(LockfileError, match="is not valid TOML"):
        find_project(tmp_path)


def test_default_selection_is_dev_and_no_extras() -> None:
    """Without flags uv installs the dev group and no extras; so do we."""
    sel = _project(GROUPS_TOML).select()
    assert (sel.groups, sel.extras, sel.only_groups, sel.uv_args) == (("dev",), (), False, ())


def test_default_groups_setting_is_followed() -> None:
    """`[tool.uv] default-groups` replaces dev as the default, and "all" means every group."""
    listed = _project(GROUPS_TOML + '[tool.uv]\ndefault-groups = ["lint", "Docs"]\n').select()
    assert listed.groups == ("docs", "lint")
    every = _project(GROUPS_TOML + '[tool.uv]\ndefault-groups = "all"\n').select()
    assert every.groups == ("dev", "docs", "lint")


def test_group_flags_follow_uv() -> None:
    """--group adds to the defaults, --no-default-groups drops them, --only-group replaces all."""
    project = _project(GROUPS_TOML)
    assert project.select(groups=["lint"]).groups == ("dev", "lint")
    assert project.select(groups=["lint"], no_default_groups=True).groups == ("lint",)
    only = project.select(only_groups=["docs"])
    assert (only.groups, only.only_groups, only.uv_args) == (
        ("docs",),
        True,
        ("--only-group", "docs"),
    )


def test_equal_selections_have_equal_key_fields() -> None:
    """Asking for the default group explicitly gives the same key fields as not asking."""
    project = _project(GROUPS_TOML)
    assert project.select(groups=["dev"]).key_fields() == project.select().key_fields()


def test_extras_are_normalised_and_all_extras_selects_each() -> None:
    """Extras are matched by normalised name; --all-extras selects every declared extra."""
    project = _project(GROUPS_TOML)
    assert project.select(extras=["slow-mode"]).extras == ("slow-mode",)
    all_extras = project.select(all_extras=True)
    assert all_extras.extras == ("fast", "slow-mode")
    assert all_extras.uv_args == ("--all-extras",)


def test_unknown_group_and_extra_are_clear_errors() -> None:
    """An undefined group or extra names what is defined and how to fix it."""
    project = _project(GROUPS_TOML)
    with pytest.raises(SelectionError, match=r"Unknown dependency group\(s\) nope .* Defined: dev"):
        project.select(groups=["nope"])
    with pytest.raises(SelectionError, match=r"Unknown extra\(s\) nope .* Defined: fast"):
        project.select(extras=["nope"])


def test_only_group_with_groups_or_extras_is_a_clear_error() -> None:
    """--only-group with --group, --extra or --all-extras is refused up front, as uv does."""
    project = _project(GROUPS_TOML)
    for extra in ({"groups": ["dev"]}, {"extras": ["fast"]}, {"all_extras": True}):
        with pytest.raises(SelectionError, match=r"--uv-only-group docs installs only .* Fix: "):
            project.select(only_groups=["docs"], **extra)


def test_package_detection_follows_tool_uv_package() -> None:
    """A build-system makes a package; `[tool.uv] package = false` overrides it."""
    base = '[project]\nname = "p"\n[build-system]\nrequires = []\n'
    assert _project(base).is_package
    assert not _project(base + "[tool.uv]\npackage = false\n").is_package
    assert not _project('[project]\nname = "p"\n').is_package


def test_import_root_prefers_module_root_then_src(tmp_path: Path) -> None:
    """The import root is [tool.uv.build-backend] module-root, else src/, else the directory."""
    assert import_root(tmp_path) == tmp_path
    (tmp_path / "src").mkdir()
    assert import_root(tmp_path) == tmp_path / "src"
    (tmp_path / "pyproject.toml").write_text('[tool.uv.build-backend]\nmodule-root = ""\n')
    assert import_root(tmp_path) == tmp_path.resolve()


def test_local_sources_come_from_uvs_export(make_project: MakeProject, tmp_path: Path) -> None:
    """Editable, directory and archive lines of the export map to lock names; markers apply."""
    dep = make_project(tmp_path / "dep", name="dep", with_pytest=False, lock=False)
    (tmp_path / "pkg.whl").write_bytes(b"")
    root = make_project(
        tmp_path / "main",
        dependencies=["toyalpha==1.0", "dep"],
        extra_toml=f'[tool.uv.sources]\ndep = {{ path = "{dep}" }}\n',
    )
    project = find_project(root)
    lock = read_lock(project)
    export = "\n".join(
        [
            "-e .",
            f"{dep}",
            "toyalpha==1.0",
            "../pkg.whl ; sys_platform == 'linux' or sys_platform != 'linux'",
            "./win-only ; sys_platform == 'no-such-platform'",
        ]
    )
    sources = local_sources_from_export(
        export, project, lock, current_interpreter().marker_environment()
    )
    assert sources == (
        LocalSource("demo", ".", "editable"),
        LocalSource("dep", str(dep), "directory"),
        LocalSource("pkg-whl", "../pkg.whl", "archive"),
    )
    assert set(lock_local_dirs(lock)) == {".", str(dep)}


#: A lock with a root project, a path dependency, and registry packages; one
#: of those (``glue``) depends on the path dependency.
DIGEST_LOCK: dict[str, Any] = {
    "version": 1,
    "requires-python": ">=3.10",
    "manifest": {"members": ["demo"]},
    "package": [
        {
            "name": "demo",
            "version": "0.1.0",
            "source": {"editable": "."},
            "dependencies": [{"name": "toyalpha"}, {"name": "helper"}],
            "optional-dependencies": {"extra": [{"name": "glue"}]},
        },
        {"name": "helper", "version": "0.1.0", "source": {"directory": "../helper"}},
        {
            "name": "toyalpha",
            "version": "1.0",
            "source": {"registry": "https://example.invalid/simple"},
            "dependencies": [{"name": "toybeta"}],
        },
        {"name": "toybeta", "version": "1.0", "source": {"registry": "https://example.invalid"}},
        {
            "name": "glue",
            "version": "1.0",
            "source": {"registry": "https://example.invalid/simple"},
            "dependencies": [{"name": "Helper"}],
        },
    ],
}


def _edited(path: tuple[int, str], value: object) -> dict[str, object]:
    """A deep copy of DIGEST_LOCK with package ``path[0]``'s key ``path[1]`` set to ``value``."""
    lock = copy.deepcopy(DIGEST_LOCK)
    lock["package"][path[0]][path[1]] = value
    return lock


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ((2, "version"), True),  # a registry package moves: uv's answer cannot change
        ((3, "version"), True),
        ((4, "version"), False),  # glue leads to the local helper
        ((1, "dependencies"), False),  # a local package's own entry
        ((0, "optional-dependencies"), False),
    ],
)
def test_local_selection_digest_follows_what_can_reach_a_local_package(
    change: tuple[int, str], same: bool
) -> None:
    """Only the header and entries from which a local package is reachable change the digest."""
    before = local_selection_digest(DIGEST_LOCK)
    value: object = "2.0" if change[1] == "version" else []
    assert (local_selection_digest(_edited(change, value)) == before) is same


def test_local_selection_digest_covers_the_lock_header() -> None:
    """A new workspace member list or Python range changes the digest."""
    before = local_selection_digest(DIGEST_LOCK)
    assert local_selection_digest({**DIGEST_LOCK, "manifest": {"members": ["x"]}}) != before
    assert local_selection_digest({**DIGEST_LOCK, "requires-python": ">=3.12"}) != before


@pytest.mark.parametrize(
    ("options", "package"),
    [
        ({}, True),
        ({"only_groups": ["dev"]}, True),
        ({"no_default_groups": True}, True),
        ({}, False),
    ],
    ids=["default", "only-group", "no-default-groups", "virtual"],
)
def test_the_lock_alone_tells_what_uv_export_does_for_a_lone_project(
    make_project: MakeProject, tmp_path: Path, options: dict[str, Any], package: bool
) -> None:
    """When the project is the lock's only local package, the lock gives uv export's answer."""
    project = find_project(make_project(tmp_path / "demo", package=package))
    selection = project.select(**options)
    exported = toys.run_uv(
        "export", "--locked", "--offline", "--no-hashes", "-q", *selection.uv_args, cwd=project.root
    ).stdout
    lock = read_lock(project)
    marker_environment = current_interpreter().marker_environment()
    expected = local_sources_from_export(exported, project, lock, marker_environment)
    assert sources_from_lock(lock, selection) == expected
    installed = package and "only_groups" not in options
    assert expected == ((LocalSource("demo", ".", "editable"),) if installed else ())


@pytest.mark.parametrize(
    ("packages", "expected"),
    [
        (DIGEST_LOCK["package"], None),  # which selection reaches the path dependency: uv says
        (DIGEST_LOCK["package"][:1], (LocalSource("demo", ".", "editable"),)),
        ([{"name": "Demo_Pkg", "source": {"virtual": "."}}], ()),
        ([{"name": "demo", "source": {"directory": "."}}], None),  # no root uv writes
        ([{"name": "toyalpha", "source": {"registry": "https://example.invalid"}}], None),
    ],
    ids=["path-dependency", "project-alone", "virtual", "root-not-editable", "no-project"],
)
def test_the_lock_alone_tells_only_for_a_lone_editable_or_virtual_project(
    packages: list[dict[str, Any]], expected: tuple[LocalSource, ...] | None
) -> None:
    """Any local package besides the project, or an unusual root, leaves the answer to uv."""
    lock = {**DIGEST_LOCK, "package": packages}
    assert sources_from_lock(lock, _project(GROUPS_TOML).select()) == expected
