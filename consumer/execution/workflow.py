"""``containerized_workflow``: named steps, each a command in a container.

Planning (no engine involved) loads the workflow, resolves volumes under the path rules,
picks each step's image and substitutes inputs; any problem there is a permanent failure
before anything runs. Running goes wave by wave (``WorkflowDefinition.execution_order()``);
the steps of a wave run concurrently.

Inputs are data, never code. Every step gets each of the command's inputs as an
environment variable ``INPUT_<NAME>`` (upper case, ``.`` and ``-`` as ``_``).
``{{ inputs.NAME }}`` (spaces optional) may appear in a step's ``run``, ``environment``
values, ``workdir`` and ``outputs`` paths:

- in a shell script (the shell form, ``run`` as a string run with ``sh -c``, or the script
  argument of ``[sh|bash|..., -c, SCRIPT]``) it becomes a *reference* to that variable
  (``"${INPUT_NAME}"``, quoted for where it stands), never the value's text: the shell reads
  the value as data whatever it contains, even inside ``$(...)`` or backticks;
- in an exec-form argument, environment value, workdir or output path it is replaced by the
  value (an argument reaches the program as one argv element, no shell in between);
- inside the code argument of an interpreter (``python -c``, ``node -e``, ``perl -e``...) it
  is refused: such code reads ``INPUT_NAME`` from its environment instead.

A reference to an input the command does not give fails the task, naming it. Other
``{{ ... }}`` text (Go templates, for instance) is left alone, and so is shell syntax like
``${HOME}``.

Volumes: every step sees each volume as its dependencies left it (Dagger directories are
immutable snapshots, so a step's writes flow to the steps that depend on it, not to steps
running beside it). A step with several dependencies sees their trees layered in
``depends_on`` order (a later dependency wins on a path both wrote). After the workflow
succeeds, ``writable`` volumes are exported back to their host directory.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagger
import msgspec
import yaml

from consumer.errors import TAIL_CHARS, ExecutionFailure, classify, permanent
from consumer.execution.chain import ChainBuilder
from consumer.execution.context import RunContext
from consumer.execution.exports import export_directory
from consumer.execution.volumes import Volume, plan_volumes
from consumer.paths import PathRules
from schemas import WorkflowDefinition, WorkflowParameters, WorkflowStep

INPUT_REFERENCE = re.compile(r"\{\{\s*inputs\.([A-Za-z0-9_.-]*?)\s*\}\}")
INPUT_VARIABLE_PREFIX = "INPUT_"
SHELLS = frozenset({"sh", "bash", "ash", "dash", "zsh", "ksh", "mksh"})
# Interpreters and the options whose argument is code: inputs never go into code as text.
CODE_OPTIONS: dict[str, frozenset[str]] = {
    "python": frozenset({"-c"}),
    "node": frozenset({"-e", "--eval", "-p", "--print"}),
    "deno": frozenset({"eval"}),
    "perl": frozenset({"-e", "-E"}),
    "ruby": frozenset({"-e"}),
    "php": frozenset({"-r"}),
    "lua": frozenset({"-e"}),
    "Rscript": frozenset({"-e"}),
    "pwsh": frozenset({"-c", "-Command", "-command"}),
    "awk": frozenset(),  # awk's program is its first non-option argument, handled below
}
MAX_OUTPUT_BYTES = 1 << 20  # a declared output travels inside the result message
SINGLE_COMMAND_STEP = "command"


@dataclass(slots=True)
class PlannedStep:
    name: str
    image: str
    args: list[str]
    environment: dict[str, str]
    workdir: str | None
    outputs: dict[str, str]
    depends_on: list[str]
    allow_failure: bool


@dataclass(slots=True)
class WorkflowPlan:
    name: str
    steps: dict[str, PlannedStep]
    waves: list[list[str]]
    volumes: list[Volume]
    workflow_source: bytes | None = None  # the workflow file's content, for the cache key
    host_inputs: list[Path] = field(default_factory=list)

    @property
    def writes_host(self) -> bool:
        return any(v.output is not None for v in self.volumes)

    async def run(self, ctx: RunContext, result: dict[str, Any]) -> None:
        await run_workflow(self, ctx, result)


def load_workflow(name: str, rules: PathRules) -> tuple[WorkflowDefinition, bytes]:
    path = rules.workflow_file(name)
    source = path.read_bytes()
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise permanent(f"workflow {name!r} is not valid YAML: {exc}") from None
    try:
        return msgspec.convert(_scalars_as_text(data), WorkflowDefinition), source
    except (msgspec.ValidationError, ValueError) as exc:
        raise permanent(f"workflow {name!r} is not a valid workflow: {exc}") from None


def _scalars_as_text(data: Any) -> Any:
    """YAML reads ``[sleep, 5]`` and ``DEBUG: true`` as numbers and booleans; commands and
    environment values are text, so such scalars become the text they were written as."""
    if not isinstance(data, dict):
        return data

    def text(value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value) if isinstance(value, int | float) else value

    def env(mapping: Any) -> Any:
        return {k: text(v) for k, v in mapping.items()} if isinstance(mapping, dict) else mapping

    out = dict(data)
    if "environment" in out:
        out["environment"] = env(out["environment"])
    if isinstance(out.get("steps"), list):
        steps = []
        for step in out["steps"]:
            if isinstance(step, dict):
                step = dict(step)
                if isinstance(step.get("run"), list):
                    step["run"] = [text(a) for a in step["run"]]
                if "environment" in step:
                    step["environment"] = env(step["environment"])
            steps.append(step)
        out["steps"] = steps
    return out


def plan_workflow(params: WorkflowParameters, rules: PathRules) -> WorkflowPlan:
    source: bytes | None = None
    if isinstance(params.workflow_definition, str):
        definition, source = load_workflow(params.workflow_definition, rules)
        name = definition.name or params.workflow_definition
    elif params.workflow_definition is not None:
        definition = params.workflow_definition
        name = definition.name or "inline"
    else:
        assert params.command
        definition = WorkflowDefinition(steps=[WorkflowStep(name=SINGLE_COMMAND_STEP, run=list(params.command))])
        name = SINGLE_COMMAND_STEP

    volumes = plan_volumes(params.volumes, rules)
    if definition.workspace is not None:
        volumes.append(Volume(source=None, target=definition.workspace, writable=False))
    targets = [v.target for v in volumes]
    if len(set(targets)) != len(targets):
        raise permanent("two volumes (or a volume and the workspace) are mounted at the same target path")
    variables = input_variables(params.inputs)

    steps: dict[str, PlannedStep] = {}
    for step in definition.steps:
        image = step.image or params.container_image or definition.image
        if not image:
            raise permanent(f"step {step.name!r} has no image: set `image` in the workflow or `container_image`")
        where = f"step {step.name!r}"
        # Precedence: workflow < step < command (the caller's per-run override wins).
        env = {**definition.environment, **step.environment}
        env = {k: substitute(v, params.inputs, f"{where} environment {k}") for k, v in env.items()}
        env.update(params.environment)
        env.update(variables)  # last: `{{ inputs.NAME }}` in a script refers to exactly these
        if isinstance(step.run, str):
            args = ["sh", "-c", substitute(step.run, params.inputs, where, shell=True)]
        else:
            args = exec_arguments(step.run, params.inputs, where)
        workdir = step.workdir or definition.workdir
        steps[step.name] = PlannedStep(
            name=step.name,
            image=image,
            args=args,
            environment=env,
            workdir=substitute(workdir, params.inputs, f"{where} workdir") if workdir else None,
            outputs={k: substitute(p, params.inputs, f"{where} output {k}") for k, p in step.outputs.items()},
            depends_on=list(step.depends_on),
            allow_failure=step.allow_failure,
        )
    waves = [[s.name for s in wave] for wave in definition.execution_order()]
    return WorkflowPlan(
        name=name,
        steps=steps,
        waves=waves,
        volumes=volumes,
        workflow_source=source,
        host_inputs=[v.source for v in volumes if v.source is not None],
    )


def input_variable(name: str) -> str:
    """The environment variable that carries input ``name`` into every step."""
    return INPUT_VARIABLE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


def input_variables(inputs: dict[str, str]) -> dict[str, str]:
    variables: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name, value in inputs.items():
        variable = input_variable(name)
        if variable in owner:
            raise permanent(f"inputs {owner[variable]!r} and {name!r} both become ${variable}; rename one")
        owner[variable] = name
        variables[variable] = value
    return variables


def substitute(text: str, inputs: dict[str, str], where: str, *, shell: bool = False) -> str:
    """Resolve ``{{ inputs.NAME }}``: in a shell script to a reference to ``$INPUT_NAME``
    (the value itself never enters the script), elsewhere to the value. An unknown NAME is a
    permanent failure naming it."""
    unknown = sorted({m for m in INPUT_REFERENCE.findall(text) if m not in inputs})
    if unknown:
        known = ", ".join(sorted(inputs)) or "none"
        raise permanent(f"{where} refers to unknown input(s) {', '.join(unknown)} (inputs given: {known})")
    if shell:
        return _shell_references(text)
    return INPUT_REFERENCE.sub(lambda m: inputs[m.group(1)], text)


def exec_arguments(run: list[str], inputs: dict[str, str], where: str) -> list[str]:
    """The exec form: a shell's script argument is a script (references, see ``substitute``);
    an interpreter's code argument may not use ``{{ inputs }}`` at all; every other argument
    gets the value (one argv element, no shell). A shell or interpreter is recognised wherever
    it stands in the arguments (``env sh -c``, ``timeout 10 python -c``...): reading too much
    as code only costs a literal reference, reading too little would run input as code."""
    code = _code_arguments(run)
    args = []
    for index, arg in enumerate(run):
        program = code.get(index)
        if program is not None and INPUT_REFERENCE.search(arg):
            if program in SHELLS:
                args.append(substitute(arg, inputs, where, shell=True))
                continue
            names = sorted(set(INPUT_REFERENCE.findall(arg)))
            variables = ", ".join(f"${input_variable(n)}" for n in names)
            raise permanent(
                f"{where}: {{{{ inputs }}}} inside the code of `{program}` would make input text into code; "
                f"read it from the environment instead ({variables})"
            )
        args.append(substitute(arg, inputs, where))
    return args


def _code_arguments(run: list[str]) -> dict[int, str]:
    """Index -> program, for each argument that a shell or an interpreter in ``run`` runs as
    code. Linear in ``len(run)``: a shell's options end at its first other argument (every
    program word is one), an interpreter's code option is looked for among the next few."""
    found: dict[int, str] = {}
    for start, word in enumerate(run):
        program = word.rsplit("/", 1)[-1]
        index = _code_argument(program, run, start + 1)
        if index is not None:
            found.setdefault(index, program)
    return found


