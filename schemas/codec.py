"""Decode once at the edge, encode on the way out."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from schemas.errors import InvalidMessage
from schemas.messages import ExecutionCommand, ExecutionResult, StatusEvent, WorkerHeartbeat
from schemas.parameters import ExecutionParameters, parse_parameters

T = TypeVar("T")

CONTENT_TYPE = "application/json"  # of every message we publish

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in (ExecutionCommand, ExecutionResult, StatusEvent, WorkerHeartbeat)
}


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes | str, cls: type[T]) -> T:
    """Decode ``data`` as ``cls``; raise ``InvalidMessage`` naming the field that is wrong."""
    decoder = _decoders.get(cls) or msgspec.json.Decoder(cls)
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise InvalidMessage(f"not a valid {cls.__name__}: {exc}", task_id=_peek_task_id(data)) from None


def decode_command(data: bytes | str) -> tuple[ExecutionCommand, ExecutionParameters]:
    """Decode and fully validate a command, its parameters included."""
    command = decode(data, ExecutionCommand)
    try:
        return command, parse_parameters(command.execution_type, command.parameters)
    except InvalidMessage as exc:
        raise InvalidMessage(str(exc), task_id=command.task_id) from None


def peek(data: bytes | str) -> dict[str, Any]:
    """The top-level fields of a message that may fail validation ({} when it is not a JSON
    object), so that even a rejected message can be answered where it asked to be."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _peek_task_id(data: bytes | str) -> str | None:
    task_id = peek(data).get("task_id")
    return task_id if isinstance(task_id, str) and task_id.strip() else None
