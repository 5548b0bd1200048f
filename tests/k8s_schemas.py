"""Validate objects against the OpenAPI schemas of any Kubernetes version from 1.10 on.

The installed kubernetes-validate carries only recent schemas (1.25+). Its older releases on PyPI
carry the older ones (the 1.18.0 sdist: 1.10-1.18; the 1.28.0 sdist: 1.20-1.28), so those archives
are downloaded once with pip into a cache and read from there: the legacy manifests are checked
against the real 1.14 and 1.15 schemas, not a newer approximation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from functools import lru_cache
from pathlib import Path

import jsonschema
import referencing
import referencing.jsonschema

# kubernetes-validate release whose sdist holds the schemas of a Kubernetes minor version.
ARCHIVES = {**{f"1.{m}": "1.18.0" for m in range(10, 19)}, **{f"1.{m}": "1.28.0" for m in range(19, 29)}}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sandgate-test-schemas"


class SchemaUnavailable(RuntimeError):
    """The schema archive could not be fetched or has no schema for the object."""


def _archive(release: str) -> Path:
    """The kubernetes-validate sdist of `release`, downloaded once from PyPI."""
    target = CACHE / release
    found = sorted(target.glob("kubernetes*validate-*.tar.gz"))
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                           "--disable-pip-version-check", "-d", str(target), f"kubernetes-validate=={release}"],
                          capture_output=True, text=True, timeout=300)
    found = sorted(target.glob("kubernetes*validate-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise SchemaUnavailable(f"cannot download kubernetes-validate=={release} (schemas of old Kubernetes "
                                f"versions) from PyPI: {proc.stderr.strip()[-500:]}")
    return found[0]


@lru_cache(maxsize=None)
def _schemas(version: str) -> dict[str, dict]:
    """Every strict schema file of Kubernetes `version` ("1.14"), by file name."""
    if version not in ARCHIVES:
        raise SchemaUnavailable(f"no schema archive known for Kubernetes {version}")
    folder = f"/kubernetes-json-schema/v{version}.0-local-strict/"
    out = {}
    with tarfile.open(_archive(ARCHIVES[version])) as tar:
        for member in tar.getmembers():
            if folder in member.name and member.name.endswith(".json"):
                out[member.name.rsplit("/", 1)[1]] = json.load(tar.extractfile(member))
    if not out:
        raise SchemaUnavailable(f"the archive for Kubernetes {version} holds no {folder} schemas")
    return out


def validate(doc: dict, version: str) -> None:
    """Raise jsonschema.ValidationError if `doc` is not valid for Kubernetes `version` (strict: no unknown fields)."""
    schemas = _schemas(version)
    # The file naming of kubernetes-json-schema: rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1.
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    name = f"{doc['kind'].lower()}-{api}.json"
    if name not in schemas:
        raise SchemaUnavailable(f"Kubernetes {version} has no {doc['kind']} in {doc['apiVersion']}")
    base = f"file:///kubernetes-json-schema/v{version}/"
    registry = referencing.Registry().with_resources(
        (base + file, referencing.Resource.from_contents(body, default_specification=referencing.jsonschema.DRAFT7))
        for file, body in (("_definitions.json", schemas["_definitions.json"]), (name, schemas[name])))
    # The kind's file is only a $ref into _definitions.json, relative to its own location.
    jsonschema.Draft7Validator({"$ref": base + name}, registry=registry).validate(doc)
