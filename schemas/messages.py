"""The messages that travel over RabbitMQ, as msgspec Structs (JSON on the wire).

These Structs are the single source of truth: the JSON Schema and AsyncAPI documents are
generated from them (``dagger-adapter schema export``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from schemas.enums import ErrorCategory, ExecutionType, Outcome, TaskState

SCHEMA_VERSION = 1

# Identifiers end up in AMQP properties (short strings: at most 255 bytes), headers, Valkey keys,
# logs and terminals: printable, no whitespace, short. The pattern is what JSON Schema can say;
# ``__post_init__`` adds the rest (Unicode format characters, the UTF-8 byte length).
MAX_TASK_ID_LENGTH = 200
AMQP_SHORTSTR_BYTES = 255
_PRINTABLE = r"^[^\s\x00-\x1f\x7f-\x9f]+$"
TaskId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_TASK_ID_LENGTH,
        pattern=_PRINTABLE,
        description="Caller-chosen unique id of the task; the idempotency key. Printable, no whitespace, "
        f"at most {MAX_TASK_ID_LENGTH} characters and {AMQP_SHORTSTR_BYTES} bytes in UTF-8.",
    ),
]
AmqpShortString = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=AMQP_SHORTSTR_BYTES,
        pattern=_PRINTABLE,
        description=f"Printable, no whitespace, at most {AMQP_SHORTSTR_BYTES} bytes in UTF-8 (an AMQP short string).",
    ),
]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class ExecutionCommand(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A request to run one task. Published to the tasks exchange, routing key = execution type."""

    task_id: TaskId
    execution_type: ExecutionType
    parameters: dict[str, Any] = {}
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=86400)] | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] | None = None
    submitted_at: datetime | None = None
    schema_version: Annotated[int, msgspec.Meta(ge=1)] = SCHEMA_VERSION
    # Request/reply: the result is also sent to this queue, with correlation_id (or task_id).
    reply_to: AmqpShortString | None = None
    correlation_id: AmqpShortString | None = None

    def __repr__(self) -> str:
        # parameters may carry secrets and registry credentials: a repr shows only their keys.
        return (
            f"ExecutionCommand(task_id={self.task_id!r}, execution_type={self.execution_type.value!r}, "
            f"parameters=<keys: {', '.join(sorted(self.parameters))}>, timeout_seconds={self.timeout_seconds!r})"
        )

    def __post_init__(self) -> None:
        for name in ("task_id", "reply_to", "correlation_id"):
            problem = identifier_problem(getattr(self, name))
            if problem is not None:
                raise ValueError(f"{name} {problem}")
        if self.schema_version > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is newer than this worker understands ({SCHEMA_VERSION})"
            )


def identifier_problem(value: str | None) -> str | None:
    """What is wrong with an identifier the schema's pattern cannot fully check (None: nothing)."""
    if value is None:
        return None
    if not value.isprintable():
        return "contains characters that are not printable"
    if len(value.encode("utf-8", "surrogatepass")) > AMQP_SHORTSTR_BYTES:
        return f"is longer than {AMQP_SHORTSTR_BYTES} bytes in UTF-8"
    return None


def is_identifier(value: object, max_length: int = AMQP_SHORTSTR_BYTES) -> bool:
    """Whether ``value`` is a valid identifier (``max_length=MAX_TASK_ID_LENGTH`` for a task id);
    for reading one out of a message that failed validation."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and not any(c.isspace() for c in value)
        and identifier_problem(value) is None
    )


class ExecutionResult(msgspec.Struct, kw_only=True):
    """The outcome of one task. Published to the results exchange as
    ``<execution_type>.<succeeded|failed>`` and to the command's ``reply_to``."""

    task_id: str
    success: bool
    result: Any = None
    error: str | None = None
    error_category: ErrorCategory | None = None
    attempts: NonNegativeInt = 1
    cached: bool = False
    duration_ms: NonNegativeInt = 0
    worker_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    execution_type: ExecutionType | None = None
    # The OpenTelemetry trace (32 hex digits) the execution ran in: the command's ``traceparent``
    # header's trace when it had one. Find the worker's logs and the engine's spans by it.
    trace_id: str | None = None

    @property
    def outcome(self) -> Outcome:
        return Outcome.SUCCEEDED if self.success else Outcome.FAILED


def result_message_id(task_id: str, attempts: int, replay_id: str | None = None) -> str:
    """The AMQP ``message_id`` of a task's result: the same for every copy of the same result (a
    publish repeated after a lost confirm, a result republished to a duplicate command), so a
    consumer recognises copies; a replay's result (a new run) gets an id of its own."""
    return f"{task_id}:{attempts}" + (f":{replay_id}" if replay_id else "")


class StatusEvent(msgspec.Struct, kw_only=True):
    """A task's progress, on the status exchange as ``task.<state>``."""

    task_id: str
    state: TaskState
    attempt: NonNegativeInt = 1
    worker_id: str | None = None
    at: datetime = msgspec.field(default_factory=utcnow)
    detail: str | None = None


class WorkerHeartbeat(msgspec.Struct, kw_only=True):
    """A worker's liveness and load, on the status exchange as ``worker.heartbeat``."""

    worker_id: str
    ready: bool
    current_load: NonNegativeInt
    capacity: NonNegativeInt
    at: datetime = msgspec.field(default_factory=utcnow)
    version: str = ""
    circuit: str | None = None  # the engine circuit breaker's state: closed | open | half-open


# The names of the original design, kept as aliases of the same classes.
AgentExecutionConfig = ExecutionCommand
AgentExecutionResult = ExecutionResult
