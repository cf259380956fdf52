"""The wire contract of Dagger Adapter. Imports nothing else of the project."""

from schemas.codec import CONTENT_TYPE, decode, decode_command, encode, fingerprint, peek
from schemas.enums import ErrorCategory, ExecutionType, Outcome, TaskState
from schemas.errors import InvalidMessage
from schemas.headers import DeadLetterHeaders
from schemas.messages import (
    SCHEMA_VERSION,
    AgentExecutionConfig,
    AgentExecutionResult,
    ExecutionCommand,
    ExecutionResult,
    StatusEvent,
    WorkerHeartbeat,
    result_message_id,
    utcnow,
)
from schemas.parameters import (
    ExecutionParameters,
    PipelineParameters,
    RegistryCredentials,
    VolumeMount,
    WorkflowParameters,
    parse_parameters,
)
from schemas.workflow import WorkflowDefinition, WorkflowStep

__all__ = [
    "CONTENT_TYPE",
    "SCHEMA_VERSION",
    "AgentExecutionConfig",
    "AgentExecutionResult",
    "DeadLetterHeaders",
    "ErrorCategory",
    "ExecutionCommand",
    "ExecutionParameters",
    "ExecutionResult",
    "ExecutionType",
    "InvalidMessage",
    "Outcome",
    "PipelineParameters",
    "RegistryCredentials",
    "StatusEvent",
    "TaskState",
    "VolumeMount",
    "WorkerHeartbeat",
    "WorkflowDefinition",
    "WorkflowParameters",
    "WorkflowStep",
    "decode",
    "decode_command",
    "encode",
    "fingerprint",
    "parse_parameters",
    "peek",
    "result_message_id",
    "utcnow",
]
