"""``containerized_workflow`` end to end: the real SDK against the test engine, asserting what
the engine was asked to run (images, commands, env, mounts, secrets) and what came back."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from schemas import ErrorCategory
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.test_adapter_support import adapter_config, started, workflow_command, write_workflow

PIPELINE_YML = """
name: build
image: alpine:3.20
environment: {STAGE: workflow, LEVEL: workflow}
steps:
  - name: fetch
    run: [echo, "fetching {{ inputs.ref }}"]
  - name: lint
    depends_on: [fetch]
    run: [echo, lint]
  - name: test
    depends_on: [fetch]
    image: python:3.12-slim
    environment: {LEVEL: step}
    run: [echo, test]
  - name: package
    depends_on: [lint, test]
    workdir: /src
    run: tar czf "{{ inputs.ref }}.tgz" .
"""


async def test_single_command_runs_in_the_image_with_env(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(container_image="alpine:3.20", command=["echo", "hi"], environment={"A": "1"})
        )
    assert result.success, result.error
    assert result.execution_type == "containerized_workflow" and result.attempts == 1 and not result.cached
    step = result.result["steps"]["command"]
    assert step["status"] == "succeeded" and step["exit_code"] == 0 and step["stdout"] == "hi\n"
    assert step["duration_ms"] >= 0
    (record,) = dagger_engine.execs
    assert (record.image, record.args, record.env) == ("alpine:3.20", ["echo", "hi"], {"A": "1"})


async def test_steps_run_in_dependency_order_with_images_env_and_inputs(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    write_workflow(tmp_path, "build.yml", PIPELINE_YML)
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(workflow_definition="build.yml", inputs={"ref": "v1 final"}, environment={"CI": "1"})
        )
    assert result.success, result.error
    by_step = {tuple(r.args[:2]): r for r in dagger_engine.execs}
    fetch = by_step[("echo", "fetching v1 final")]
    lint, test = by_step[("echo", "lint")], by_step[("echo", "test")]
    package = next(r for r in dagger_engine.execs if r.args[0] == "sh")
    # exec form: the input is substituted into the argument as is; shell form: a reference to
    # the input's variable (the value never enters the script), which every step gets
    assert package.args == ["sh", "-c", 'tar czf "${INPUT_REF}.tgz" .']
    assert all(r.env["INPUT_REF"] == "v1 final" for r in dagger_engine.execs)
    assert package.workdir == "/src"
    # images: the workflow's, overridden per step
    assert (fetch.image, test.image, package.image) == ("alpine:3.20", "python:3.12-slim", "alpine:3.20")
    # env: workflow < step < command
    assert test.env == {"STAGE": "workflow", "LEVEL": "step", "CI": "1", "INPUT_REF": "v1 final"}
    assert lint.env == {"STAGE": "workflow", "LEVEL": "workflow", "CI": "1", "INPUT_REF": "v1 final"}
    # order: a step starts after every step it depends on has finished
    assert lint.started_at >= fetch.finished_at and test.started_at >= fetch.finished_at
    assert package.started_at >= max(lint.finished_at, test.finished_at)
    assert list(result.result["steps"]) == ["fetch", "lint", "test", "package"]
    assert {s["status"] for s in result.result["steps"].values()} == {"succeeded"}


async def test_independent_steps_run_concurrently(dagger_engine: TestEngine, tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        "fan.yml",
        "image: alpine\nsteps:\n  - {name: a, run: [work, a]}\n  - {name: b, run: [work, b]}\n"
        "  - {name: join, depends_on: [a, b], run: [echo, joined]}\n",
    )

    started_steps: set[str] = set()

    def both_running(record: ExecRecord) -> ExecOutcome:
        # Each of a and b only finishes once the other has started: proof they overlap.
        started_steps.add(record.args[1])
        dagger_engine.wait_until(lambda: started_steps == {"a", "b"}, timeout=10)
        return ExecOutcome(stdout=f"{record.args[1]} done\n")

    dagger_engine.on_exec(["work"], both_running)
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(workflow_command(workflow_definition="fan"))
    assert result.success, result.error
    assert dagger_engine.max_concurrent_execs == 2
    assert result.result["steps"]["a"]["stdout"] == "a done\n"


async def test_volumes_are_mounted_writes_flow_to_dependents_and_writable_ones_are_exported(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    data = tmp_path / "data" / "in"
    data.mkdir(parents=True)
    (data / "input.txt").write_text("raw\n")
    write_workflow(
        tmp_path,
        "flow.yml",
        """
image: alpine
steps:
  - name: produce
    run: [produce]
  - name: consume
    depends_on: [produce]
    run: [cat, /work/made.txt, /work/input.txt]
    outputs: {made: /work/made.txt}
