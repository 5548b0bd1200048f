"""Fixtures of the webhook decision tests (helpers live in webhook_cases.py beside this file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules here import their helpers from webhook_cases; pytest's importlib mode does not put
# the test directory on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandgate.core.policy import load_policy, parse_policy  # noqa: E402
from webhook_cases import example_doc  # noqa: E402

from support import EXAMPLE_POLICY  # noqa: E402


@pytest.fixture
def policy():
    """The documented example policy."""
    return load_policy(EXAMPLE_POLICY)


@pytest.fixture
def fixed_overhead_policy():
    """The example policy with runv's overhead exactly its RuntimeClass's (no request part) and no edge seconds."""
    doc = example_doc()
    runv = doc["profiles"]["runv"]
    runv["overhead"] = {"podFixed": {"cpu": "100m", "memory": "50Mi"}}
    del runv["edgeTolerationSeconds"]
    return parse_policy(doc)
