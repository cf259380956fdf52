"""Every package our code imports is declared in pyproject.toml (a transitive install that happens
to be present today is not a dependency we can rely on), and nothing declared goes unused."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).parent.parent
OURS = {"consumer", "schemas", "topology", "tests", "bench"}
# Declared for what they provide at run time rather than for an import of ours.
NOT_IMPORTED: set[str] = {"sniffio"}  # httpcore (under the SDK) imports it on every request


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str], set[str]]:
    """Runtime, test and console (the ``console`` extra) requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}

    extras = project["optional-dependencies"]
    return names(project["dependencies"]), names(extras["test"]), names(extras["console"])


# The web console is an optional part: its modules may use the `console` extra, nothing else may.
CONSOLE_FILES = ("consumer/webconsole/", "consumer/cli/console_cmd.py")


def _imported_distributions(*packages: str) -> dict[str, set[str]]:
    """The distributions that provide a third-party import under ``packages`` (joined by " | " where
    several do: a namespace package such as ``opentelemetry``), and the files importing them."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top in OURS or top == "__future__":
                        continue
                    assert top in owners, f"{path.relative_to(ROOT)} imports {top}, which no installed package provides"
                    key = " | ".join(sorted({_normalise(dist) for dist in owners[top]}))
                    found.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared_among(providers: str, declared: set[str]) -> bool:
    return any(dist in declared for dist in providers.split(" | "))


def test_every_package_the_service_imports_is_a_declared_dependency() -> None:
    runtime, _, console = _declared()
    imported = _imported_distributions("consumer", "schemas", "topology")
    undeclared = {
        dist: files
        for dist, files in imported.items()
        if not _declared_among(dist, runtime)
        and not (_declared_among(dist, console) and all(f.startswith(CONSOLE_FILES) for f in files))
    }
    assert not undeclared, f"imported but not in [project.dependencies] (or the console extra): {undeclared}"


def test_every_package_the_tests_import_is_declared() -> None:
    runtime, test, console = _declared()
    imported = _imported_distributions("tests", "bench")
    undeclared = {
        dist: files for dist, files in imported.items() if not _declared_among(dist, runtime | test | console)
    }
    assert not undeclared, f"imported by tests/bench but not declared: {undeclared}"


def test_every_declared_runtime_dependency_is_used() -> None:
    runtime, _, _ = _declared()
    imported = {
        dist
        for providers in _imported_distributions("consumer", "schemas", "topology")
        for dist in providers.split(" | ")
    }
    unused = runtime - imported - NOT_IMPORTED
    assert not unused, f"declared but never imported: {unused}"
