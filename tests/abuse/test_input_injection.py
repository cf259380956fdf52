"""Workflow inputs are data: whatever an input holds, the script a step runs is the same text,
and the value reaches the step only as the variable ``INPUT_<NAME>`` (issue 8: "workflow
inputs become shell code when a step uses them inside $(...) or backticks").

The scripts the engine received are also run here with a real POSIX shell (``/bin/sh``), with
the environment the engine was given, to show that the shell reads each value as data. (The
test engine's own tiny shell substitutes variables as text before it parses, unlike any real
shell, so the engine is told to answer these execs rather than emulate them.)"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from consumer.execution.workflow import input_variable
from schemas import ErrorCategory
from tests.dagger_engine import ExecOutcome, TestEngine
from tests.test_adapter_support import adapter_config, started, workflow_command, write_workflow

# Where a workflow author may put a reference in a shell script: every quoting context.
SCRIPTS = {
    "bare": "echo {{ inputs.name }}",
    "double-quoted": 'echo "hello {{ inputs.name }}"',
    "single-quoted": "echo 'hello {{ inputs.name }}'",
    "command-substitution": 'echo "$(printf %s {{ inputs.name }})"',
    "quoted-in-substitution": "echo \"$(printf %s '{{ inputs.name }}')\"",
    "backticks": "echo `printf %s {{ inputs.name }}`",
    "here-document": "cat <<EOF\n{{ inputs.name }}\nEOF",
}

# What an attacker may give as the input.
PAYLOADS = [
    "x; touch {marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    "' ; touch {marker} ; '",
    '" ; touch {marker} ; "',
    "a\nb'\"$(touch {marker})`touch {marker}`\\",
]


def workflow_yaml(script: str) -> str:
    indented = "\n".join("      " + line for line in script.splitlines())
    return f"image: alpine\nsteps:\n  - name: greet\n    run: |\n{indented}\n"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("where", list(SCRIPTS))
async def test_an_input_is_never_shell_code_in_any_quoting_context(
    dagger_engine: TestEngine, tmp_path: Path, where: str
) -> None:
    write_workflow(tmp_path, "greet.yml", workflow_yaml(SCRIPTS[where]))
    marker = tmp_path / "pwned"
    dagger_engine.on_exec(["sh"], ExecOutcome())
    scripts = set()
    async with started(adapter_config(tmp_path)) as adapter:
        for index, payload in enumerate(PAYLOADS):
            value = payload.format(marker=marker)
            result = await adapter.execute(
                workflow_command(f"inj-{index}", workflow_definition="greet.yml", inputs={"name": value})
            )
            assert result.success, result.error
            record = dagger_engine.execs[-1]
            assert record.args[:2] == ["sh", "-c"]
            script = record.args[2]
            assert value not in script and "touch" not in script  # the value never enters the script
            assert record.env["INPUT_NAME"] == value
            scripts.add(script)

            # The real shell, with the engine's environment for the step: it prints the value
            # and runs nothing of it.
            shell = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                script,
                env={"PATH": "/usr/bin:/bin", **record.env},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await shell.communicate()
            ran = subprocess.CompletedProcess(script, shell.returncode or 0, out.decode(), err.decode())
            assert not marker.exists(), f"{where}: {payload!r} ran as code"
            assert ran.returncode == 0, ran.stderr
            if where in ("bare", "double-quoted", "single-quoted", "here-document"):
                assert value in ran.stdout  # printed as the text it is
    assert len(scripts) == 1  # the same script text, whatever the input held


async def test_inputs_reach_every_step_as_variables_and_exec_arguments_as_values(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    write_workflow(
        tmp_path,
        "args.yml",
        "image: alpine\nsteps:\n"
        "  - {name: a, run: [printf, '%s', '{{ inputs.file-name }}']}\n"
        "  - {name: b, run: [bash, -euc, 'wc -c < {{ inputs.file-name }}', ignored]}\n"
        "  - {name: c, run: [env, LC_ALL=C, busybox, sh, -c, 'ls {{ inputs.file-name }}']}\n",
    )
    value = "$(touch /tmp/x) `id` 'q\""
    dagger_engine.on_exec(["bash"], ExecOutcome())
    dagger_engine.on_exec(["env"], ExecOutcome())
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(workflow_command(workflow_definition="args", inputs={"file-name": value}))
    assert result.success, result.error
    by_step = {r.args[0]: r for r in dagger_engine.execs}
    assert by_step["printf"].args == ["printf", "%s", value]  # one argv element, no shell
    assert by_step["bash"].args == ["bash", "-euc", 'wc -c < "${INPUT_FILE_NAME}"', "ignored"]
    assert by_step["env"].args == ["env", "LC_ALL=C", "busybox", "sh", "-c", 'ls "${INPUT_FILE_NAME}"']
    assert all(r.env[input_variable("file-name")] == value for r in dagger_engine.execs)


@pytest.mark.parametrize(
    "run",
    [
        ["python", "-c", "print('{{ inputs.name }}')"],
        ["python3.12", "-c", "import os; os.system('echo {{ inputs.name }}')"],
        ["node", "-e", "console.log('{{ inputs.name }}')"],
        ["perl", "-e", "print '{{ inputs.name }}'"],
        ["awk", 'BEGIN { print "{{ inputs.name }}" }'],
        ["timeout", "60", "python3", "-c", "print('{{ inputs.name }}')"],
    ],
    ids=lambda run: run[0],
)
async def test_an_input_inside_an_interpreters_code_is_refused_before_anything_runs(
    dagger_engine: TestEngine, tmp_path: Path, run: list[str]
) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(
                workflow_definition={"image": "python:3.12-slim", "steps": [{"name": "s", "run": run}]},
                inputs={"name": "x"},
            )
        )
    assert not result.success and result.error_category is ErrorCategory.PERMANENT
    assert "$INPUT_NAME" in (result.error or "") and "read it from the environment" in (result.error or "")
    assert dagger_engine.execs == []


async def test_two_inputs_that_would_share_a_variable_are_refused(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(container_image="alpine", command=["true"], inputs={"a-b": "1", "a_b": "2"})
        )
    assert not result.success and "both become $INPUT_A_B" in (result.error or "")
    assert dagger_engine.execs == []
