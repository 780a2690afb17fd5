"""DESIGN.md §2: imports flow one way. `lint-imports` (pyproject's [tool.importlinter], run by
`make test`) checks the tree; these tests show that its contract catches an upward import."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTER = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
LAYERS = LINTER["contracts"][0]["layers"]


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """The project's contract checked against the packages under `tree`."""
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [lint, "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=False,
    )


def app_skeleton(tree: Path, imports: dict[str, str]) -> None:
    """Every root package with a `services` module holding `imports` (config: its settings and
    the modules beside them, which the settings contract names)."""
    for package in LINTER["root_packages"]:
        (tree / package).mkdir()
        (tree / package / "__init__.py").write_text("")
        if package == "config":
            for module in ("settings", "env", "files", "var"):
                (tree / package / f"{module}.py").write_text("")
            (tree / package / "settings.py").write_text(imports.get(package, ""))
        else:
            (tree / package / "services.py").write_text(imports.get(package, ""))


def test_the_contract_names_the_apps_top_down():
    assert [
        *("ops", "portal", "integrations", "sso", "agents", "tools", "governance", "audit"),
        "telemetry",
    ] == LAYERS
    assert set(LINTER["root_packages"]) == {"config", *LAYERS}


def test_downward_imports_keep_the_contract(tmp_path):
    app_skeleton(
        tmp_path,
        {
            "config": "import os\n",
            "ops": "import portal.services\n",
            "portal": "import integrations.services\n",
            "integrations": "import sso.services\n",
            "sso": "import audit.services\n",
        },
    )

    result = lint_imports(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("app", ["ops", "agents"])
def test_settings_that_import_an_app_or_the_launcher_break_the_contract(tmp_path, app):
    app_skeleton(tmp_path, {"config": f"from {app} import services\n"})

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 kept, 1 broken" in result.stdout
    assert f"config.settings -> {app}.services" in result.stdout


@pytest.mark.parametrize("lower", LAYERS[1:])
def test_an_upward_import_breaks_the_contract(tmp_path, lower):
    upper = LAYERS[LAYERS.index(lower) - 1]
    # Inside a function, as the deferred imports that avoid cycles are written.
    app_skeleton(tmp_path, {lower: f"def f():\n    from {upper} import services\n"})

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 kept, 1 broken" in result.stdout
    assert f"{lower}.services -> {upper}.services" in result.stdout


def test_the_web_process_does_not_import_the_heavy_libraries():
    """torch, litellm and the document readers load where they are used (workers), not with
    the URL configuration and the admin that every web process imports."""
    code = (
        "import django, sys; django.setup(); import config.urls; "
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
