"""Typed parameters of each execution type, validated at the edge.

On the wire ``ExecutionCommand.parameters`` is a plain mapping (the original design's shape);
``parse_parameters`` turns it into one of these Structs once, and the typed object is what
travels inward.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from schemas.enums import ExecutionType
from schemas.errors import InvalidMessage
from schemas.workflow import WorkflowDefinition

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
AbsolutePath = Annotated[str, msgspec.Meta(pattern=r"^/", description="An absolute path inside the container")]


class RegistryCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Credentials for a container registry: ``username`` + ``password``, or a ``token``.

    The repr never shows a secret, so a credential cannot leak through a log line or a traceback.
    """

    username: str | None = None
    password: str | None = None
    token: str | None = None
    address: str | None = None  # registry host; defaults to the configured container_registry

    def __post_init__(self) -> None:
        if self.token is None and self.password is None:
            raise ValueError("registry credentials need a `password` or a `token`")
        if self.password is not None and not self.username:
            raise ValueError("registry credentials with a `password` need a `username`")

    @property
    def secret(self) -> str:
        return self.token if self.token is not None else (self.password or "")

    def __repr__(self) -> str:
        return f"RegistryCredentials(address={self.address!r}, username={self.username!r}, secret='***')"

    __str__ = __repr__


class VolumeMount(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A host directory mounted into the container, read-only.

    ``source`` must resolve inside one of the worker's ``allowed_volume_roots``. With
    ``writable: true`` the mount is writable, ``source`` must lie under one of its
    ``allowed_output_roots`` instead, and after a successful run ``source`` is made to hold
    exactly the volume's final content (files deleted in the container are deleted).
    """

    source: NonEmptyStr
    target: AbsolutePath
    writable: bool = False


class CommonParameters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enable_retry: bool = True
    cache: bool = True  # per-command opt-out of the result cache
    environment: dict[str, str] = {}
    volumes: list[VolumeMount] = []
    registry_auth: RegistryCredentials | None = None
    secrets: dict[str, str] = {}  # name -> plaintext; exposed to steps as Dagger secrets

    def __repr__(self) -> str:
        # Secrets and credentials never reach a log line or a traceback through a repr.
        fields = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name == "secrets":
                value = {k: "***" for k in value}
            fields.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"


class WorkflowParameters(CommonParameters, kw_only=True, forbid_unknown_fields=True):
    """``containerized_workflow``: a workflow definition, or a single ``command``."""

    container_image: NonEmptyStr | None = None
    workflow_definition: NonEmptyStr | WorkflowDefinition | None = None
    command: list[str] | None = None
    inputs: dict[str, str] = {}

    def __post_init__(self) -> None:
        if self.workflow_definition is None and not self.command:
            raise ValueError("give a `workflow_definition` (file name or mapping) or a `command`")
        if self.workflow_definition is None and self.container_image is None:
            raise ValueError("a `command` without a workflow needs a `container_image`")


PipelineOperation = dict[str, dict[str, Any]]


class PipelineParameters(CommonParameters, kw_only=True, forbid_unknown_fields=True):
    """``dagger_pipeline``: a chain of Container operations, or a module function call."""

    pipeline: list[PipelineOperation] | None = None
    module: NonEmptyStr | None = None
    function: NonEmptyStr | None = None
    args: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if (self.pipeline is None) == (self.module is None):
            raise ValueError("give exactly one of `pipeline` or `module` + `function`")
        if self.module is not None and self.function is None:
            raise ValueError("`module` needs a `function` to call")
        if self.module is not None and (self.environment or self.volumes):
            # Nothing is silently dropped: a module function gets its inputs as `args` only.
            given = " and ".join(n for n in ("environment", "volumes") if getattr(self, n))
            raise ValueError(f"a module call takes no {given}: pass what the function needs as `args`")
        if self.pipeline is not None:
            if not self.pipeline:
                raise ValueError("`pipeline` must have at least one operation")
            for i, op in enumerate(self.pipeline):
                if len(op) != 1:
                    raise ValueError(
                        f"pipeline[{i}] must be a single-key mapping {{method: {{args}}}}, got {len(op)} keys"
                    )


ExecutionParameters = WorkflowParameters | PipelineParameters

PARAMETER_TYPES: dict[ExecutionType, type[WorkflowParameters] | type[PipelineParameters]] = {
    ExecutionType.CONTAINERIZED_WORKFLOW: WorkflowParameters,
    ExecutionType.DAGGER_PIPELINE: PipelineParameters,
}


def parse_parameters(execution_type: ExecutionType, parameters: dict[str, Any]) -> ExecutionParameters:
    """Validate a command's ``parameters`` for its execution type; raise ``InvalidMessage``."""
    try:
        return msgspec.convert(parameters, PARAMETER_TYPES[execution_type])
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"invalid parameters: {_at(exc, '$.parameters')}") from None


def _at(exc: msgspec.ValidationError, root: str) -> str:
    # msgspec reports paths from `$`; re-root them so the path names the field in the message.
    return str(exc).replace("`$", f"`{root}", 1) if "`$" in str(exc) else str(exc)