""",
    )
    dagger_engine.on_exec(["produce"], ExecOutcome(files={"/work/made.txt": "made by produce\n"}))
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(
                workflow_definition="flow.yml",
                volumes=[{"source": str(data), "target": "/work", "writable": True}],
            )
        )
    assert result.success, result.error
    produce, consume = dagger_engine.execs
    assert produce.mounts == {"/work": ("host", str(data.resolve()))}
    assert set(consume.mounts) == {"/work"}  # the directory as produce left it
    assert result.result["steps"]["consume"]["stdout"] == "made by produce\nraw\n"
    assert result.result["outputs"] == {"consume": {"made": "made by produce\n"}}
    assert result.result["exported"] == [str(data.resolve())]
    ((_staging, files),) = dagger_engine.exports  # the engine writes to a private staging directory
    assert files == {"input.txt": "raw\n", "made.txt": "made by produce\n"}
    assert {p.name: p.read_text() for p in data.iterdir()} == files  # installed where the volume said


async def test_read_only_volumes_are_not_exported(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(
                container_image="alpine",
                command=["touch", "/data/x"],
                volumes=[{"source": str(tmp_path / "data"), "target": "/data"}],
            )
        )
    assert result.success and "exported" not in result.result
    assert dagger_engine.exports == []


async def test_a_failing_step_fails_the_workflow_and_skips_what_depends_on_it(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    write_workflow(
        tmp_path,
        "fails.yml",
        """
image: alpine
steps:
  - {name: ok, run: [echo, fine]}
  - {name: broken, run: [compile]}
  - {name: after, depends_on: [ok, broken], run: [echo, never]}
