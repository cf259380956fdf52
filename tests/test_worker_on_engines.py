"""The worker as a real Dagger engine makes it behave: the engine caches what it can, keeps
registry credentials per session, snapshots host paths, resolves tags to digests -- and the
worker still runs what must run again, never lends one task's credentials to another, never
serves stale inputs or a moved tag from its result cache, and keeps its circuit breaker for
the engine's own failures.

Every test here runs against the test engine in CI and, unchanged, against a real engine with
``DAGGER_ADAPTER_REAL_ENGINE=1`` (``just test-real-engine``; see ``tests/support/engines.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from consumer.worker import Worker
from schemas import ExecutionCommand, ExecutionResult, ExecutionType
from schemas import headers as h
from tests.support.engines import FRESH_FAILURE, FRESH_OUTPUT, IMAGE, MISSING_IMAGE, EngineUnderTest
from tests.support.in_process import InProcessWorkers
from tests.support.worker_process import Observer, publish_command, worker_settings
from topology import Topology

pytestmark = pytest.mark.real_engine

StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(
    amqp_url: str,
    valkey_url: str,
    topology_spec: Topology,
    engine_under_test: EngineUnderTest,
    observer: Observer,
    tmp_path: Path,
) -> AsyncIterator[StartWorker]:
    """A worker in this process on the engine under test, consuming; drained at teardown."""
    workers = InProcessWorkers(observer)

    async def start(**overrides: Any) -> Worker:
        (tmp_path / "data").mkdir(exist_ok=True)
        overrides.setdefault("allowed_volume_roots", str(tmp_path / "data"))
        overrides.setdefault("timeout_seconds", 300 if engine_under_test.real else 60)
        # A real engine's session starts through the CLI, which may take a while.
        overrides.setdefault("engine_connect_timeout_seconds", 60 if engine_under_test.real else 3)
        settings = worker_settings(
            amqp_url=amqp_url, valkey_url=valkey_url, spec=topology_spec, work_dir=tmp_path, **overrides
        )
        return await workers.start(settings, ready_timeout=120)

    yield start
    await workers.stop_all()


def run_command(task_id: str, args: list[str], image: str = IMAGE, **parameters: Any) -> ExecutionCommand:
    return ExecutionCommand(
        task_id=task_id,
        execution_type=ExecutionType.CONTAINERIZED_WORKFLOW,
        parameters={"container_image": image, "command": args, **parameters},
    )


async def outcome(
    observer: Observer, channel: AbstractChannel, spec: Topology, command: ExecutionCommand, **properties: Any
) -> ExecutionResult:
    """Publish ``command`` and wait for its next result."""
    before = len(observer.results_for(command.task_id))
    await publish_command(channel, spec, command, **properties)
    await observer.wait_for(lambda: len(observer.results_for(command.task_id)) > before, 240, command.task_id)
    return observer.results_for(command.task_id)[-1]


def stdout(result: ExecutionResult) -> str:
    assert result.success, result.error
    return str(result.result["steps"]["command"]["stdout"])


def new_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- what must run again, runs again ---------------------------------------------------------


async def test_a_failed_command_runs_again_when_replayed_or_sent_again(
    start_worker: StartWorker, observer: Observer, channel: AbstractChannel, topology_spec: Topology
) -> None:
    await start_worker()
    task_id = new_id("replay")
    first = await outcome(observer, channel, topology_spec, run_command(task_id, FRESH_FAILURE))
    assert not first.success and first.error_category is not None and first.error_category.value == "permanent"
    assert "exited with code 3" in (first.error or "")

    # An operator replays the dead letter after fixing its cause: the command really runs again
    # (a failed step is never a cached success in the engine).
    replayed = await outcome(
        observer, channel, topology_spec, run_command(task_id, FRESH_FAILURE), headers={h.REPLAY_ID: uuid.uuid4().hex}
    )
    assert "exited with code 3" in (replayed.error or "")
    assert replayed.error != first.error  # its own run's output, not the first run's

    # So does the same failing command under a new task id.
    again = await outcome(observer, channel, topology_spec, run_command(new_id("replay"), FRESH_FAILURE))
    assert again.error not in (first.error, replayed.error)


async def test_cache_false_runs_again_where_the_engine_would_answer_from_its_cache(
    start_worker: StartWorker, observer: Observer, channel: AbstractChannel, topology_spec: Topology
) -> None:
    await start_worker(caching_enabled="false")  # only the engine's own cache is in play
    first = stdout(await outcome(observer, channel, topology_spec, run_command(new_id("c"), FRESH_OUTPUT)))
    # The identical command again: the engine answers from its operation cache.
    assert stdout(await outcome(observer, channel, topology_spec, run_command(new_id("c"), FRESH_OUTPUT))) == first
    # `cache: false`: it runs again.
    fresh = stdout(await outcome(observer, channel, topology_spec, run_command(new_id("c"), FRESH_OUTPUT, cache=False)))
    assert fresh and fresh != first


# --- credentials stay with their task --------------------------------------------------------


async def test_a_task_without_credentials_cannot_pull_with_another_tasks_credentials(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    engine_under_test: EngineUnderTest,
) -> None:
    image, credentials = engine_under_test.private_image()
    await start_worker()
    with_auth = run_command(new_id("auth"), ["echo", "pulled"], image, registry_auth=credentials)
    assert stdout(await outcome(observer, channel, topology_spec, with_auth)) == "pulled\n"

    without = await outcome(observer, channel, topology_spec, run_command(new_id("noauth"), ["echo", "pulled"], image))
    assert not without.success and without.error_category is not None
    assert without.error_category.value == "permanent"
    assert any(word in (without.error or "") for word in ("denied", "401", "nauthorized")), without.error

    # Credentials given again work again (the session with them is still there).
    again = run_command(new_id("auth"), ["echo", "again"], image, registry_auth=credentials)
    assert stdout(await outcome(observer, channel, topology_spec, again)) == "again\n"


# --- the result cache never answers with stale content ----------------------------------------


async def test_a_changed_input_directory_is_seen_by_the_next_task_and_not_answered_from_the_cache(
    start_worker: StartWorker, observer: Observer, channel: AbstractChannel, topology_spec: Topology, tmp_path: Path
) -> None:
    await start_worker(caching_enabled="true")
    data = tmp_path / "data" / "input"
    data.mkdir(parents=True)
    (data / "input.txt").write_text("one\n")

    def reading(task_id: str) -> ExecutionCommand:
        return run_command(task_id, ["cat", "/in/input.txt"], volumes=[{"source": str(data), "target": "/in"}])

    first = await outcome(observer, channel, topology_spec, reading(new_id("in")))
    assert stdout(first) == "one\n" and not first.cached
    same = await outcome(observer, channel, topology_spec, reading(new_id("in")))
    assert stdout(same) == "one\n" and same.cached  # nothing changed: the result cache answers

    (data / "input.txt").write_text("two\n")
    changed = await outcome(observer, channel, topology_spec, reading(new_id("in")))
    assert stdout(changed) == "two\n" and not changed.cached


async def test_a_moved_tag_is_not_answered_from_the_result_cache(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    engine_under_test: EngineUnderTest,
) -> None:
    engine = engine_under_test.only_test_engine("moving a tag needs a registry the test can push to")
    image = "registry.example.test/team/tool:1"
    engine.add_image(image, files={"/etc/tool-version": "1\n"})
    await start_worker(caching_enabled="true")
    reading = ["cat", "/etc/tool-version"]

    first = await outcome(observer, channel, topology_spec, run_command(new_id("tag"), reading, image))
    assert stdout(first) == "1\n" and not first.cached
    same = await outcome(observer, channel, topology_spec, run_command(new_id("tag"), reading, image))
    assert stdout(same) == "1\n" and same.cached

    engine.move_tag(image, files={"/etc/tool-version": "2\n"})  # someone pushed a new version
    moved = await outcome(observer, channel, topology_spec, run_command(new_id("tag"), reading, image))
    assert stdout(moved) == "2\n" and not moved.cached


# --- the circuit breaker is about the engine --------------------------------------------------


async def test_registry_and_image_errors_leave_the_breaker_closed(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    engine_under_test: EngineUnderTest,
) -> None:
    worker = await start_worker(breaker_failure_threshold=2, max_retries=1)
    failures = []
    for _ in range(3):  # more than the threshold
        failures.append(
            await outcome(observer, channel, topology_spec, run_command(new_id("pull"), ["true"], MISSING_IMAGE))
        )
    if not engine_under_test.real:  # a registry that rate-limits and one that errors: transient, retried
        engine = engine_under_test.only_test_engine("registry faults")
        for host, fault in (("limited.example.test", "rate_limited"), ("broken.example.test", "server_error")):
            image = f"{host}/team/tool:1"
            engine.add_image(image)
            engine.fail_pulls(host, fault)
            result = await outcome(observer, channel, topology_spec, run_command(new_id("pull"), ["true"], image))
            assert result.error_category is not None and result.error_category.value == "transient", result.error
            assert result.attempts == 2  # retried once (max_retries), then dead-lettered
            failures.append(result)
    assert all(not r.success for r in failures)
    assert all(r.error_category is not None and r.error_category.value != "invalid" for r in failures)

    fine = await outcome(observer, channel, topology_spec, run_command(new_id("ok"), ["echo", "fine"]))
    assert stdout(fine) == "fine\n"
    beats = [b for b in observer.heartbeats if b.worker_id == worker.worker_id]
    assert beats and {b.circuit for b in beats} == {"closed"}
    assert worker.adapter.circuit_state == "closed"


async def test_a_hung_engine_opens_the_breaker(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    engine_under_test: EngineUnderTest,
) -> None:
    engine = engine_under_test.only_test_engine("hanging the engine on purpose")
    worker = await start_worker(
        timeout_seconds=1, engine_connect_timeout_seconds=3, breaker_failure_threshold=2, breaker_reset_seconds=60
    )
    assert stdout(await outcome(observer, channel, topology_spec, run_command(new_id("ok"), ["echo", "up"]))) == "up\n"
    engine.hang()  # accepts connections, never answers
    try:
        for _ in range(2):
            await publish_command(channel, topology_spec, run_command(new_id("hung"), ["echo", "never"]))
        await observer.wait_for(
            lambda: any(b.worker_id == worker.worker_id and b.circuit == "open" for b in observer.heartbeats),
            60,
            "the breaker to open",
        )
        assert worker.adapter.circuit_state == "open"
    finally:
        engine.recover()
