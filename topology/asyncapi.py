"""The AsyncAPI 3 document: channels and operations from the topology, payloads and header schemas
from the schemas (generated, never written by hand).

The document describes the contract as seen by a platform that uses Dagger Adapter: it sends
commands (request/reply when it names a reply queue), receives results, status events and worker
heartbeats, and inspects and replays dead letters. The workers are the other side of each channel.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import msgspec

from schemas import CONTENT_TYPE, ErrorCategory, ExecutionType, Outcome, TaskState
from schemas import headers as h
from schemas.jsonschema import components
from topology.spec import UNKNOWN_EXECUTION_TYPE, Topology

ASYNCAPI_VERSION = "3.1.0"
AMQP_BINDING_VERSION = "0.3.0"
# W3C trace context, as AMQP application headers (any publisher can set them).
TRACE_HEADERS = {
    "traceparent": {
        "type": "string",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": "W3C trace context of the publisher's span; the worker continues the trace.",
    },
    "tracestate": {"type": "string", "maxLength": 512, "description": "W3C tracestate, passed along."},
}

_SCHEMA = "#/components/schemas/{name}"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _values(enum: Any) -> list[str]:
    return [member.value for member in enum]


def _servers(amqp_url: str | None) -> dict[str, Any]:
    """The broker, with host/port/vhost defaulting to the configured URL (never its credentials)."""
    parts = urlsplit(amqp_url or "amqp://localhost:5672/")
    tls = parts.scheme == "amqps"
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"

    def server(protocol: str, port: int, description: str) -> dict[str, Any]:
        return {
            "host": "{host}:{port}",
            "protocol": protocol,
            "protocolVersion": "0-9-1",
            "pathname": "/{vhost}",
            "title": f"RabbitMQ over {protocol}",
            "description": description,
            "variables": {
                "host": {"default": parts.hostname or "localhost", "description": "RabbitMQ host name"},
                "port": {"default": str(port), "description": "AMQP port"},
                "vhost": {"default": vhost, "description": "virtual host (URL-encoded in an AMQP URL; / is %2f)"},
            },
            "security": [_ref("securitySchemes", "userPassword")],
            "bindings": {"amqp": {}},
        }

    port = parts.port or (5671 if tls else 5672)
    return {
        "broker": server(
            "amqps" if tls else "amqp",
            port,
            "The RabbitMQ (3.12+ recommended; quorum queues and streams required) that workers consume from. "
            "Set DAGGER_ADAPTER_AMQP_URL to the same broker.",
        ),
    }


def _headers_schema(title: str, properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "title": title, "description": description, "properties": properties}


def _dead_letter_headers() -> dict[str, Any]:
    """From ``DeadLetterHeaders`` (the Struct the worker writes them from), under their wire names."""
    wire = h.DEAD_LETTER_HEADER_OF
    exact: dict[str, dict[str, Any]] = {  # where the Struct is more lenient than what a worker writes
        "error_category": {"type": "string", "enum": _values(ErrorCategory)},
        "error": {"type": "string", "maxLength": h.MAX_ERROR_HEADER},
        "attempts": {"type": "integer", "minimum": 0},
    }
    about = {
        "error_category": "why: permanent, invalid, or transient/timeout with its retries exhausted",
        "error": "the error",
        "attempts": "attempts made",
        "task_id": "the command's task id, when it could be read",
        "dead_lettered_at": "when the worker dead-lettered it (ISO 8601)",
        "worker_id": "the worker that dead-lettered it",
    }
    properties: dict[str, Any] = {}
    for field in msgspec.structs.fields(h.DeadLetterHeaders):
        prop = exact.get(field.name) or _not_null(msgspec.json.schema(field.type))
        properties[wire[field.name]] = {**prop, "description": about[field.name]}
    properties["x-death"] = {
        "type": "array",
        "items": {"type": "object"},
        "description": "set by RabbitMQ instead of the x-error headers when it dead-lettered the command itself "
        f"(reason {h.DELIVERY_LIMIT!r}: workers died holding it)",
    }
    return {
        "type": "object",
        "title": "DeadLetterHeaders",
        "description": "Why a message is in the dead-letter queue. Written by a worker: "
        f"{h.ERROR_CATEGORY}, {h.ERROR} and {h.ATTEMPTS} always, the others when known; "
        "written by RabbitMQ (delivery limit): x-death.",
        "properties": properties,
    }


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """An optional header is absent, never null: drop the null alternative of ``X | None``."""
    options = [p for p in prop.get("anyOf", ()) if p != {"type": "null"}]
    return dict(options[0]) if len(options) == 1 else dict(prop)


def asyncapi_document(spec: Topology, version: str, amqp_url: str | None = None) -> dict[str, Any]:
    schemas = components(_SCHEMA)
    types, outcomes, states = _values(ExecutionType), _values(Outcome), _values(TaskState)
    task_id_header = {h.TASK_ID: {"type": "string", "description": "the task id (also in the body)"}}

    def channel(
        address: str | None, title: str, messages: list[str], description: str, amqp: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "address": address,
            "title": title,
            "description": description,
            "messages": {m: _ref("messages", m) for m in messages},
            "bindings": {"amqp": {**amqp, "bindingVersion": AMQP_BINDING_VERSION}},
        }

    def exchange_channel(
        address: str, exchange: str, kind: str, messages: list[str], description: str, **parameters: Any
    ) -> dict[str, Any]:
        binding = {
            "is": "routingKey",
            "exchange": {"name": exchange, "type": kind, "durable": True, "autoDelete": False},
        }
        out = channel(address, exchange, messages, description, binding)
        if parameters:
            out["parameters"] = parameters
        return out

    def queue_channel(queue: str, messages: list[str], description: str) -> dict[str, Any]:
        binding = {"is": "queue", "queue": {"name": queue, "durable": True, "exclusive": False, "autoDelete": False}}
        return channel(queue, queue, messages, description, binding)

    channels = {
        "tasks": exchange_channel(
            "{execution_type}",
            spec.tasks_exchange,
            "topic",
            ["ExecutionCommand"],
            f"Commands to run, consumed by the workers from quorum queue {spec.tasks_queue!r} "
            f"(x-delivery-limit {spec.delivery_limit}). Retries re-enter with routing key "
            "retry.<tier> after waiting in a retry queue; operators' replays of dead letters come here too.",
            execution_type={"enum": types, "description": "the command's execution_type"},
        ),
        "reply": channel(
            None,
            "reply queue",
            ["ExecutionResult"],
            "The queue a command names in its AMQP reply_to property (else the body's reply_to): an exclusive "
            "queue of the caller, or RabbitMQ's direct reply-to (amq.rabbitmq.reply-to) as the Python client "
            "uses. The worker sends the result there too, through the default exchange, with the AMQP "
            "correlation_id property set to the command's (property, else body field, else its task id). "
            "A reply_to that names a queue of this topology is refused.",
            {"is": "queue", "queue": {"name": "reply_to", "exclusive": True, "autoDelete": True, "durable": False}},
        ),
        "results": exchange_channel(
            "{execution_type}.{outcome}",
            spec.results_exchange,
            "topic",
            ["ExecutionResult"],
            "Every result, pub/sub: bind a queue of your own with the keys you want (e.g. *.failed).",
            execution_type={
                "enum": [*types, UNKNOWN_EXECUTION_TYPE],
                "description": f"the command's execution_type, or {UNKNOWN_EXECUTION_TYPE!r} for an invalid "
                "command of an unknown type",
            },
            outcome={"enum": outcomes, "description": "succeeded or failed"},
        ),
        "task_status": exchange_channel(
            "task.{state}",
            spec.status_exchange,
            "topic",
            ["StatusEvent"],
            "Progress of each task: received, running, a heartbeat every interval while it runs, retrying, "
            "then its outcome.",
            state={"enum": states, "description": "the event's state"},
        ),
        "worker_heartbeat": exchange_channel(
            spec.heartbeat_routing_key,
            spec.status_exchange,
            "topic",
            ["WorkerHeartbeat"],
            "Each worker's liveness, readiness and load, every heartbeat interval.",
        ),
        "recent_heartbeats": queue_channel(
            spec.heartbeats_queue,
            ["WorkerHeartbeat"],
            "A stream (x-queue-type stream) of the last minutes of worker heartbeats: consume it from an "
            "x-stream-offset (e.g. a timestamp) to learn at once which workers are alive.",
        ),
        "result_history": queue_channel(
            spec.results_stream,
            ["ExecutionResult"],
            "A stream (x-queue-type stream) of every result, kept by age and size: consume it from an "
            "x-stream-offset (a timestamp, or first) to catch up on results published while you were away.",
        ),
        "dead_letters": queue_channel(
            spec.dead_queue,
            ["DeadLetter"],
            f"Dead letters (fanout exchange {spec.dead_exchange!r} into this classic queue): the original body, "
            "with headers that say why. `dagger-adapter dlq list|show` browses them without consuming; "
            "`dlq replay` sends them back to the tasks exchange with x-replay-id.",
        ),
    }

    command_headers = _headers_schema(
        "CommandHeaders",
        {
            **task_id_header,
            h.ATTEMPTS: {"type": "integer", "minimum": 0, "description": "attempts made so far (set on retries)"},
            h.REPLAY_ID: {"type": "string", "description": "set by `dlq replay`: the replay this message belongs to"},
            **TRACE_HEADERS,
        },
        "AMQP application headers of a command; all optional for a publisher.",
    )
    event_headers = _headers_schema(
        "EventHeaders", task_id_header, "AMQP application headers of results and status events."
    )
    command_correlation = {
        "description": "The AMQP correlation_id property (standard RPC; else the body's correlation_id field): "
        "the reply carries it back.",
        "location": "$message.header#/correlation_id",
    }
    result_correlation = {
        "description": "The AMQP correlation_id property of a reply: the command's correlation_id, else its task id.",
        "location": "$message.header#/correlation_id",
    }

    def message(name: str, payload: str, summary: str, headers: str, correlation: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": CONTENT_TYPE,
            "payload": {"$ref": _SCHEMA.format(name=payload)},
            "headers": _ref("schemas", headers),
            "bindings": {"amqp": {"messageType": name, "bindingVersion": AMQP_BINDING_VERSION}},
        }
        if correlation:
            out["correlationId"] = _ref("correlationIds", correlation)
        return out

    messages = {
        "ExecutionCommand": message(
            "ExecutionCommand", "ExecutionCommand", "A task to run.", "CommandHeaders", "commandCorrelation"
        ),
        "ExecutionResult": message(
            "ExecutionResult", "ExecutionResult", "How a task ended.", "EventHeaders", "resultCorrelation"
        ),
        "StatusEvent": message("StatusEvent", "StatusEvent", "A step in a task's life.", "EventHeaders"),
        "WorkerHeartbeat": message("WorkerHeartbeat", "WorkerHeartbeat", "A worker is alive.", "EventHeaders"),
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "DeadLetter",
            "summary": "A message that will not be run again unless replayed.",
            "contentType": CONTENT_TYPE,
            "headers": _ref("schemas", "DeadLetterHeaders"),
            "payload": {
                "description": "The original body, unchanged: an ExecutionCommand, or whatever an invalid message was.",
                "anyOf": [{"$ref": _SCHEMA.format(name="ExecutionCommand")}, {"description": "an invalid message"}],
            },
        },
    }
    schemas.update(CommandHeaders=command_headers, EventHeaders=event_headers, DeadLetterHeaders=_dead_letter_headers())

    send_binding = {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING_VERSION}}
    receive_binding = {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}}

    def operation(action: str, channel: str, msg: str, summary: str, **extra: Any) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{channel}/messages/{msg}"}],
            "bindings": send_binding if action == "send" else receive_binding,
            **extra,
        }

    operations = {
        "submitCommand": operation(
            "send",
            "tasks",
            "ExecutionCommand",
            "Publish a command (persistent, mandatory, with publisher confirms). With reply_to set, the "
            "result is also sent to that queue.",
            reply={
                "address": {
                    "description": "the queue named in the command's AMQP reply_to property (else the body's)",
                    "location": "$message.header#/reply_to",
                },
                "channel": {"$ref": "#/channels/reply"},
                "messages": [{"$ref": "#/channels/reply/messages/ExecutionResult"}],
            },
        ),
        "replayDeadLetter": operation(
            "send",
            "tasks",
            "ExecutionCommand",
            "`dlq replay`: a dead letter's body goes back to the tasks exchange with x-replay-id, attempts reset.",
        ),
        "receiveResults": operation("receive", "results", "ExecutionResult", "Results of every task, pub/sub."),
        "receiveTaskStatus": operation("receive", "task_status", "StatusEvent", "Task progress events."),
        "receiveHeartbeats": operation("receive", "worker_heartbeat", "WorkerHeartbeat", "Live worker heartbeats."),
        "readRecentHeartbeats": operation(
            "receive",
            "recent_heartbeats",
            "WorkerHeartbeat",
            "Read the heartbeats stream from an offset (`dagger-adapter status`).",
        ),
        "readResultHistory": operation(
            "receive",
            "result_history",
            "ExecutionResult",
            "Read past results from the results stream (`dagger-adapter results --since`).",
        ),
        "inspectDeadLetters": operation(
            "receive",
            "dead_letters",
            "DeadLetter",
            "Browse (get, then requeue) or take dead letters (`dagger-adapter dlq`).",
        ),
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:dagger-adapter:{spec.prefix}",
        "info": {
            "title": "Dagger Adapter",
            "version": version,
            "description": "Execution commands in over RabbitMQ, Dagger pipelines run, results and status out. "
            f"Every exchange and queue name derives from the topology prefix ({spec.prefix!r}).",
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [{"name": "rabbitmq"}, {"name": "dagger"}],
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": _servers(amqp_url),
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "correlationIds": {"commandCorrelation": command_correlation, "resultCorrelation": result_correlation},
            "securitySchemes": {
                "userPassword": {"type": "userPassword", "description": "RabbitMQ user and password (PLAIN)"}
            },
        },
    }
