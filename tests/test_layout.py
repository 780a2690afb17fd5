"""DESIGN.md §2: imports flow one way, audit ← governance ← tools ← agents ← portal."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["audit", "governance", "tools", "agents", "portal"]


def imported_apps(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


@pytest.mark.parametrize("app", LAYERS[:-1])  # portal, on top, may import every app
def test_app_imports_only_apps_below_it(app):
    allowed = set(LAYERS[: LAYERS.index(app) + 1])

    violations = {
        str(path.relative_to(ROOT)): sorted(imported_apps(path) - allowed)
        for path in (ROOT / app).rglob("*.py")
        if imported_apps(path) - allowed
    }

    assert violations == {}


def test_the_checker_sees_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from agents.models import Run\nimport portal.settings\n")

    assert imported_apps(module) == {"agents", "portal"}
