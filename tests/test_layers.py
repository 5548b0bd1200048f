"""The dependency direction: core <- components <- command and demo. Read from the import statements."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("webhooks", "scheduler_ext", "node_agent", "certs")


def _imported_packages(path: Path) -> set[str]:
    """Top-level names (and `sandgate.<x>`) that the module at `path` imports, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            found.add(parts[0] if parts[0] != "sandgate" or len(parts) == 1 else ".".join(parts[:2]))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_every_layer_has_modules():
    assert _modules("sandgate/core")
    for component in COMPONENTS:
        assert _modules(component), component


@pytest.mark.parametrize("path", _modules("sandgate/core"), ids=lambda p: str(p.relative_to(REPO)))
def test_core_imports_no_component_and_nothing_above_it(path):
    imported = _imported_packages(path)
    assert not imported & set(COMPONENTS), f"{path} imports a component"
    above = {name for name in imported if name.startswith("sandgate.") and name != "sandgate.core"}
    assert not above, f"{path} imports {above} from above the core"


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_import_only_the_core(component):
    for path in _modules(component):
        imported = _imported_packages(path)
        others = imported & (set(COMPONENTS) - {component})
        assert not others, f"{path} imports another component: {others}"
        above = {name for name in imported if name.startswith("sandgate.") and name != "sandgate.core"}
        assert not above, f"{path} imports {above}: components import only sandgate.core"
