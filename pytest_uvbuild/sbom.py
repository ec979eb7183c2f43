"""A CycloneDX 1.6 JSON SBOM of the selection, generated from the lock.

Why not ``uv export --format cyclonedx1.5``: uv marks it experimental, it
stamps a random serial number and the current time (so equal inputs would
not give equal bytes), and it leaves out the hashes. The lock already holds
everything an SBOM needs, so we write it from the same package rows as the
audit:

* ``metadata.component`` is the project; ``metadata.tools`` names
  pytest-uvbuild and uv with their versions;
* one ``library`` component per package of the selection, with version,
  ``purl``, license (from the installed metadata), the dependency kind and
  source as properties, and the lock's hashes: ``hashes`` when the lock pins
  exactly one artifact, plus one ``distribution`` external reference (with
  its hash) per artifact that has a URL;
* ``dependencies`` is the lock's graph restricted to the selection.

The serial number is a UUID derived from the content, and the timestamp is
``SOURCE_DATE_EPOCH`` when set (else absent), so the bytes are reproducible.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

__all__ = ["SPEC_VERSION", "build_sbom", "purl"]

SPEC_VERSION: Final = "1.6"
_HASH_ALGORITHMS: Final = {
    "md5": "MD5",
    "sha1": "SHA-1",
    "sha256": "SHA-256",
    "sha384": "SHA-384",
    "sha512": "SHA-512",
    "blake2b": "BLAKE2b-512",
}
_PYPI_INDEXES: Final = ("https://pypi.org/simple", "https://pypi.org/simple/")


def _hash(value: str | None) -> dict[str, str] | None:
    if not value or ":" not in value:
        return None
    algorithm, _, content = value.partition(":")
    alg = _HASH_ALGORITHMS.get(algorithm.lower())
    return {"alg": alg, "content": content.lower()} if alg else None


def purl(name: str, version: str | None, source: str) -> str | None:
    """The package URL of a locked package (``None`` only when the lock has no version).

    Every package is a ``pypi`` package; a qualifier says where a package
    that is not on PyPI comes from: ``repository_url`` (another index),
    ``vcs_url`` (git), ``download_url`` (a URL) or ``file_name`` (a local
    archive). Packages built from a local directory (the project, path
    dependencies, workspace members) get the bare ``pkg:pypi/name@version``.
    """
    if version is None:
        return None
    kind, _, location = source.partition("+")
    base = f"pkg:pypi/{quote(name, safe='')}@{quote(version, safe='')}"
    qualifier = None
    if kind == "registry" and location.startswith(("http://", "https://")):
        if location not in _PYPI_INDEXES:
            qualifier = f"repository_url={quote(location, safe=':/')}"
    elif kind == "git":
        qualifier = f"vcs_url={quote('git+' + location, safe=':/@')}"
    elif kind == "url":
        qualifier = f"download_url={quote(location, safe=':/')}"
    elif kind == "path":
        # The file's name, not its path: the path is this machine's.
        qualifier = f"file_name={quote(location.rstrip('/').rsplit('/', 1)[-1], safe='')}"
    return f"{base}?{qualifier}" if qualifier else base


def _licenses(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    text = row.get("license")
    if not text:
        return []
    if row.get("license_kind") == "expression":
        return [{"expression": text}]
    return [{"license": {"name": text}}]


def _component(row: Mapping[str, Any]) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": "library",
        "bom-ref": row["ref"],
        "name": row["name"],
    }
    if row.get("version"):
        component["version"] = row["version"]
    artifacts = row.get("artifacts", [])
    hashes = [h for h in (_hash(a.get("hash")) for a in artifacts) if h]
    if len(artifacts) == 1 and hashes:
        component["hashes"] = hashes
    licenses = _licenses(row)
    if licenses:
        component["licenses"] = licenses
    package_url = purl(row["name"], row.get("version"), row["source"])
    if package_url:
        component["purl"] = package_url
    references = []
    for artifact in artifacts:
        if not artifact.get("url"):
            continue
        reference: dict[str, Any] = {"type": "distribution", "url": artifact["url"]}
        digest = _hash(artifact.get("hash"))
        if digest:
            reference["hashes"] = [digest]
        references.append(reference)
    if references:
        component["externalReferences"] = references
    component["properties"] = [
        {"name": "pytest-uvbuild:dependency", "value": "direct" if row["direct"] else "transitive"},
        {"name": "pytest-uvbuild:source", "value": row["source"]},
    ]
    return component


def _timestamp(source_date_epoch: int | None) -> str | None:
    if source_date_epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(source_date_epoch))


def build_sbom(
    rows: Sequence[Mapping[str, Any]],
    *,
    project_name: str | None,
    project_version: str | None,
    tool_versions: Mapping[str, str],
    properties: Mapping[str, str],
    source_date_epoch: int | None,
) -> dict[str, Any]:
    """Return the SBOM of the selection described by the audit's package ``rows``."""
    root_rows = [r for r in rows if r.get("root")]
    root_ref = root_rows[0]["ref"] if root_rows else f"{project_name or 'project'}@root"
    others = sorted((r for r in rows if not r.get("root")), key=lambda r: r["ref"])
    refs_by_name: dict[str, list[str]] = {}
    for row in others:
        refs_by_name.setdefault(row["name"], []).append(row["ref"])
    children: dict[str, set[str]] = {root_ref: set()}
    for row in others:
        children.setdefault(row["ref"], set())
        for parent in row["via"]:
            # "demo", "demo[extra]" and "demo (group)" all mean the project.
            base = parent.split("[", 1)[0].split(" (", 1)[0]
            if project_name and base == project_name:
                children[root_ref].add(row["ref"])
            for parent_ref in refs_by_name.get(base, []):
                children.setdefault(parent_ref, set()).add(row["ref"])
    root: dict[str, Any] = {"type": "application", "bom-ref": root_ref}
    root["name"] = project_name or "project"
    if project_version:
        root["version"] = project_version
        root["purl"] = purl(root["name"], project_version, "directory+.")
    metadata: dict[str, Any] = {}
    stamp = _timestamp(source_date_epoch)
    if stamp:
        metadata["timestamp"] = stamp
    metadata["tools"] = {
        "components": [
            {"type": "application", "name": name, "version": version}
            for name, version in sorted(tool_versions.items())
        ]
    }
    metadata["component"] = root
    metadata["properties"] = [{"name": k, "value": v} for k, v in sorted(properties.items())]
    bom: dict[str, Any] = {
        "$schema": f"http://cyclonedx.org/schema/bom-{SPEC_VERSION}.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": metadata,
        "components": [_component(r) for r in others],
        "dependencies": [
            {"ref": ref, "dependsOn": sorted(children[ref])} for ref in sorted(children)
        ],
    }
    blob = json.dumps(bom, sort_keys=True, separators=(",", ":")).encode()
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "sha256:" + hashlib.sha256(blob).hexdigest())
    ordered = {k: bom[k] for k in ("$schema", "bomFormat", "specVersion")}
    ordered["serialNumber"] = f"urn:uuid:{serial}"
    ordered.update((k, v) for k, v in bom.items() if k not in ordered)
    return ordered
