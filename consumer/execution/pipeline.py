"""``dagger_pipeline``: a chain of Container operations given as data, or a module function call.

A chain is a list of single-key mappings ``{method: {keyword args}}`` applied in order from
``dag.container()``; ``from`` stands for the SDK's ``from_``. Only the methods in ``OPERATIONS``
are allowed (nothing that grants privileges, opens services or publishes). Arguments that the
SDK takes as objects are given as plain values and converted:

- a host directory or file (``source`` of ``with_mounted_directory``, ``with_directory``,
  ``with_file``, ``with_mounted_file``): a host path, checked by the path rules;
- a cache volume (``cache`` of ``with_mounted_cache``): the cache volume's name;
- a secret (``secret`` of ``with_secret_variable``, ``source`` of ``with_mounted_secret``): the
  name of one of the command's ``secrets``;
- enums (``expect``, ``sharing``): the value's name, e.g. ``"ANY"``.

Host directories mounted with ``with_mounted_directory`` are mounted read-only unless the
operation says ``read_only: false`` (nothing in the container reaches the host but an export).

The command's common parameters apply at the start of the chain, right after the first
``from``: ``environment`` as variables, ``secrets`` as secret variables (named as given), and
``volumes`` mounted (read-only inputs under the read roots; ``writable`` ones under an output
root, exported back, mirrored, after the chain). A module call refuses ``environment`` and
``volumes``.

Two extra operations export what the chain produced so far back to the host, under an output
root (``allowed_output_roots``): ``export_directory: {path, host_path}`` (the host directory
ends up holding exactly that directory, deletions included) and ``export_file: {path,
host_path}``. They run after the chain, in order. The result carries the last exec's
``exit_code``, ``stdout`` and ``stderr`` (tails).

A chain of N operations is built in O(N), off the event loop (``chain.ChainBuilder``).
"""

from __future__ import annotations

import enum
import functools
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagger

from consumer.errors import classify, permanent
from consumer.execution.chain import ChainBuilder
from consumer.execution.context import RunContext
from consumer.execution.exports import export_directory, export_file
from consumer.execution.volumes import Volume, plan_volumes
from consumer.paths import OutputPath, PathRules
from schemas import PipelineParameters


class Kind(enum.Enum):
    STR = "a string"
    INT = "an integer"
    BOOL = "a boolean"
    STR_LIST = "a list of strings"
    HOST_DIR = "a host directory path"
    HOST_FILE = "a host file path"
    CACHE = "a cache volume name"
    SECRET = "the name of one of the command's secrets"
    RETURN_TYPE = "one of SUCCESS, FAILURE, ANY"
    SHARING = "one of SHARED, PRIVATE, LOCKED"


S, INT, B, L = Kind.STR, Kind.INT, Kind.BOOL, Kind.STR_LIST

# operation -> (SDK Container method, {argument: kind}). Anything else is refused.
OPERATIONS: dict[str, tuple[str, dict[str, Kind]]] = {
    "from": ("from_", {"address": S}),
    "with_exec": (
        "with_exec",
        {
            "args": L,
            "use_entrypoint": B,
            "stdin": S,
            "redirect_stdin": S,
            "redirect_stdout": S,
            "redirect_stderr": S,
            "expect": Kind.RETURN_TYPE,
            "expand": B,
            "no_init": B,
        },
    ),
    "with_env_variable": ("with_env_variable", {"name": S, "value": S, "expand": B}),
    "without_env_variable": ("without_env_variable", {"name": S}),
    "with_workdir": ("with_workdir", {"path": S, "expand": B}),
    "with_user": ("with_user", {"name": S}),
    "with_entrypoint": ("with_entrypoint", {"args": L, "keep_default_args": B}),
    "without_entrypoint": ("without_entrypoint", {"keep_default_args": B}),
    "with_default_args": ("with_default_args", {"args": L}),
    "with_label": ("with_label", {"name": S, "value": S}),
    "with_new_file": ("with_new_file", {"path": S, "contents": S, "permissions": INT, "owner": S}),
    "with_mounted_directory": (
        "with_mounted_directory",
        {"path": S, "source": Kind.HOST_DIR, "owner": S, "read_only": B},
    ),
    "with_directory": (
        "with_directory",
        {"path": S, "source": Kind.HOST_DIR, "exclude": L, "include": L, "owner": S},
    ),
    "with_file": ("with_file", {"path": S, "source": Kind.HOST_FILE, "permissions": INT, "owner": S}),
    "with_mounted_file": ("with_mounted_file", {"path": S, "source": Kind.HOST_FILE, "owner": S}),
    "with_mounted_cache": (
        "with_mounted_cache",
        {"path": S, "cache": Kind.CACHE, "sharing": Kind.SHARING, "owner": S},
    ),
    "with_secret_variable": ("with_secret_variable", {"name": S, "secret": Kind.SECRET}),
    "with_mounted_secret": ("with_mounted_secret", {"path": S, "source": Kind.SECRET, "owner": S, "mode": INT}),
}
EXPORTS = {"export_directory": {"path": S, "host_path": S}, "export_file": {"path": S, "host_path": S}}


