"""Pytest fixtures shared by every test package."""

from pathlib import Path

import pytest

from support import EXAMPLE_POLICY


@pytest.fixture
def example_policy_path() -> Path:
    return EXAMPLE_POLICY
