"""Failure classes as the adapter reports them, from real SDK exceptions against the test engine;
timeouts; the concurrency limit; what the adapter reports about itself."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import dagger
import msgspec
import pytest
import tenacity

from consumer.errors import ExecutionFailure, classify
from schemas import ErrorCategory, ExecutionCommand, ExecutionType, InvalidMessage
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.test_adapter_support import adapter_config, started, workflow_command


def sleeper(task_id: str, seconds: float, *, timeout: float, **extra: object) -> ExecutionCommand:
    command = workflow_command(task_id, container_image="alpine", command=["sleep", str(seconds)], **extra)
    return msgspec.structs.replace(command, timeout_seconds=timeout)


async def test_an_unreachable_engine_is_transient_and_the_adapter_reconnects(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    dagger_engine.refuse()
    async with started(adapter_config(tmp_path, max_retries=0)) as adapter:  # start-up does not fail
        assert not adapter.get_status().engine_connected
        down = await adapter.execute(workflow_command("t1", container_image="alpine", command=["echo", "x"]))
        assert not down.success and down.error_category == ErrorCategory.TRANSIENT
        assert "engine unreachable" in down.error
        dagger_engine.accept()
        up = await adapter.execute(workflow_command("t2", container_image="alpine", command=["echo", "x"]))
        assert up.success, up.error
        assert adapter.get_status().engine_connected


async def test_a_command_running_past_its_timeout_is_a_timeout(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(sleeper("slow", 30, timeout=0.5, enable_retry=False))
    assert not result.success and result.error_category == ErrorCategory.TIMEOUT
    assert "timeout of 0.5s" in result.error and result.attempts == 1
    assert [r.args for r in dagger_engine.execs] == [["sleep", "30"]]
    assert result.result["steps"]["command"]["status"] == "running"  # what was going on at the deadline


async def test_timeouts_are_retried(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path, max_retries=1)) as adapter:
        result = await adapter.execute(sleeper("slow-2", 30, timeout=0.3))
    assert result.error_category == ErrorCategory.TIMEOUT and result.attempts == 2
    assert len(dagger_engine.execs) == 2


async def test_the_worker_timeout_is_the_ceiling(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path, timeout_seconds=0.5, max_retries=0)) as adapter:
        result = await adapter.execute(sleeper("asks-more", 30, timeout=600))
    assert result.error_category == ErrorCategory.TIMEOUT


async def test_concurrent_executions_are_capped(dagger_engine: TestEngine, tmp_path: Path) -> None:
    gate = threading.Event()

    def held(record: ExecRecord) -> ExecOutcome:
        gate.wait(10)
        return ExecOutcome(stdout="done\n")

    dagger_engine.on_exec(["work"], held)
    async with started(adapter_config(tmp_path, max_concurrent_executions=2)) as adapter:
        tasks = [
            asyncio.create_task(
                adapter.execute(workflow_command(f"c{n}", container_image="alpine", command=["work", str(n)]))
            )
            for n in range(4)
        ]
        await asyncio.to_thread(dagger_engine.wait_until, lambda: dagger_engine.current_execs == 2)
        status = adapter.get_status()
        assert (status.current_load, status.capacity) == (4, 2)
        gate.set()
        results = await asyncio.gather(*tasks)
        assert adapter.current_load == 0
    assert all(r.success for r in results)
    assert len(dagger_engine.execs) == 4 and dagger_engine.max_concurrent_execs == 2


async def test_status_and_capabilities(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path, max_concurrent_executions=3)) as adapter:
        status = adapter.get_status()
        assert status.ready and status.engine_connected and status.circuit == "closed"
        assert (status.current_load, status.capacity) == (0, 3)
        assert status.version
        kinds = {c.execution_type for c in adapter.get_capabilities()}
        assert kinds == {ExecutionType.CONTAINERIZED_WORKFLOW, ExecutionType.DAGGER_PIPELINE}
    assert not adapter.get_status().ready  # closed


# --- classification of the SDK's real exceptions --------------------------------------------


async def test_sdk_execute_timeout_is_classified_as_timeout(dagger_engine: TestEngine) -> None:
    dagger_engine.on_exec(["sleep"], ExecOutcome(delay=5))
    connection = dagger.Connection(dagger.Config(retry=None, timeout=dagger.Timeout(0.3, connect=5)))
    client = await connection.__aenter__()
    try:
        with pytest.raises(dagger.TransportError) as info:
            await client.container().from_("alpine").with_exec(["sleep", "5"]).sync()
    finally:
        await connection.close()
    assert classify(info.value).category is ErrorCategory.TIMEOUT


async def test_sdk_connection_and_transport_errors_are_transient(dagger_engine: TestEngine) -> None:
    connection = dagger.Connection(dagger.Config(retry=None))
    client = await connection.__aenter__()
    try:
        dagger_engine.fail_requests(1)
        with pytest.raises(dagger.TransportError) as transport:
            await client.version()
    finally:
        await connection.close()
    dagger_engine.refuse()
    with pytest.raises(dagger.ClientConnectionError) as refused:
        await dagger.Connection(dagger.Config(retry=None)).__aenter__()
    assert classify(transport.value).category is ErrorCategory.TRANSIENT
    assert classify(refused.value).category is ErrorCategory.TRANSIENT


async def test_sdk_exec_and_query_errors_are_permanent(dagger_engine: TestEngine) -> None:
    dagger_engine.on_exec(["make"], ExecOutcome(stderr="make: *** no rule\n", exit_code=2))
    connection = dagger.Connection(dagger.Config(retry=None))
    client = await connection.__aenter__()
    try:
        with pytest.raises(dagger.ExecError) as exec_error:
            await client.container().from_("alpine").with_exec(["make"]).sync()
        with pytest.raises(dagger.QueryError) as query_error:
            await client.module_source("github.com/nobody/nothing").as_module().name()
    finally:
        await connection.close()
    failure = classify(exec_error.value)
    assert failure.category is ErrorCategory.PERMANENT
    assert "exited with code 2" in failure.message and "no rule" in failure.message
    assert classify(query_error.value).category is ErrorCategory.PERMANENT


def test_the_sdk_giving_up_its_own_retries_is_transient() -> None:
    last = tenacity.Future.construct(5, ConnectionResetError("reset by peer"), has_exception=True)
    failure = classify(tenacity.RetryError(last))
    assert failure.category is ErrorCategory.TRANSIENT and "ConnectionResetError" in failure.message


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (TimeoutError(), ErrorCategory.TIMEOUT),
        (InvalidMessage("bad"), ErrorCategory.INVALID),
        (ConnectionRefusedError(111, "refused"), ErrorCategory.TRANSIENT),
        (FileNotFoundError(2, "missing", "/x"), ErrorCategory.PERMANENT),
        (ExceptionGroup("steps", [ExecutionFailure(ErrorCategory.TIMEOUT, "t")]), ErrorCategory.TIMEOUT),
        (KeyError("bug"), ErrorCategory.PERMANENT),
    ],
)
def test_other_exceptions(exc: BaseException, category: ErrorCategory) -> None:
    assert classify(exc).category is category


def engine_error(message: str):  # type: ignore[no-untyped-def]
    """An exec rule that makes the engine answer with a GraphQL error (not an exec error),
    as a real engine does when it cannot pull the image."""

    def answer(record: ExecRecord) -> ExecOutcome:
        raise RuntimeError(message)

    return answer


async def test_a_registry_the_engine_cannot_reach_is_transient_and_retried(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    unreachable = (
        "failed to resolve source metadata for docker.io/library/alpine:latest: failed to do request: "
        'Head "https://registry-1.docker.io/v2/library/alpine/manifests/latest": dial tcp: i/o timeout'
    )
    dagger_engine.on_exec(["echo"], engine_error(unreachable), times=1)
    async with started(adapter_config(tmp_path, max_retries=1)) as adapter:
        result = await adapter.execute(workflow_command("pull", container_image="alpine", command=["echo", "up"]))
    assert result.success and result.attempts == 2, result.error
    assert [r.args for r in dagger_engine.execs] == [["echo", "up"], ["echo", "up"]]


async def test_an_image_the_registry_refuses_is_permanent(dagger_engine: TestEngine, tmp_path: Path) -> None:
    # "nope" is declared nowhere: the engine's pull is denied, as Docker Hub answers it.
    async with started(adapter_config(tmp_path, max_retries=2)) as adapter:
        result = await adapter.execute(workflow_command("denied", container_image="nope", command=["echo", "x"]))
    assert not result.success and result.error_category == ErrorCategory.PERMANENT
    assert "failed to resolve source metadata for docker.io/library/nope:latest: pull access denied" in (
        result.error or ""
    )
    assert result.attempts == 1 and dagger_engine.pulls == 1
    assert dagger_engine.execs == []


async def test_a_secret_in_a_retried_failure_never_reaches_the_logs(
    dagger_engine: TestEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dagger_engine.on_exec(["echo"], engine_error("dial tcp: proxy said: bad token tok-7f3a9c"), times=1)
    async with started(adapter_config(tmp_path, max_retries=1)) as adapter:
        result = await adapter.execute(
            workflow_command("leak", container_image="alpine", command=["echo", "x"], secrets={"TOKEN": "tok-7f3a9c"})
        )
    assert result.success and result.attempts == 2, result.error
    assert "retrying" in caplog.text and "bad token ***" in caplog.text
    assert "tok-7f3a9c" not in caplog.text