@dataclass(slots=True)
class Operation:
    name: str
    method: str
    args: dict[str, Any]  # kind-converted later, at run time (objects need the session)
    kinds: dict[str, Kind]


@dataclass(slots=True)
class Export:
    after: int  # number of chain operations applied before this export
    kind: str  # "export_directory" | "export_file"
    path: str
    host_path: OutputPath


@dataclass(slots=True)
class PipelinePlan:
    operations: list[Operation] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    module: str | None = None
    function: str | None = None
    function_args: dict[str, Any] = field(default_factory=dict)
    host_inputs: list[Path] = field(default_factory=list)
    workflow_source: bytes | None = None
    environment: dict[str, str] = field(default_factory=dict)
    secret_variables: list[str] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)

    @property
    def writes_host(self) -> bool:
        return bool(self.exports) or any(v.output is not None for v in self.volumes)

    async def run(self, ctx: RunContext, result: dict[str, Any]) -> None:
        if self.module is not None:
            await _call_function(self, ctx, result)
        else:
            await _run_chain(self, ctx, result)


def plan_pipeline(params: PipelineParameters, rules: PathRules) -> PipelinePlan:
    if params.module is not None:
        assert params.function is not None
        for key, value in params.args.items():
            _check_function_arg(key, value)
        return PipelinePlan(module=params.module, function=params.function, function_args=dict(params.args))

    volumes = plan_volumes(params.volumes, rules)
    if len({v.target for v in volumes}) != len(volumes):
        raise permanent("two volumes are mounted at the same target path")
    plan = PipelinePlan(
        environment=dict(params.environment),
        secret_variables=sorted(params.secrets),
        volumes=volumes,
        host_inputs=[v.source for v in volumes if v.source is not None],
    )
    assert params.pipeline is not None
    for index, op in enumerate(params.pipeline):
        ((name, args),) = op.items()
        where = f"pipeline[{index}] {name}"
        if not isinstance(args, dict):
            raise permanent(f"{where}: arguments must be a mapping of keyword arguments")
        if name in EXPORTS:
            _check_args(where, args, EXPORTS[name], required=("path", "host_path"))
            if not plan.operations:
                raise permanent(f"{where}: nothing to export before the first `from`")
            target = rules.output_path(
                args["host_path"], what=f"{where} host_path", directory=name == "export_directory"
            )
            plan.exports.append(Export(after=len(plan.operations), kind=name, path=args["path"], host_path=target))
            continue
        if name not in OPERATIONS:
            allowed = ", ".join(sorted([*OPERATIONS, *EXPORTS]))
            raise permanent(f"{where}: operation not allowed (allowed: {allowed})")
        method, kinds = OPERATIONS[name]
        _check_args(where, args, kinds, required=_required(method))
        converted = dict(args)
        for key, kind in kinds.items():
            if key not in args:
                continue
            if kind is Kind.HOST_DIR:
                converted[key] = str(rules.host_directory(args[key], what=f"{where} {key}"))
                plan.host_inputs.append(Path(converted[key]))
            elif kind is Kind.HOST_FILE:
                converted[key] = str(rules.host_file(args[key], what=f"{where} {key}"))
                plan.host_inputs.append(Path(converted[key]))
            elif kind is Kind.SECRET and args[key] not in params.secrets:
                known = ", ".join(sorted(params.secrets)) or "none"
                raise permanent(f"{where}: unknown secret {args[key]!r} (secrets given: {known})")
        plan.operations.append(Operation(name=name, method=method, args=converted, kinds=kinds))
    if not plan.operations or plan.operations[0].name != "from":
        raise permanent("pipeline must start with a `from` operation (the image to run in)")
    return plan


@functools.cache  # the SDK's signatures do not change; inspecting one costs more than the rest of planning
def _required(method: str) -> tuple[str, ...]:
    signature = inspect.signature(getattr(dagger.Container, method))
    return tuple(
        p.name
        for p in signature.parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.kind is not p.KEYWORD_ONLY
    )


def _check_args(where: str, args: dict[str, Any], kinds: dict[str, Kind], *, required: tuple[str, ...]) -> None:
    unknown = sorted(set(args) - set(kinds))
    if unknown:
        raise permanent(f"{where}: unknown argument(s) {', '.join(unknown)} (allowed: {', '.join(kinds)})")
    missing = [r for r in required if r not in args]
    if missing:
        raise permanent(f"{where}: missing argument(s) {', '.join(missing)}")
    for key, value in args.items():
        if not _has_kind(value, kinds[key]):
            raise permanent(f"{where}: argument {key!r} must be {kinds[key].value}")


