"""Build the project's sdist with uv and repack it deterministically with its lock.

uv builds the sdist from the working tree (``uv build --sdist``). We then
rewrite the archive so that it also carries ``requirements.txt`` and
``uv.lock`` as top-level members of its root directory, and so that equal
inputs give equal bytes whatever the build backend did: members sorted by
name, every mtime set to ``SOURCE_DATE_EPOCH`` (or 0), uid and gid 0, no user
or group names, modes reduced to 0644/0755, and a gzip header with mtime 0
and no file name.

The members of the built sdist that exist as files in the working tree are
"what goes into the sdist"; :mod:`~pytest_uvbuild.artifacts` puts their
contents into the build id.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from pytest_uvbuild.errors import UvBuildError
from pytest_uvbuild.uvcli import Uv

__all__ = ["SdistError", "build_sdist", "repack_sdist", "sdist_source_files"]


class SdistError(UvBuildError, RuntimeError):
    """uv produced no usable sdist."""


def build_sdist(
    uv: Uv, project_root: Path, out_dir: Path, *, python: Path | None, offline: bool
) -> Path:
    """Run ``uv build --sdist`` for the working tree into ``out_dir``; return the archive."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["build", "--sdist", "--out-dir", str(out_dir)]
    if python is not None:
        args += ["--python", str(python)]
    if offline:
        args.append("--offline")
    from pytest_uvbuild.envcache import same_bytes_keep_mtimes

    with same_bytes_keep_mtimes([project_root]):
        uv.run([*args, str(project_root)], what="`uv build --sdist`", cwd=project_root)
    built = sorted(out_dir.glob("*.tar.gz"))
    if len(built) != 1:
        raise SdistError(
            f"`uv build --sdist` of {project_root} left {len(built)} archives in {out_dir}; "
            "expected one. Fix: check the project's build backend configuration."
        )
    return built[0]


def _root_and_rel(name: str) -> tuple[str, str] | None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return path.parts[0], "/".join(path.parts[1:])


def sdist_source_files(sdist: Path, project_root: Path) -> list[str]:
    """Relative paths of the sdist's regular files that are files of the working tree.

    Generated members (``PKG-INFO``, ``pyproject.toml.orig``...) have no
    counterpart in the tree and are left out.
    """
    found: set[str] = set()
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            split = _root_and_rel(member.name)
            if not member.isfile() or split is None or not split[1]:
                continue
            if (project_root / split[1]).is_file():
                found.add(split[1])
    return sorted(found)


def _normalised(info: tarfile.TarInfo, mtime: int) -> tarfile.TarInfo:
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.pax_headers = {}
    if info.isdir():
        info.mode = 0o755
    else:
        info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


def repack_sdist(sdist: Path, dest: Path, extra: Mapping[str, bytes], *, mtime: int) -> None:
    """Write ``dest``: ``sdist`` plus ``extra`` top-level files, packed deterministically.

    ``extra`` maps a file name (``requirements.txt``) to its bytes; it goes
    into the archive's root directory and replaces a member of that name.
    """
    files: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    dirs: dict[str, tarfile.TarInfo] = {}
    root_name: str | None = None
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive.getmembers():
            split = _root_and_rel(member.name)
            if split is None:
                raise SdistError(f"{sdist} has an unsafe member name {member.name!r}.")
            root, rel = split
            if root_name is None:
                root_name = root
            elif root != root_name:
                raise SdistError(f"{sdist} has more than one top-level directory.")
            name = f"{root}/{rel}" if rel else root
            if member.isdir():
                dirs[name] = member
            elif member.isfile():
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                files[name] = (member, data)
            else:
                raise SdistError(
                    f"{sdist} has a {member.type!r} member {member.name!r}; "
                    "only files and directories are repacked."
                )
    if root_name is None:
        raise SdistError(f"{sdist} is empty.")
    for filename, data in extra.items():
        info = tarfile.TarInfo(f"{root_name}/{filename}")
        info.mode = 0o644
        files[info.name] = (info, data)
    # Every parent directory gets an entry, so that extraction never depends
    # on what the backend chose to list.
    for name in list(files):
        parent = PurePosixPath(name).parent
        while str(parent) not in ("", "."):
            dirs.setdefault(str(parent), tarfile.TarInfo(str(parent)))
            dirs[str(parent)].type = tarfile.DIRTYPE
            parent = parent.parent
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name in sorted({*dirs, *files}):
            if name in dirs:
                info = _normalised(dirs[name], mtime)
                info.name, info.size = name, 0
                out.addfile(info)
            else:
                info, data = files[name]
                info = _normalised(info, mtime)
                info.name, info.size = name, len(data)
                out.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(packed.getvalue())
    os.replace(tmp, dest)
