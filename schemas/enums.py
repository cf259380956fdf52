"""Closed vocabularies of the wire contract."""

from __future__ import annotations

import enum


class ExecutionType(enum.StrEnum):
    CONTAINERIZED_WORKFLOW = "containerized_workflow"
    DAGGER_PIPELINE = "dagger_pipeline"


class ErrorCategory(enum.StrEnum):
    TRANSIENT = "transient"  # worth retrying: engine/registry unreachable, transport errors
    PERMANENT = "permanent"  # retrying cannot help: a step exited non-zero, unknown workflow
    INVALID = "invalid"  # the message itself is wrong: not JSON, wrong types, bad parameters
    TIMEOUT = "timeout"  # the execution ran past its deadline


class TaskState(enum.StrEnum):
    RECEIVED = "received"
    RUNNING = "running"
    HEARTBEAT = "heartbeat"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class Outcome(enum.StrEnum):
    """The last segment of a result's routing key."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
