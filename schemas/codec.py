"""Decode once at the edge, encode on the way out."""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import msgspec

from schemas.errors import InvalidMessage
from schemas.limits import DEFAULT_LIMITS, Limits, check_message, check_parameters
from schemas.messages import (
    MAX_TASK_ID_LENGTH,
    ExecutionCommand,
    ExecutionResult,
    StatusEvent,
    WorkerHeartbeat,
    is_identifier,
)
from schemas.parameters import ExecutionParameters, parse_parameters

T = TypeVar("T")

CONTENT_TYPE = "application/json"  # of every message we publish

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in (ExecutionCommand, ExecutionResult, StatusEvent, WorkerHeartbeat)
}


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes | str, cls: type[T], limits: Limits = DEFAULT_LIMITS) -> T:
    """Decode ``data`` as ``cls``; raise ``InvalidMessage`` naming the field that is wrong."""
    decoder = _decoders.get(cls) or msgspec.json.Decoder(cls)
    try:
        return decoder.decode(data)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise InvalidMessage(f"not a valid {cls.__name__}: {exc}", task_id=_peek_task_id(data, limits)) from None


def decode_command(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> tuple[ExecutionCommand, ExecutionParameters]:
    """Check the ``limits``, decode and fully validate a command, its parameters included.

    Raises ``InvalidMessage`` and nothing else, whatever ``data`` is: a message that cannot be
    decoded is the sender's problem, and it must never take the worker down with it."""
    try:
        raw = check_message(data, limits)
        command = decode(raw, ExecutionCommand, limits)
    except InvalidMessage:
        raise
    except Exception as exc:  # RecursionError, MemoryError, a defect: still the message's fault
        raise InvalidMessage(f"could not decode the message: {type(exc).__name__}: {exc}") from None
    try:
        check_parameters(command.execution_type, command.parameters, limits)
        return command, parse_parameters(command.execution_type, command.parameters)
    except InvalidMessage as exc:
        exc.task_id = command.task_id
        raise
    except Exception as exc:
        raise InvalidMessage(f"invalid parameters: {type(exc).__name__}: {exc}", task_id=command.task_id) from None


def fingerprint(command: ExecutionCommand, params: ExecutionParameters) -> str:
    """What a command asks for, as a digest: its execution type and its validated parameters in
    a canonical encoding (defaults filled in, keys sorted), so the same command always gives
    the same fingerprint however it was written, and any other command another one."""
    canonical = msgspec.json.encode(params, order="sorted")
    return hashlib.sha256(command.execution_type.value.encode() + b"\0" + canonical).hexdigest()


def peek(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The top-level fields of a message that may fail validation ({} when it is not a JSON
    object, or over the size or depth limits), so that even a rejected message can be answered
    where it asked to be. Never raises."""
    try:
        value = msgspec.json.decode(check_message(data, limits))
    except Exception:
        return {}
    return value if isinstance(value, dict) else {}


def _peek_task_id(data: bytes | str, limits: Limits) -> str | None:
    task_id = peek(data, limits).get("task_id")
    return task_id if is_identifier(task_id, MAX_TASK_ID_LENGTH) else None
