"""Test modules here share test_manifests' rendering helpers; importlib mode does not put this directory on sys.path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
