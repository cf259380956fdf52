"""The AsyncAPI 3 document: channels from the topology, payloads from the schemas."""

from __future__ import annotations

from typing import Any

from schemas import CONTENT_TYPE, ExecutionType, Outcome, TaskState
from schemas.jsonschema import components
from topology.spec import UNKNOWN_EXECUTION_TYPE, Topology


def asyncapi_document(spec: Topology, version: str) -> dict[str, Any]:
    ref = "#/components/schemas/{name}"

    def channel(address: str, exchange: str, kind: str, message: str, description: str) -> dict[str, Any]:
        return {
            "address": address,
            "description": description,
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": exchange, "type": kind, "durable": True}}},
        }

    types = [t.value for t in ExecutionType]
    channels = {
        "tasks": channel(
            "{execution_type}",
            spec.tasks_exchange,
            "topic",
            "ExecutionCommand",
            f"Commands to run; consumed from quorum queue {spec.tasks_queue!r}. Routing key: one of {types}.",
        ),
        "results": channel(
            "{execution_type}.{outcome}",
            spec.results_exchange,
            "topic",
            "ExecutionResult",
            f"Results; outcome is one of {[o.value for o in Outcome]}; execution_type is one of {types}, "
            f"or {UNKNOWN_EXECUTION_TYPE!r} for an invalid command of an unknown type.",
        ),
        "task_status": channel(
            "task.{state}",
            spec.status_exchange,
            "topic",
            "StatusEvent",
            f"Task progress; state is one of {[s.value for s in TaskState]}.",
        ),
        "worker_heartbeat": channel(
            spec.heartbeat_routing_key,
            spec.status_exchange,
            "topic",
            "WorkerHeartbeat",
            "Worker liveness, readiness and load.",
        ),
        "dead_letters": channel(
            "{any}",
            spec.dead_exchange,
            "fanout",
            "ExecutionCommand",
            f"Dead letters in queue {spec.dead_queue!r}: the original body with x-error-category, x-error, "
            "x-attempts, x-task-id, x-dead-lettered-at and x-worker-id headers.",
        ),
    }
    for c in channels.values():
        c["parameters"] = {
            p: {"description": p.replace("_", " ")}
            for p in ("execution_type", "outcome", "state", "any")
            if "{" + p + "}" in c["address"]
        }
        if not c["parameters"]:
            del c["parameters"]
    messages = {
        name: {"name": name, "contentType": CONTENT_TYPE, "payload": {"$ref": ref.format(name=name)}}
        for name in ("ExecutionCommand", "ExecutionResult", "StatusEvent", "WorkerHeartbeat")
    }
    ops = {
        "publishCommand": ("send", "tasks", "ExecutionCommand"),
        "consumeResults": ("receive", "results", "ExecutionResult"),
        "consumeTaskStatus": ("receive", "task_status", "StatusEvent"),
        "consumeHeartbeats": ("receive", "worker_heartbeat", "WorkerHeartbeat"),
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Dagger Adapter",
            "version": version,
            "description": "Execution commands in, Dagger pipelines run, results and status out.",
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": {
            op: {
                "action": action,
                "channel": {"$ref": f"#/channels/{ch}"},
                "messages": [{"$ref": f"#/channels/{ch}/messages/{msg}"}],
            }
            for op, (action, ch, msg) in ops.items()
        },
        "components": {"schemas": components(ref), "messages": messages},
    }