INTERPRETER_LOOKAHEAD = 8  # arguments after an interpreter searched for its code option


def _code_argument(program: str, run: list[str], first: int) -> int | None:
    """The index of the argument that ``program`` (whose arguments start at ``first``) runs as code."""
    family = program.rstrip("0123456789.")  # python3.12 -> python
    if program in SHELLS:
        takes_script = False
        i = first
        while i < len(run):
            arg = run[i]
            if arg in ("-o", "+o"):
                i += 2
                continue
            if arg.startswith(("-", "+")) and arg not in ("-", "--"):
                takes_script = takes_script or ("c" in arg[1:] and not arg.startswith("--"))
                i += 1
                continue
            return i if takes_script else None
        return None
    if family == "awk" or program in ("gawk", "mawk", "nawk"):
        i = first
        while i < len(run) and i < first + INTERPRETER_LOOKAHEAD and run[i].startswith("-"):
            i += 2 if run[i] in ("-f", "-v", "-F") else 1
        return i if i < len(run) else None
    options = CODE_OPTIONS.get(family)
    if not options:
        return None
    for i in range(first, min(len(run) - 1, first + INTERPRETER_LOOKAHEAD)):
        if run[i] in options:
            return i + 1
    return None


def _shell_references(script: str) -> str:
    """Each ``{{ inputs.NAME }}`` becomes a reference to ``$INPUT_NAME``, quoted for where it
    stands: bare -> ``"${INPUT_NAME}"``; inside "..." -> ``${INPUT_NAME}``; inside '...' ->
    ``'"${INPUT_NAME}"'``. The inserted text depends only on the input's *name*, so whatever
    the value holds, and even where this scan misjudges the shell's quoting (``$(...)``,
    backticks, here-documents), the shell meets the value only as the result of a parameter
    expansion, which it never parses as code. (A misjudged context costs exactness, never
    safety: inside ``$(...)`` within double quotes the expansion is unquoted and so split
    into words; in a here-document the inserted quotes are printed.)"""
    out: list[str] = []
    quote: str | None = None  # None, "'" or '"'
    i = 0
    while i < len(script):
        match = INPUT_REFERENCE.match(script, i)
        if match:
            variable = "${" + input_variable(match.group(1)) + "}"
            if quote is None:
                out.append(f'"{variable}"')
            elif quote == '"':
                out.append(variable)
            else:
                out.append(f"'\"{variable}\"'")
            i = match.end()
            continue
        char = script[i]
        out.append(char)
        if char == "\\" and quote != "'" and i + 1 < len(script):
            out.append(script[i + 1])  # an escaped character never opens or closes a quote
            i += 2
            continue
        if quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
        i += 1
    return "".join(out)


