"""Test helpers importable from any test module: captured wire fixtures in ../shared, the example policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = REPO / "examples" / "policy.yaml"
SHARED_FIXTURES = Path(os.environ.get("SANDGATE_SHARED", REPO.parent / "shared")) / "fixtures" / "k8s-1.24"


def shared_fixture_path(relative: str) -> Path:
    """Path of a captured fixture; fails (never skips) when ../shared is missing, as CI has it."""
    path = SHARED_FIXTURES / relative
    if not path.is_file():
        pytest.fail(f"shared fixture {path} is missing: the tests need ../shared beside the repo "
                    f"(or SANDGATE_SHARED pointing at it)")
    return path


def load_shared(relative: str) -> dict:
    """Decode a captured fixture, e.g. load_shared("admission/v1-01-create-bare-pod.json")."""
    return json.loads(shared_fixture_path(relative).read_text())
