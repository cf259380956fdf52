"""JSON Schema for every message, generated from the Structs (never written by hand)."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.messages import ExecutionCommand, ExecutionResult, StatusEvent, WorkerHeartbeat
from schemas.parameters import PipelineParameters, WorkflowParameters

MESSAGES: tuple[type[msgspec.Struct], ...] = (ExecutionCommand, ExecutionResult, StatusEvent, WorkerHeartbeat)
PARAMETERS: tuple[type[msgspec.Struct], ...] = (WorkflowParameters, PipelineParameters)


def json_schemas(ref_template: str = "#/$defs/{name}") -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema document per message and parameter type."""
    out: dict[str, dict[str, Any]] = {}
    for cls in MESSAGES + PARAMETERS:
        schema = msgspec.json.schema(cls)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema.setdefault("title", cls.__name__)
        out[cls.__name__] = schema
    return out


def components(ref_template: str = "#/components/schemas/{name}") -> dict[str, Any]:
    """All messages' schemas as shared components (for AsyncAPI)."""
    (_, defs) = msgspec.json.schema_components(MESSAGES + PARAMETERS, ref_template=ref_template)
    return defs