async def run_workflow(plan: WorkflowPlan, ctx: RunContext, result: dict[str, Any]) -> None:
    """Run the plan, filling ``result`` as steps finish (it is the partial result on failure)."""
    result["workflow"] = plan.name
    steps_out: dict[str, dict[str, Any]] = result.setdefault("steps", {})
    for wave in plan.waves:
        for name in wave:
            steps_out[name] = {"status": "pending", "image": plan.steps[name].image}
    outputs: dict[str, dict[str, str]] = result.setdefault("outputs", {})

    initial = [ctx.client.directory() if v.source is None else ctx.host_directory(str(v.source)) for v in plan.volumes]
    states: dict[str, list[dagger.Directory]] = {}  # step -> each volume as the step left it

    for index, wave in enumerate(plan.waves):
        async with asyncio.TaskGroup() as group:
            for name in wave:
                step = plan.steps[name]
                mounts = _volumes_for(step, plan, states, initial)
                group.create_task(_run_step(step, plan, mounts, ctx, steps_out[name], states, outputs))
        failed = [n for n in wave if steps_out[n]["status"] == "failed" and not plan.steps[n].allow_failure]
        if failed:
            for later in plan.waves[index + 1 :]:
                for n in later:
                    steps_out[n]["status"] = "skipped"
            first = steps_out[failed[0]]
            message = first.get("error") or f"step {failed[0]!r} exited with code {first.get('exit_code')}"
            raise permanent(ctx.redact(message))

    exported = []
    for i, volume in enumerate(plan.volumes):
        if volume.output is not None:
            final = _layered([states[s][i] for s in _sinks(plan)])
            # Mirrored: the host directory ends up as the steps left the volume, deletions included.
            await export_directory(final, volume.output)
            exported.append(str(volume.output))
    if exported:
        result["exported"] = exported


