"""The wire contract: every message round-trips, bad input is rejected with a message that names
the field, and nothing secret leaks through a repr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from schemas import (
    AgentExecutionConfig,
    AgentExecutionResult,
    DeadLetterHeaders,
    ErrorCategory,
    ExecutionCommand,
    ExecutionResult,
    ExecutionType,
    InvalidMessage,
    PipelineParameters,
    StatusEvent,
    TaskState,
    WorkerHeartbeat,
    WorkflowParameters,
    decode,
    decode_command,
    encode,
)
from schemas.jsonschema import json_schemas

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)

MESSAGES = [
    ExecutionCommand(
        task_id="task-123",
        execution_type=ExecutionType.CONTAINERIZED_WORKFLOW,
        parameters={"container_image": "python:3.12-slim", "command": ["python", "-V"]},
        timeout_seconds=30,
        priority=5,
        submitted_at=NOW,
        reply_to="amq.gen-reply",
        correlation_id="c-1",
    ),
    ExecutionResult(
        task_id="task-123",
        success=False,
        result={"steps": {"build": {"exit_code": 2}}},
        error="step 'build' exited with 2",
        error_category=ErrorCategory.PERMANENT,
        attempts=3,
        cached=False,
        duration_ms=1234,
        worker_id="w-1",
        started_at=NOW,
        finished_at=NOW,
        execution_type=ExecutionType.CONTAINERIZED_WORKFLOW,
    ),
    StatusEvent(task_id="task-123", state=TaskState.RETRYING, attempt=2, worker_id="w-1", at=NOW, detail="x"),
    WorkerHeartbeat(worker_id="w-1", ready=True, current_load=1, capacity=4, at=NOW, version="0.1.0"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: msgspec.Struct) -> None:
    assert decode(encode(message), type(message)) == message


def test_the_original_design_names_are_the_wire_classes() -> None:
    assert AgentExecutionConfig is ExecutionCommand
    assert AgentExecutionResult is ExecutionResult


def test_command_defaults_for_a_minimal_message() -> None:
    command, params = decode_command(
        b'{"task_id": "t", "execution_type": "dagger_pipeline",'
        b' "parameters": {"pipeline": [{"from": {"address": "alpine:3.20"}}]}}'
    )
    assert command.schema_version == 1
    assert command.timeout_seconds is None
    assert isinstance(params, PipelineParameters)
    assert params.enable_retry is True
    assert params.cache is True


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\xffnot json", "malformed"),
        (b"[1, 2]", "Expected `object`, got `array`"),
        (b'{"execution_type": "dagger_pipeline"}', "missing required field `task_id`"),
        (b'{"task_id": "", "execution_type": "dagger_pipeline"}', "`$.task_id`"),
        (
            b'{"task_id": "t", "execution_type": "shell_script"}',
            "Invalid enum value 'shell_script' - at `$.execution_type`",
        ),
        (b'{"task_id": "t", "execution_type": "dagger_pipeline", "timeout_seconds": -1}', "`$.timeout_seconds`"),
        (b'{"task_id": "t", "execution_type": "dagger_pipeline", "parameters": []}', "`$.parameters`"),
        (b'{"task_id": "t", "execution_type": "dagger_pipeline", "schema_version": 2}', "schema_version 2 is newer"),
        (
            b'{"task_id": "t", "execution_type": "dagger_pipeline", "parameters": {}}',
            "give exactly one of `pipeline` or `module` + `function`",
        ),
        (
            b'{"task_id": "t", "execution_type": "dagger_pipeline", "parameters": {"pipeline": [{"from": {}, "with_exec": {}}]}}',
            "pipeline[0] must be a single-key mapping",
        ),
        (
            b'{"task_id": "t", "execution_type": "containerized_workflow", "parameters": {"command": ["ls"]}}',
            "needs a `container_image`",
        ),
        (
            b'{"task_id": "t", "execution_type": "containerized_workflow",'
            b' "parameters": {"container_image": "a", "command": ["ls"], "enable_retry": "yes"}}',
            "Expected `bool`, got `str` - at `$.parameters.enable_retry`",
        ),
        (
            b'{"task_id": "t", "execution_type": "containerized_workflow",'
            b' "parameters": {"container_image": "a", "command": ["ls"], "volumes": [{"source": "d", "target": "rel"}]}}',
            "at `$.parameters.volumes[0].target`",
        ),
        (
            b'{"task_id": "t", "execution_type": "containerized_workflow",'
            b' "parameters": {"container_image": "a", "command": ["ls"], "volums": []}}',
            "unknown field `volums`",
        ),
        (
            b'{"task_id": "t", "execution_type": "containerized_workflow", "parameters": {"workflow_definition":'
            b' {"steps": [{"name": "a", "run": "x", "depends_on": ["b"]}, {"name": "b", "run": "y", "depends_on": ["a"]}]}}}',
            "cycle",
        ),
    ],
)
def test_bad_commands_are_rejected_naming_what_is_wrong(payload: bytes, expected: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_command(payload)
    assert expected in str(info.value)


def test_a_rejected_command_still_names_its_task_when_it_can() -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_command(b'{"task_id": "t-9", "execution_type": "dagger_pipeline", "parameters": {}}')
    assert info.value.task_id == "t-9"
    with pytest.raises(InvalidMessage) as info:
        decode_command(b"garbage")
    assert info.value.task_id is None


def test_workflow_steps_are_ordered_in_waves_by_dependencies() -> None:
    _, params = decode_command(
        json.dumps(
            {
                "task_id": "t",
                "execution_type": "containerized_workflow",
                "parameters": {
                    "workflow_definition": {
                        "image": "alpine",
                        "steps": [
                            {"name": "report", "run": "cat", "depends_on": ["test", "lint"]},
                            {"name": "lint", "run": "ruff", "depends_on": ["fetch"]},
                            {"name": "fetch", "run": ["git", "clone"]},
                            {"name": "test", "run": "pytest", "depends_on": ["fetch"]},
                        ],
                    }
                },
            }
        )
    )
    assert isinstance(params, WorkflowParameters)
    assert not isinstance(params.workflow_definition, str) and params.workflow_definition is not None
    waves = [[s.name for s in wave] for wave in params.workflow_definition.execution_order()]
    assert waves == [["fetch"], ["lint", "test"], ["report"]]


def test_secrets_and_credentials_never_show_in_reprs() -> None:
    raw = {
        "task_id": "t",
        "execution_type": "containerized_workflow",
        "parameters": {
            "container_image": "registry.example/app:1",
            "command": ["deploy"],
            "registry_auth": {"username": "bot", "token": "tok-SECRET-1"},
            "secrets": {"API_KEY": "key-SECRET-2"},
        },
    }
    command, params = decode_command(json.dumps(raw))
    for text in (repr(command), str(command), repr(params), str(params)):
        assert "SECRET" not in text
    assert "API_KEY" in repr(params)  # names stay visible, values do not


def test_dead_letter_headers_round_trip_and_describe_broker_dead_letters() -> None:
    ours = DeadLetterHeaders(
        error_category=ErrorCategory.PERMANENT,
        error="boom",
        attempts=3,
        task_id="t",
        dead_lettered_at=NOW,
        worker_id="w",
    )
    back = DeadLetterHeaders.from_headers(ours.to_headers())
    assert back.error_category == "permanent"
    assert (back.error, back.attempts, back.task_id, back.dead_lettered_at, back.worker_id) == (
        "boom",
        3,
        "t",
        NOW,
        "w",
    )

    by_broker = DeadLetterHeaders.from_headers(
        {"x-delivery-count": 3, "x-death": [{"reason": "delivery_limit", "count": 1}]}
    )
    assert "delivery_limit" in by_broker.error
    assert by_broker.attempts == 3


def test_json_schema_is_generated_for_every_message() -> None:
    schemas = json_schemas()
    assert set(schemas) >= {"ExecutionCommand", "ExecutionResult", "StatusEvent", "WorkerHeartbeat"}
    command = schemas["ExecutionCommand"]
    definition = command["$defs"]["ExecutionCommand"]
    assert definition["required"] == ["task_id", "execution_type"]
    assert definition["properties"]["task_id"]["minLength"] == 1


def test_schema_export_writes_json_schema_and_asyncapi(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "schema", "export", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DAGGER_ADAPTER_TOPOLOGY_PREFIX": "acme"},
    )
    assert out.returncode == 0, out.stderr
    command_schema = json.loads((tmp_path / "ExecutionCommand.schema.json").read_text())
    assert command_schema["$defs"]["ExecutionCommand"]["properties"]["execution_type"]["$ref"].endswith("ExecutionType")
    for name in ("ExecutionResult", "StatusEvent", "WorkerHeartbeat", "WorkflowParameters", "PipelineParameters"):
        assert (tmp_path / f"{name}.schema.json").is_file()
    doc = json.loads((tmp_path / "asyncapi.json").read_text())
    assert doc["asyncapi"].startswith("3.")
    tasks = doc["channels"]["tasks"]
    exchange = tasks["bindings"]["amqp"]["exchange"]
    assert (exchange["name"], exchange["type"], exchange["durable"]) == ("acme.tasks", "topic", True)
    assert doc["channels"]["results"]["address"] == "{execution_type}.{outcome}"
    # Every $ref in the document points at something the document defines.
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(doc))
    for ref in refs:
        node = doc
        for part in ref.split("/"):
            node = node[part]
    assert set(doc["components"]["schemas"]) >= {
        "ExecutionCommand",
        "ExecutionResult",
        "StatusEvent",
        "WorkerHeartbeat",
    }