def _has_kind(value: Any, kind: Kind) -> bool:
    if kind is Kind.BOOL:
        return isinstance(value, bool)
    if kind is Kind.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is Kind.STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is Kind.RETURN_TYPE:
        return value in dagger.ReturnType.__members__
    if kind is Kind.SHARING:
        return value in dagger.CacheSharingMode.__members__
    return isinstance(value, str) and (kind is Kind.STR or bool(value))


def _check_function_arg(key: str, value: Any) -> None:
    ok = value is None or isinstance(value, bool | int | float | str)
    if isinstance(value, list):
        ok = all(v is None or isinstance(v, bool | int | float | str) for v in value)
    if not ok:
        raise permanent(f"module function argument {key!r}: only strings, numbers, booleans and lists of them")


def _sdk_args(op: Operation, ctx: RunContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in op.args.items():
        kind = op.kinds[key]
        if kind is Kind.HOST_DIR:
            out[key] = ctx.host_directory(value)
        elif kind is Kind.HOST_FILE:
            out[key] = ctx.client.host().file(value)
        elif kind is Kind.CACHE:
            out[key] = ctx.client.cache_volume(value)
        elif kind is Kind.SECRET:
            out[key] = ctx.secret(value)
        elif kind is Kind.RETURN_TYPE:
            out[key] = dagger.ReturnType[value]
        elif kind is Kind.SHARING:
            out[key] = dagger.CacheSharingMode[value]
        else:
            out[key] = value
    if op.method == "with_mounted_directory":
        out.setdefault("read_only", True)  # a host input: read-only unless the operation says otherwise
    return out


def _setup(plan: PipelinePlan, ctx: RunContext, chain: ChainBuilder) -> None:
    """The command's environment, secrets and volumes, applied right after the first ``from``."""
    for name, value in plan.environment.items():
        chain.add("with_env_variable", name=name, value=value)
    for name in plan.secret_variables:
        chain.add("with_secret_variable", name=name, secret=ctx.secret(name))
    for volume in plan.volumes:
        assert volume.source is not None
        source = ctx.host_directory(str(volume.source))
        chain.add("with_mounted_directory", path=volume.target, source=source, read_only=volume.read_only)


async def _run_chain(plan: PipelinePlan, ctx: RunContext, result: dict[str, Any]) -> None:
    step = "pipeline"
    ctx.progress(step, "started", f"{len(plan.operations)} operations")
    started = time.monotonic()
    try:
        chain = ChainBuilder(ctx.container(plan.operations[0].args["address"]))
        exports_after = {e.after for e in plan.exports}
        at: dict[int, dagger.Container] = {}  # the container after operation i, where an export needs it
        _setup(plan, ctx, chain)
        for count, op in enumerate(plan.operations, start=1):
            if count > 1:  # the first is the `from` the chain started with
                chain.add(op.method, **_sdk_args(op, ctx))
            await chain.step()
            if count in exports_after:
                at[count] = await chain.synced()  # by ID: exporting it later evaluates nothing again
        if any(op.name == "with_exec" for op in plan.operations):
            output = await ctx.session.exec_output(await chain.applied())
            ctr = output.container
            result["exit_code"] = output.exit_code
            result["stdout"] = ctx.redact.tail(output.stdout)
            result["stderr"] = ctx.redact.tail(output.stderr)
        else:
            ctr = await chain.synced()
        exported = []
        for export in plan.exports:
            source = at[export.after]
            if export.kind == "export_directory":
                await export_directory(source.directory(export.path), export.host_path)
            else:
                await export_file(source.file(export.path), export.host_path)
            exported.append(str(export.host_path))
        for volume in plan.volumes:
            if volume.output is not None:
                await export_directory(ctr.directory(volume.target), volume.output)
                exported.append(str(volume.output))
        if exported:
            result["exported"] = exported
    except Exception as exc:
        ctx.progress(step, "failed", classify(exc).message)
        raise
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    ctx.progress(step, "succeeded", f"exit code {result.get('exit_code', 0)}")


async def _call_function(plan: PipelinePlan, ctx: RunContext, result: dict[str, Any]) -> None:
    assert plan.module is not None and plan.function is not None
    step = plan.function
    result.update(module=plan.module, function=plan.function)
    ctx.progress(step, "started", plan.module)
    try:
        value = await ctx.session.call_function(plan.module, plan.function, plan.function_args)
    except Exception as exc:
        ctx.progress(step, "failed", classify(exc).message)
        raise
    result["value"] = ctx.redact.scrub(value)
    ctx.progress(step, "succeeded", None)
