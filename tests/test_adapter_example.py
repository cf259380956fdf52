"""The original design's usage example, exactly as written, against the example workflow in
``workflows/`` -- with the test engine, and (marked) with a real Dagger engine."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from consumer import DaggerAdapter, DaggerAdapterConfig
from schemas import AgentExecutionConfig, AgentExecutionResult, ExecutionType
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine

REPO = Path(__file__).resolve().parent.parent
CSV = "name,amount\nwidget,1.5\ngadget,2.25\n"
RESULTS = {"rows": 2, "columns": ["name", "amount"], "totals": {"amount": 3.75}}


@pytest.fixture
def example_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example's working directory: ./workflows (the repository's) and ./data."""
    shutil.copytree(REPO / "workflows", tmp_path / "workflows")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.csv").write_text(CSV)
    monkeypatch.chdir(tmp_path)
    return tmp_path


async def run_example(**config: object) -> tuple[AgentExecutionResult, DaggerAdapter, list[object], object]:
    adapter = DaggerAdapter(
        DaggerAdapterConfig(container_registry="docker.io", workflow_directory="./workflows", **config)
    )  # type: ignore[arg-type]
    await adapter.initialize()
    try:
        result = await adapter.execute(
            AgentExecutionConfig(
                task_id="task-123",
                execution_type="containerized_workflow",  # type: ignore[arg-type]
                parameters={
                    "container_image": "python:3.12-slim",
                    "workflow_definition": "data_processing.yml",
                    "inputs": {"data_file": "data.csv", "output_file": "results.json"},
                    "volumes": [{"source": "./data", "target": "/data"}],
                    "environment": {"DEBUG": "true"},
                },
            )
        )
        capabilities = adapter.get_capabilities()
        status = adapter.get_status()
    finally:
        await adapter.close()
    return result, adapter, capabilities, status  # type: ignore[return-value]


def is_step(name: str):  # type: ignore[no-untyped-def]
    def match(record: ExecRecord) -> bool:
        return record.args[:2] == ["python", "-c"] and name in record.args[2]

    return match


async def test_the_usage_example_runs_the_example_workflow(dagger_engine: TestEngine, example_dir: Path) -> None:
    # The engine stands in for python: `process` writes the JSON, `summarize` prints it.
    dagger_engine.on_exec(
        is_step("csv.DictReader"),
        ExecOutcome(stdout="wrote /work/results.json: 2 rows\n", files={"/work/results.json": json.dumps(RESULTS)}),
    )
    dagger_engine.on_exec(is_step("json.load"), ExecOutcome(stdout=f"{RESULTS}\n"))

    # Exactly as written: no allowed_volume_roots, so ./data is allowed as part of the working directory.
    result, _, capabilities, status = await run_example()

    assert result.success, result.error
    assert result.task_id == "task-123" and result.execution_type == ExecutionType.CONTAINERIZED_WORKFLOW
    steps = result.result["steps"]
    assert list(steps) == ["validate", "checksum", "process", "summarize"]
    assert all(s["status"] == "succeeded" and s["exit_code"] == 0 for s in steps.values())
    assert steps["process"]["stdout"] == "wrote /work/results.json: 2 rows\n"
    assert json.loads(result.result["outputs"]["summarize"]["results"]) == RESULTS

    data = str((example_dir / "data").resolve())
    by_name = {
        "validate": next(r for r in dagger_engine.execs if r.args[0] == "sh"),
        "checksum": next(r for r in dagger_engine.execs if r.args[0] == "sha256sum"),
        "process": next(r for r in dagger_engine.execs if is_step("csv.DictReader")(r)),
        "summarize": next(r for r in dagger_engine.execs if is_step("json.load")(r)),
    }
    for record in by_name.values():
        assert record.image == "python:3.12-slim"  # container_image overrides the workflow's image
        assert record.workdir == "/data"
        assert record.env["DEBUG"] == "true" and record.env["PYTHONUNBUFFERED"] == "1"
    assert by_name["validate"].mounts == {"/data": ("host", data), "/work": ("directory", "")}
    # the input reaches the shell as a variable, never as script text
    assert by_name["validate"].args == ["sh", "-c", 'test -s "${INPUT_DATA_FILE}" && echo "found ${INPUT_DATA_FILE}"']
    assert by_name["validate"].env["INPUT_DATA_FILE"] == "data.csv"
    assert steps["validate"]["stdout"] == "found data.csv\n"
    assert by_name["checksum"].args == ["sha256sum", "data.csv"]
    assert by_name["process"].args[-2:] == ["data.csv", "/work/results.json"]
    assert by_name["process"].env["ROUND_DIGITS"] == "2"
    # read-only volume: nothing written back to ./data
    assert dagger_engine.exports == [] and sorted(os.listdir(data)) == ["data.csv"]

    assert {c.execution_type for c in capabilities} == {
        ExecutionType.CONTAINERIZED_WORKFLOW,
        ExecutionType.DAGGER_PIPELINE,
    }
    assert status.ready and status.current_load == 0 and status.capacity == 4
    assert status.cache_available  # the embedded Valkey, data in ./.cache/dagger-adapter
    assert (example_dir / ".cache" / "dagger-adapter").is_dir()


async def test_with_allowed_roots_configured_the_example_volume_must_lie_inside_them(
    dagger_engine: TestEngine, example_dir: Path
) -> None:
    (example_dir / "elsewhere").mkdir()
    result, *_ = await run_example(caching_enabled=False, allowed_volume_roots=["./elsewhere"])
    assert not result.success and result.error_category == "permanent"
    assert "'./data' is outside the allowed host directories" in result.error
    assert dagger_engine.execs == []


@pytest.mark.real_engine
@pytest.mark.skipif(os.environ.get("DAGGER_ADAPTER_REAL_ENGINE") != "1", reason="needs a real Dagger engine")
async def test_the_usage_example_on_a_real_engine(example_dir: Path) -> None:
    result, *_ = await run_example(caching_enabled=False)
    assert result.success, result.error
    assert json.loads(result.result["outputs"]["summarize"]["results"]) == RESULTS
