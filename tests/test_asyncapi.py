"""The AsyncAPI document says what travels, as the code really sends it: the headers a worker
writes on a dead letter and a publisher on a command validate against the document's header
schemas; request/reply, enums, servers and every channel's operations are there."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from consumer.client.publishing import command_message
from schemas import DeadLetterHeaders, ErrorCategory, ExecutionCommand, ExecutionType, Outcome, TaskState
from schemas import headers as h
from topology import Topology
from topology.asyncapi import asyncapi_document


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return asyncapi_document(Topology(prefix="acme"), "1.2.3", "amqps://user:s3cret@rabbit.example:5671/prod")


def validator(doc: dict[str, Any], name: str) -> jsonschema.Validator:
    schema = {**doc["components"]["schemas"][name], "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_dead_letter_headers_as_the_worker_writes_them_match_the_schema(doc: dict[str, Any]) -> None:
    headers = DeadLetterHeaders(
        error_category=ErrorCategory.PERMANENT,
        error="step 'build' exited with 2",
        attempts=3,
        task_id="t-1",
        dead_lettered_at=datetime.now(UTC),
        worker_id="w-1",
    ).to_headers()
    schema = doc["components"]["schemas"]["DeadLetterHeaders"]
    assert set(headers) == set(schema["properties"]) - {"x-death"}
    validator(doc, "DeadLetterHeaders").validate(headers)
    assert schema["properties"][h.ERROR_CATEGORY]["enum"] == [c.value for c in ErrorCategory]
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "DeadLetterHeaders").validate({**headers, h.ERROR_CATEGORY: "bored"})


def test_command_headers_as_a_publisher_sends_them_match_the_schema(doc: dict[str, Any]) -> None:
    message = command_message(ExecutionCommand(task_id="t-2", execution_type=ExecutionType.DAGGER_PIPELINE))
    headers = {**message.headers, h.ATTEMPTS: 2, h.REPLAY_ID: "r-1"}
    headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    validator(doc, "CommandHeaders").validate(headers)
    with pytest.raises(jsonschema.ValidationError):
        validator(doc, "CommandHeaders").validate({"traceparent": "not a trace"})


def test_request_reply_with_correlation_ids(doc: dict[str, Any]) -> None:
    submit = doc["operations"]["submitCommand"]
    assert submit["action"] == "send" and submit["reply"]["channel"] == {"$ref": "#/channels/reply"}
    assert submit["reply"]["address"]["location"] == "$message.header#/reply_to"  # the AMQP property wins
    messages = doc["components"]["messages"]
    correlations = doc["components"]["correlationIds"]
    command_corr = messages["ExecutionCommand"]["correlationId"]["$ref"].rsplit("/", 1)[1]
    assert correlations[command_corr]["location"] == "$message.header#/correlation_id"
    assert "correlationId" in messages["ExecutionResult"]
    assert doc["channels"]["reply"]["address"] is None  # dynamic: whatever reply_to names


def test_every_channel_has_an_operation_and_enums_come_from_the_schemas(doc: dict[str, Any]) -> None:
    used = {op["channel"]["$ref"].rsplit("/", 1)[1] for op in doc["operations"].values()}
    assert used | {"reply"} == set(doc["channels"])  # the reply channel is used through submitCommand's reply
    channels = doc["channels"]
    assert channels["tasks"]["parameters"]["execution_type"]["enum"] == [t.value for t in ExecutionType]
    assert channels["results"]["parameters"]["outcome"]["enum"] == [o.value for o in Outcome]
    assert channels["task_status"]["parameters"]["state"]["enum"] == [s.value for s in TaskState]
    assert channels["dead_letters"]["address"] == "acme.dead"
    assert channels["recent_heartbeats"]["address"] == "acme.heartbeats"
    assert channels["result_history"]["address"] == Topology(prefix="acme").results_stream
    assert doc["operations"]["inspectDeadLetters"]["action"] == "receive"


def test_servers_come_from_the_configured_url_without_its_credentials(doc: dict[str, Any]) -> None:
    (server,) = doc["servers"].values()
    assert server["protocol"] == "amqps"
    variables = {name: v["default"] for name, v in server["variables"].items()}
    assert variables == {"host": "rabbit.example", "port": "5671", "vhost": "prod"}
    assert "s3cret" not in str(doc) and "user" not in str(server["variables"])
    assert doc["info"]["license"]["name"] == "Apache-2.0"
