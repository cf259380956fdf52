"""Dependencies point one way, checked in a fresh interpreter (what a module pulls in, even
indirectly, is what ``sys.modules`` holds after importing it alone)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The execution core: runs a command through Dagger; knows nothing of AMQP.
CORE = [
    "consumer.adapter",
    "consumer.engine",
    "consumer.coalesce",
    "consumer.execution",
    "consumer.retry",
    "consumer.breaker",
    "consumer.cache",
    "consumer.paths",
    "consumer.errors",
    "consumer.config",
    "consumer.decisions",
]
AMQP = ("aio_pika", "aiormq", "pamqp")
OURS = ("consumer", "topology", "schemas", "tests", "bench")


def loaded_after_importing(module: str) -> list[str]:
    probe = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return list(json.loads(ran.stdout))


def top_level(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    return sorted({m for m in modules if m.split(".")[0] in packages})


@pytest.mark.parametrize("module", CORE)
def test_the_execution_core_imports_no_amqp_code(module: str) -> None:
    assert top_level(loaded_after_importing(module), AMQP) == []


def test_topology_names_import_no_amqp_code_and_nothing_of_the_consumer() -> None:
    loaded = loaded_after_importing("topology")
    assert top_level(loaded, AMQP) == []
    assert top_level(loaded, OURS) == ["topology", "topology.spec"]


def test_schemas_import_nothing_of_ours() -> None:
    loaded = loaded_after_importing("schemas")
    assert {m.split(".")[0] for m in top_level(loaded, OURS)} == {"schemas"}


def test_declaring_the_topology_is_where_amqp_comes_in() -> None:
    # The contract above would pass vacuously if nothing pulled AMQP in: the declaring side does.
    assert "aio_pika" in top_level(loaded_after_importing("topology.declaring"), AMQP)
    assert "aio_pika" in top_level(loaded_after_importing("consumer.worker"), AMQP)


def test_the_declaring_names_are_still_reachable_from_the_topology_package() -> None:
    from topology import TopologyConflict, declare
    from topology.declaring import TopologyConflict as Conflict
    from topology.declaring import declare as declaring_function

    assert declare is declaring_function and TopologyConflict is Conflict


ROLES = ("tasks", "results", "status", "dead", "retry", "results.history")


def test_only_topology_names_exchanges_and_queues() -> None:
    """No string in consumer/ or schemas/ spells one of our exchange or queue names (or the
    ``.<role>`` suffix a prefix would be glued to): they come from ``topology.spec``."""
    import ast
    import re
    from pathlib import Path

    name = re.compile(r"(^|dagger)\.(" + "|".join(re.escape(r) for r in ROLES) + r")(\.|$)")
    root = Path(__file__).resolve().parents[1]
    found = []
    for package in ("consumer", "schemas"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and name.search(node.value):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    assert found == []
