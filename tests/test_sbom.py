"""Tests of the CycloneDX SBOM: schema-valid, hashes and graph from the lock, reproducible."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from pytest_uvbuild.audit import lock_packages
from pytest_uvbuild.lockgraph import LockGraph, marker_environment
from pytest_uvbuild.sbom import SPEC_VERSION, build_sbom, purl

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

A, B, C = "AA11" * 16, "bb22" * 16, "cc33" * 32
LOCK_TEMPLATE = """
version = 1
revision = 3
requires-python = ">=3.10"

[[package]]
name = "app"
version = "1.0"
source = { editable = "." }
dependencies = [{ name = "alpha" }, { name = "beta" }, { name = "local-lib" }]

[[package]]
name = "alpha"
version = "1.2.0+local.1"
source = { registry = "https://pypi.org/simple" }
sdist = { url = "https://files.example/alpha-1.2.0.tar.gz", hash = "sha256:@A@", size = 1 }
wheels = [{ url = "https://files.example/alpha-1.2.0-py3-none-any.whl", hash = "sha256:@B@" }]

[[package]]
name = "beta"
version = "2.0"
source = { registry = "https://mirror.example/simple" }
dependencies = [{ name = "alpha" }]
wheels = [{ url = "https://mirror.example/beta-2.0-py3-none-any.whl", hash = "sha512:@C@" }]

[[package]]
name = "local-lib"
version = "0.3"
source = { directory = "libs/local" }
"""
LOCK = LOCK_TEMPLATE.replace("@A@", A).replace("@B@", B).replace("@C@", C)


def validate(bom: dict[str, Any]) -> Any:
    """Validate with cyclonedx-python-lib's strict JSON validator (the official schema)."""
    return JsonStrictValidator(SchemaVersion.from_version(bom["specVersion"])).validate_str(
        json.dumps(bom)
    )


def _bom(source_date_epoch: int | None = None) -> dict[str, Any]:
    graph = LockGraph.from_lock(tomllib.loads(LOCK))
    rows = lock_packages(
        graph,
        project="app",
        groups=(),
        extras=(),
        only_groups=False,
        environment=marker_environment(implementation="cpython", version="3.11.7"),
        install_mode="wheel",
        licenses={"alpha": ("Apache-2.0 OR MIT", "expression"), "beta": ("BSD License", "name")},
    )
    return build_sbom(
        rows,
        project_name="app",
        project_version="1.0",
        tool_versions={"pytest-uvbuild": "0.1.0", "uv": "0.13.9"},
        properties={"pytest-uvbuild:build-id": "0123456789abcdef"},
        source_date_epoch=source_date_epoch,
    )


def test_sbom_validates_against_the_official_schema() -> None:
    """The SBOM is valid CycloneDX per the official JSON schema (strict validator)."""
    bom = _bom(source_date_epoch=1_700_000_000)
    assert bom["specVersion"] == SPEC_VERSION
    assert validate(bom) is None


def test_validator_catches_a_broken_sbom() -> None:
    """The same validator rejects a component without a name, so the check above can fail."""
    bom = _bom()
    del bom["components"][0]["name"]
    assert validate(bom) is not None


def test_components_hashes_and_graph() -> None:
    """Every package has version, purl and license; hashes and the graph come from the lock."""
    bom = _bom()
    components = {c["name"]: c for c in bom["components"]}
    assert sorted(components) == ["alpha", "beta", "local-lib"]
    alpha = components["alpha"]
    assert alpha["purl"] == "pkg:pypi/alpha@1.2.0%2Blocal.1"
    assert alpha["licenses"] == [{"expression": "Apache-2.0 OR MIT"}]
    assert "hashes" not in alpha  # two artifacts: hashes go with each distribution
    assert [r["hashes"][0]["content"] for r in alpha["externalReferences"]] == [A.lower(), B]
    beta = components["beta"]
    assert beta["hashes"] == [{"alg": "SHA-512", "content": C}]
    assert beta["purl"] == ("pkg:pypi/beta@2.0?repository_url=https://mirror.example/simple")
    assert beta["licenses"] == [{"license": {"name": "BSD License"}}]
    assert components["local-lib"]["purl"] == "pkg:pypi/local-lib@0.3"
    graph = {d["ref"]: d["dependsOn"] for d in bom["dependencies"]}
    assert graph["app@1.0"] == ["alpha@1.2.0+local.1", "beta@2.0", "local-lib@0.3"]
    assert graph["beta@2.0"] == ["alpha@1.2.0+local.1"]
    assert bom["metadata"]["component"]["name"] == "app"
    assert bom["metadata"]["component"]["purl"] == "pkg:pypi/app@1.0"


def test_sbom_is_reproducible() -> None:
    """Equal inputs give equal SBOMs, serial number included; the timestamp is SOURCE_DATE_EPOCH."""
    assert _bom() == _bom()
    assert "timestamp" not in _bom()["metadata"]
    stamped = _bom(source_date_epoch=0)
    assert stamped["metadata"]["timestamp"] == "1970-01-01T00:00:00Z"
    assert stamped["serialNumber"] != _bom()["serialNumber"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("registry+https://pypi.org/simple", "pkg:pypi/x@1.0"),
        ("registry+/local/wheelhouse", "pkg:pypi/x@1.0"),
        (
            "git+https://h/x.git?rev=v1#abc",
            "pkg:pypi/x@1.0?vcs_url=git%2Bhttps://h/x.git%3Frev%3Dv1%23abc",
        ),
        ("url+https://h/x-1.0.tar.gz", "pkg:pypi/x@1.0?download_url=https://h/x-1.0.tar.gz"),
        ("editable+.", "pkg:pypi/x@1.0"),
        (
            "path+../wheels/x-1.0-py3-none-any.whl",
            "pkg:pypi/x@1.0?file_name=x-1.0-py3-none-any.whl",
        ),
    ],
)
def test_purl(source: str, expected: str | None) -> None:
    """purls are pypi package URLs with the qualifier that locates non-PyPI sources."""
    assert purl("x", "1.0", source) == expected