def _volumes_for(
    step: PlannedStep, plan: WorkflowPlan, states: dict[str, list[dagger.Directory]], initial: list[dagger.Directory]
) -> list[dagger.Directory]:
    if not step.depends_on:
        return list(initial)
    return [_layered([states[d][i] for d in step.depends_on]) for i in range(len(plan.volumes))]


def _layered(trees: list[dagger.Directory]) -> dagger.Directory:
    merged = trees[0]
    for tree in trees[1:]:
        merged = merged.with_directory(".", tree)
    return merged


def _sinks(plan: WorkflowPlan) -> list[str]:
    needed = {d for s in plan.steps.values() for d in s.depends_on}
    return [name for wave in plan.waves for name in wave if name not in needed]


async def _run_step(
    step: PlannedStep,
    plan: WorkflowPlan,
    mounts: list[dagger.Directory],
    ctx: RunContext,
    out: dict[str, Any],
    states: dict[str, list[dagger.Directory]],
    outputs: dict[str, dict[str, str]],
) -> None:
    chain = ChainBuilder(ctx.container(step.image))
    for key, value in step.environment.items():
        chain.add("with_env_variable", name=key, value=value)
    for name in sorted(ctx.secrets):
        chain.add("with_secret_variable", name=name, secret=ctx.secret(name))
    for volume, directory in zip(plan.volumes, mounts, strict=True):
        # The engine is told: a host input is mounted read-only; only writable volumes and
        # the workspace can be written (and what is written flows to dependent steps).
        chain.add("with_mounted_directory", path=volume.target, source=directory, read_only=volume.read_only)
    if step.workdir:
        chain.add("with_workdir", path=step.workdir)
    chain.add("with_exec", args=step.args, expect=dagger.ReturnType.ANY)

    out["status"] = "running"
    ctx.progress(step.name, "started", None)
    started = time.monotonic()
    try:
        output = await ctx.session.exec_output(await chain.applied())
        ctr, exit_code, stdout, stderr = output.container, output.exit_code, output.stdout, output.stderr
    except Exception as exc:
        out["status"] = "failed"
        out["duration_ms"] = _ms_since(started)
        ctx.progress(step.name, "failed", classify(exc).message)
        raise
    out.update(
        exit_code=exit_code,
        stdout=ctx.redact.tail(stdout),
        stderr=ctx.redact.tail(stderr),
        duration_ms=_ms_since(started),
    )
    if len(stdout) > TAIL_CHARS or len(stderr) > TAIL_CHARS:
        out["truncated"] = True
    states[step.name] = [ctr.directory(v.target) for v in plan.volumes]

    if exit_code != 0:
        out["status"] = "failed"
        if step.allow_failure:
            out["allowed_failure"] = True
        detail = f"exited with code {exit_code}"
        if stderr.strip():
            detail += f": {ctx.redact.tail(stderr.strip(), 500)}"
        out["error"] = ctx.redact(f"step {step.name!r} {detail}")
        ctx.progress(step.name, "failed", detail)
        return

    try:
        step_outputs = {name: await _read_output(ctr, step, name, path) for name, path in step.outputs.items()}
    except ExecutionFailure as failure:
        out["status"] = "failed"
        out["error"] = ctx.redact(failure.message)
        ctx.progress(step.name, "failed", failure.message)
        return
    if step_outputs:
        outputs[step.name] = {k: ctx.redact(v) for k, v in step_outputs.items()}
    out["status"] = "succeeded"
    ctx.progress(step.name, "succeeded", f"exit code 0 in {out['duration_ms']} ms")


async def _read_output(ctr: dagger.Container, step: PlannedStep, name: str, path: str) -> str:
    file = ctr.file(path)
    try:
        size = await file.size()
        if size > MAX_OUTPUT_BYTES:
            raise permanent(
                f"step {step.name!r} output {name!r} ({path}) is {size} bytes, more than the "
                f"{MAX_OUTPUT_BYTES} a result can carry; write it to a writable volume instead"
            )
        return await file.contents()
    except dagger.QueryError as exc:
        raise permanent(f"step {step.name!r} did not produce its output {name!r} at {path}: {exc}") from None


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
