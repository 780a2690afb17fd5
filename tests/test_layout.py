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


def test_the_web_process_does_not_import_the_heavy_libraries():
    """torch, litellm and the document readers load where they are used (workers), not with
    the URL configuration and the admin that every web process imports."""
    import os
    import subprocess
    import sys

    code = (
        "import django, sys; django.setup(); import portal.urls; "
        "print(sorted(m for m in ('torch', 'litellm', 'sentence_transformers', 'bs4', 'pypdf') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
