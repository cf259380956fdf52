"""Bounds on what one command may ask of a worker, checked before anything runs.

Each limit has a name (the configuration field that sets it, ``max_*``) and a refusal names it,
so the sender learns which bound was hit and the operator which setting to raise. The order
matters: the size is checked before the bytes are looked at, the nesting depth before they are
decoded (msgspec decodes recursively; a deep enough document raises ``RecursionError``), and the
counts of the parameters before they are validated (validating a workflow's steps costs more
than counting them).
"""

from __future__ import annotations

from itertools import accumulate
from typing import Annotated, Any

import msgspec

from schemas.enums import ExecutionType
from schemas.errors import InvalidMessage

Bound = Annotated[int, msgspec.Meta(ge=1)]
# Capped: msgspec decodes recursively, and a few hundred levels already reach Python's limit.
JsonDepth = Annotated[int, msgspec.Meta(ge=4, le=200)]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The configurable limits, with their defaults (``DaggerAdapterConfig`` has the same fields)."""

    max_message_bytes: Bound = 1_048_576
    max_json_depth: JsonDepth = 32
    max_pipeline_operations: Bound = 1000
    max_workflow_steps: Bound = 100
    max_environment_entries: Bound = 256
    max_environment_bytes: Bound = 131_072
    max_secret_entries: Bound = 64
    max_secret_bytes: Bound = 65_536


DEFAULT_LIMITS = Limits()
LIMIT_FIELDS: tuple[str, ...] = Limits.__struct_fields__


class LimitExceeded(InvalidMessage):
    """A command over one of the ``Limits``; the message names the limit and its value."""

    def __init__(self, what: str, limit: str, value: int, *, task_id: str | None = None) -> None:
        super().__init__(f"{what}: over the limit {limit} = {value}", task_id=task_id)
        self.limit = limit


# --- before decoding --------------------------------------------------------------------------

_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether ``data`` nests arrays/objects deeper than ``limit``, found without recursion
    and without decoding: strings are cut out, the brackets that remain are summed up."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # the common case: too few brackets to nest that deep
    # Escaped backslashes, then escaped quotes, go first; then every other quote opens or
    # closes a string, so the even pieces between quotes are what lies outside strings.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def check_message(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Size and nesting depth of a message as it arrived; returns it as bytes."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > limits.max_message_bytes:
        raise LimitExceeded(f"the message is {len(raw)} bytes", "max_message_bytes", limits.max_message_bytes)
    if json_depth_exceeds(raw, limits.max_json_depth):
        raise LimitExceeded("the message nests too deep", "max_json_depth", limits.max_json_depth)
    return raw


# --- after decoding the envelope, before validating the parameters ----------------------------


def check_parameters(
    execution_type: ExecutionType, parameters: dict[str, Any], limits: Limits = DEFAULT_LIMITS
) -> None:
    """Counts and sizes of a command's parameters, read from the decoded (not yet validated)
    mapping: a value of the wrong type is left to the validation that follows."""
    if execution_type is ExecutionType.DAGGER_PIPELINE:
        pipeline = parameters.get("pipeline")
        if isinstance(pipeline, list) and len(pipeline) > limits.max_pipeline_operations:
            raise LimitExceeded(
                f"the pipeline has {len(pipeline)} operations",
                "max_pipeline_operations",
                limits.max_pipeline_operations,
            )
    environments: list[Any] = [parameters.get("environment"), parameters.get("inputs")]
    workflow = parameters.get("workflow_definition")
    if isinstance(workflow, dict):
        steps = workflow.get("steps")
        if isinstance(steps, list):
            if len(steps) > limits.max_workflow_steps:
                raise LimitExceeded(
                    f"the workflow has {len(steps)} steps", "max_workflow_steps", limits.max_workflow_steps
                )
            environments += [step.get("environment") for step in steps if isinstance(step, dict)]
        environments.append(workflow.get("environment"))
    entries, size = _measure(environments)
    if entries > limits.max_environment_entries:
        raise LimitExceeded(
            f"environment and inputs have {entries} entries", "max_environment_entries", limits.max_environment_entries
        )
    if size > limits.max_environment_bytes:
        raise LimitExceeded(
            f"environment and inputs are {size} bytes", "max_environment_bytes", limits.max_environment_bytes
        )
    entries, size = _measure([parameters.get("secrets")])
    if entries > limits.max_secret_entries:
        raise LimitExceeded(f"there are {entries} secrets", "max_secret_entries", limits.max_secret_entries)
    if size > limits.max_secret_bytes:
        raise LimitExceeded(f"the secrets are {size} bytes", "max_secret_bytes", limits.max_secret_bytes)


def _measure(mappings: list[Any]) -> tuple[int, int]:
    """Entries and UTF-8 bytes (names and values) of the string mappings among ``mappings``."""
    entries = size = 0
    for mapping in mappings:
        if not isinstance(mapping, dict):
            continue
        entries += len(mapping)
        for key, value in mapping.items():
            size += _utf8_len(key) + (_utf8_len(value) if isinstance(value, str) else 0)
    return entries, size


def _utf8_len(text: Any) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0
