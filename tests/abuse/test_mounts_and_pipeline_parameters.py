"""What the engine is told about mounts, and what ``dagger_pipeline`` does with the common
parameters it accepts (issue 8: "`dagger_pipeline` accepts `environment` and `volumes` and
applies neither (a `/etc` volume 'succeeds' with nothing mounted)")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from schemas import DeadLetterHeaders, ErrorCategory, ExecutionCommand, ExecutionType
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, publish_command
from tests.test_adapter_support import adapter_config, pipeline_command, started, workflow_command, write_workflow
from tests.test_worker import StartWorker, dead_letters, start_worker  # noqa: F401 - the worker fixture
from topology import Topology


@pytest.fixture
def mounted(dagger_engine: TestEngine) -> Iterator[list[tuple[str, bool]]]:
    """``(container path, readOnly)`` of every ``withMountedDirectory`` as the engine received
    it (the argument after GraphQL parsing, on the engine's side of the wire)."""
    seen: list[tuple[str, bool]] = []
    schema = dagger_engine._core.schema
    assert schema is not None
    field = schema.get_type("Container").fields["withMountedDirectory"]  # type: ignore[union-attr]
    original = field.resolve
    assert original is not None

    def recording(obj: Any, info: Any, **kwargs: Any) -> Any:
        seen.append((kwargs["path"], kwargs["readOnly"]))
        return original(obj, info, **kwargs)

    field.resolve = recording
    yield seen
    field.resolve = original


async def test_workflow_host_inputs_are_mounted_read_only_and_only_writable_volumes_are_not(
    dagger_engine: TestEngine, tmp_path: Path, mounted: list[tuple[str, bool]]
) -> None:
    (tmp_path / "data" / "in").mkdir(parents=True)
    (tmp_path / "data" / "out").mkdir()
    write_workflow(tmp_path, "two.yml", "image: alpine\nworkspace: /scratch\nsteps:\n  - {name: s, run: [echo]}\n")
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command(
                workflow_definition="two",
                volumes=[
                    {"source": str(tmp_path / "data" / "in"), "target": "/in"},
                    {"source": str(tmp_path / "data" / "out"), "target": "/out", "writable": True},
                ],
            )
        )
    assert result.success, result.error
    assert sorted(set(mounted)) == [("/in", True), ("/out", False), ("/scratch", False)]


async def test_pipeline_host_directories_are_read_only_unless_the_operation_says_otherwise(
    dagger_engine: TestEngine, tmp_path: Path, mounted: list[tuple[str, bool]]
) -> None:
    src = tmp_path / "data" / "src"
    src.mkdir(parents=True)
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"with_mounted_directory": {"path": "/a", "source": str(src)}},
                    {"with_mounted_directory": {"path": "/b", "source": str(src), "read_only": False}},
                    {"with_exec": {"args": ["true"]}},
                ],
                volumes=[{"source": str(src), "target": "/v"}],
            )
        )
    assert result.success, result.error
    assert sorted(set(mounted)) == [("/a", True), ("/b", False), ("/v", True)]


async def test_a_pipeline_applies_environment_secrets_and_volumes_at_the_start_of_the_chain(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    data = tmp_path / "data" / "in"
    data.mkdir(parents=True)
    (data / "input.txt").write_text("raw\n")
    out = tmp_path / "data" / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old\n")
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[
                    {"from": {"address": "alpine"}},
                    {"with_env_variable": {"name": "MODE", "value": "chain"}},  # the chain may override
                    {"with_exec": {"args": ["sh", "-c", "cat /in/input.txt > /out/made.txt; echo $GREETING"]}},
                ],
                environment={"GREETING": "hi", "MODE": "command"},
                secrets={"API_TOKEN": "tok-123"},
                volumes=[
                    {"source": str(data), "target": "/in"},
                    {"source": str(out), "target": "/out", "writable": True},
                ],
            )
        )
    assert result.success, result.error
    (record,) = dagger_engine.execs
    assert record.env == {"GREETING": "hi", "MODE": "chain"}
    assert record.secret_env == {"API_TOKEN": "pl-1/API_TOKEN"}
    assert record.mounts["/in"] == ("host", str(data.resolve()))
    assert result.result["stdout"] == "hi\n"
    # the writable volume is exported back: the file the chain made arrives, the host files it kept stay
    assert result.result["exported"] == [str(out.resolve())]
    assert sorted(p.name for p in out.iterdir()) == ["made.txt", "stale.txt"]
    assert (out / "made.txt").read_text() == "raw\n"


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        ({"source": "/etc", "target": "/etc-host"}, "outside the allowed host directories"),
        ({"source": "/etc", "target": "/etc-host", "writable": True}, "allowed_output_roots"),
    ],
    ids=["read", "writable"],
)
async def test_a_pipeline_volume_outside_the_roots_is_refused_not_dropped(
    dagger_engine: TestEngine, tmp_path: Path, volume: dict[str, Any], expected: str
) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            pipeline_command(
                pipeline=[{"from": {"address": "alpine"}}, {"with_exec": {"args": ["ls"]}}], volumes=[volume]
            )
        )
    assert not result.success and result.error_category is ErrorCategory.PERMANENT
    assert expected in (result.error or "")
    assert dagger_engine.execs == []


async def test_through_the_worker_a_pipeline_etc_volume_is_dead_lettered_and_a_module_call_with_environment_is_invalid(
    start_worker: StartWorker,  # noqa: F811
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    await start_worker(max_retries=0)
    etc = ExecutionCommand(
        task_id="etc-volume",
        execution_type=ExecutionType.DAGGER_PIPELINE,
        parameters={
            "pipeline": [{"from": {"address": "alpine"}}, {"with_exec": {"args": ["cat", "/host/shadow"]}}],
            "volumes": [{"source": "/etc", "target": "/host"}],
        },
    )
    module = ExecutionCommand(
        task_id="module-env",
        execution_type=ExecutionType.DAGGER_PIPELINE,
        parameters={"module": "github.com/acme/m", "function": "f", "environment": {"A": "1"}},
    )
    for command in (etc, module):
        await publish_command(channel, topology_spec, command)
    await observer.wait_for(
        lambda: observer.results_for("etc-volume") and observer.results_for("module-env"), 30, "both results"
    )
    (etc_result,) = observer.results_for("etc-volume")
    (module_result,) = observer.results_for("module-env")
    assert etc_result.error_category is ErrorCategory.PERMANENT
    assert "outside the allowed host directories" in (etc_result.error or "")
    assert module_result.error_category is ErrorCategory.INVALID
    assert "a module call takes no environment" in (module_result.error or "")
    letters = await dead_letters(channel, topology_spec)
    reasons = {DeadLetterHeaders.from_headers(dict(m.headers)).task_id: m for m in letters}
    assert set(reasons) == {"etc-volume", "module-env"} and len(letters) == 2
    assert dagger_engine.execs == []