""",
    )
    dagger_engine.on_exec(["compile"], ExecOutcome(stderr="error: missing semicolon\n", exit_code=2))
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(workflow_command(workflow_definition="fails"))
    assert not result.success
    assert result.error_category == ErrorCategory.PERMANENT
    assert "broken" in result.error and "exited with code 2" in result.error and "missing semicolon" in result.error
    steps = result.result["steps"]
    assert steps["ok"]["status"] == "succeeded"
    assert steps["broken"]["status"] == "failed" and steps["broken"]["exit_code"] == 2
    assert steps["broken"]["stderr"] == "error: missing semicolon\n"
    assert steps["after"]["status"] == "skipped"
    assert ["echo", "never"] not in [r.args for r in dagger_engine.execs]


async def test_allow_failure_lets_the_workflow_continue(dagger_engine: TestEngine, tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        "lenient.yml",
        "image: alpine\nsteps:\n  - {name: flaky, run: [sh, -c, 'exit 4'], allow_failure: true}\n"
        "  - {name: next, depends_on: [flaky], run: [echo, next]}\n",
    )
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(workflow_command(workflow_definition="lenient"))
    assert result.success, result.error
    assert result.result["steps"]["flaky"]["exit_code"] == 4
    assert result.result["steps"]["flaky"]["allowed_failure"] is True
    assert result.result["steps"]["next"]["status"] == "succeeded"


async def test_inline_workflow_and_container_image_override(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(
                container_image="busybox:1.36",
                workflow_definition={"image": "alpine", "steps": [{"name": "only", "run": ["echo", "inline"]}]},
            )
        )
    assert result.success, result.error
    assert [(r.image, r.args) for r in dagger_engine.execs] == [("busybox:1.36", ["echo", "inline"])]
    assert result.result["workflow"] == "inline"


async def test_unknown_input_reference_fails_before_anything_runs(dagger_engine: TestEngine, tmp_path: Path) -> None:
    write_workflow(tmp_path, "needs.yml", "image: alpine\nsteps:\n  - {name: s, run: [echo, '{{ inputs.target }}']}\n")
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(workflow_command(workflow_definition="needs", inputs={"other": "x"}))
    assert not result.success and result.error_category == ErrorCategory.PERMANENT
    assert "unknown input(s) target" in result.error and "other" in result.error
    assert dagger_engine.execs == []


async def test_unknown_and_invalid_workflows_are_permanent(dagger_engine: TestEngine, tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        "cyclic.yml",
        "image: a\nsteps:\n  - {name: x, run: [a], depends_on: [y]}\n  - {name: y, run: [b], depends_on: [x]}\n",
    )
    write_workflow(tmp_path, "broken.yml", "steps: [unclosed\n")
    async with started(adapter_config(tmp_path)) as adapter:
        unknown = await adapter.execute(workflow_command("w1", workflow_definition="deploy"))
        cyclic = await adapter.execute(workflow_command("w2", workflow_definition="cyclic"))
        broken = await adapter.execute(workflow_command("w3", workflow_definition="broken"))
    assert unknown.error_category == ErrorCategory.PERMANENT and "unknown workflow 'deploy'" in unknown.error
    assert cyclic.error_category == ErrorCategory.PERMANENT and "cycle" in cyclic.error
    assert broken.error_category == ErrorCategory.PERMANENT and "not valid YAML" in broken.error
    assert dagger_engine.execs == []


async def test_invalid_parameters_are_invalid(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(workflow_command(command=["echo"], volumes="nope"))
    assert result.error_category == ErrorCategory.INVALID and "parameters" in result.error
    assert dagger_engine.execs == []


@pytest.mark.parametrize(
    "source",
    ["{tmp}/elsewhere", "{tmp}/data/../elsewhere", "{tmp}/data/link-out", "/etc"],
)
async def test_volume_paths_outside_the_allowed_roots_are_refused(
    dagger_engine: TestEngine, tmp_path: Path, source: str
) -> None:
    (tmp_path / "elsewhere").mkdir()
    config = adapter_config(tmp_path)
    (tmp_path / "data" / "link-out").symlink_to(tmp_path / "elsewhere")
    async with started(config) as adapter:
        result = await adapter.execute(
            workflow_command(
                container_image="alpine",
                command=["cat", "/x/secret"],
                volumes=[{"source": source.format(tmp=tmp_path), "target": "/x"}],
            )
        )
    assert not result.success and result.error_category == ErrorCategory.PERMANENT
    assert "volume source" in result.error
    assert dagger_engine.execs == []


async def test_secrets_and_registry_credentials_never_reach_results_or_logs(
    dagger_engine: TestEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token, password = "tok-3f9a-very-secret", "hunter2-registry-pw"
    dagger_engine.on_exec(["leak"], ExecOutcome(files={"/out/leak.txt": f"the token is {token}\n"}))
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(
                "sec-1",
                workflow_definition={
                    "image": "registry.example.com/team/tool:1",
                    "steps": [{"name": "leak", "run": ["leak"], "outputs": {"leaked": "/out/leak.txt"}}],
                },
                secrets={"API_TOKEN": token},
                registry_auth={"address": "registry.example.com", "username": "ci", "password": password},
            )
        )
        failed = await adapter.execute(
            workflow_command("sec-2", container_image="alpine", command=["sh", "-c", "exit 1"], secrets={"T": token})
        )
    assert result.success, result.error
    (record, _) = dagger_engine.execs
    assert record.secret_env == {"API_TOKEN": "sec-1/API_TOKEN"}
    assert record.registry_auths == [("registry.example.com", "ci", "sec-1/registry/registry.example.com")]
    assert dagger_engine.secret_plaintext("sec-1/API_TOKEN") == token  # the engine got the value
    assert result.result["outputs"]["leak"]["leaked"] == "the token is ***\n"
    for text in (repr(result), repr(failed), caplog.text):
        assert token not in text and password not in text


async def test_progress_reports_each_step(dagger_engine: TestEngine, tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        "two.yml",
        "image: a\nsteps:\n  - {name: one, run: [echo, 1]}\n"
        "  - {name: two, depends_on: [one], run: [sh, -c, 'exit 1']}\n",
    )
    events: list[tuple[str, str]] = []
    async with started(adapter_config(tmp_path)) as adapter:
        await adapter.execute(
            workflow_command(workflow_definition="two"), on_progress=lambda s, st, d: events.append((s, st))
        )
    assert events == [("one", "started"), ("one", "succeeded"), ("two", "started"), ("two", "failed")]
    assert dagger_engine.execs[0].args == ["echo", "1"]  # a YAML number in `run` is passed as the text written


async def test_configured_registry_qualifies_images_and_its_credentials_are_attached(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    config = adapter_config(
        tmp_path,
        container_registry="registry.example.com",
        container_credentials={"token": "cfg-token-123"},
    )
    async with started(config) as adapter:
        result = await adapter.execute(
            workflow_command(
                workflow_definition={
                    "steps": [
                        {"name": "short", "image": "python:3.12", "run": ["echo", "a"]},
                        {"name": "named", "image": "ghcr.io/acme/tool:1", "run": ["echo", "b"]},
                    ]
                }
            )
        )
    assert result.success, result.error
    short, named = sorted(dagger_engine.execs, key=lambda r: r.args)
    assert short.image == "registry.example.com/python:3.12"  # no registry named: the configured one
    assert named.image == "ghcr.io/acme/tool:1"
    assert short.registry_auths == [("registry.example.com", "token", "wf-1/registry/registry.example.com")]
    assert "cfg-token-123" not in repr(result)
