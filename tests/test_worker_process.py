"""``dagger-adapter worker`` as an operator runs it: separate processes sharing one queue, stopped
with SIGTERM, killed with SIGKILL, started against a broker that is not there."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from schemas import encode
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.private_rabbit import free_port
from tests.support.worker_process import (
    Observer,
    WorkerProcess,
    command,
    drain_queue,
    publish_command,
    wait_until,
    worker_settings,
)
from topology import Topology, queue_depths

Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: lets execs the test held open end, so the engine can stop."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def spawn(
    amqp_url: str, valkey_url: str, topology_spec: Topology, dagger_engine: TestEngine, tmp_path: Path
) -> Iterator[Spawn]:
    processes: list[WorkerProcess] = []

    def start(*args: str, **overrides: Any) -> WorkerProcess:
        settings = worker_settings(
            amqp_url=overrides.pop("amqp_url", amqp_url),
            valkey_url=overrides.pop("valkey_url", valkey_url),
            spec=topology_spec,
            work_dir=tmp_path,
            engine_env=overrides.pop("engine_env", dagger_engine.session_env()),
            **overrides,
        )
        process = WorkerProcess(settings, tmp_path / f"worker-{len(processes)}.log", *args)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()
        print(f"--- {process.worker_id} ---\n{process.output()}")  # shown when the test failed


def held_until(event: threading.Event, stdout: str = "") -> Callable[[ExecRecord], ExecOutcome]:
    def answer(_: ExecRecord) -> ExecOutcome:
        event.wait(60)
        return ExecOutcome(stdout=stdout)

    return answer


# ---------------------------------------------------------------------------------------------


async def test_sigterm_lets_running_executions_finish_requeues_the_rest_and_exits_0(
    spawn: Spawn,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    amqp: AbstractRobustConnection,
    release: threading.Event,
) -> None:
    quick_may_finish = threading.Event()
    dagger_engine.on_exec(["quick"], held_until(quick_may_finish, "quick done\n"))
    dagger_engine.on_exec(["endless"], held_until(release))
    worker = spawn("--concurrency", "2", drain_timeout_seconds=4)
    await observer.wait_ready(worker.worker_id)

    await publish_command(channel, topology_spec, command("quick-1", "quick"))
    await publish_command(channel, topology_spec, command("endless-1", "endless"))
    await wait_until(lambda: dagger_engine.current_execs == 2, 30, "both executions running")

    worker.terminate()
    await wait_until(
        lambda: any(line["msg"].startswith("stop requested") for line in worker.log_lines()), 10, "the drain"
    )
    quick_may_finish.set()  # finishes within the drain timeout; `endless` does not
    assert await worker.wait(60) == 0

    assert [r.task_id for r in observer.results] == ["quick-1"] and observer.results[0].success
    assert "succeeded" not in observer.states_of("endless-1")
    assert "heartbeat" in observer.states_of("endless-1")  # it was seen running all along

    # `endless` comes back to the tasks queue (through a retry tier, so the interruption counts
    # no delivery against the delivery limit), still its first attempt.
    async def tasks_waiting() -> bool:
        return (await queue_depths(amqp, topology_spec))[topology_spec.tasks_queue] == 1

    await wait_until(tasks_waiting, 15, "the unfinished command back in the tasks queue")
    assert (await queue_depths(amqp, topology_spec))[topology_spec.dead_queue] == 0
    (requeued,) = await drain_queue(channel, topology_spec.tasks_queue)
    assert b"endless-1" in requeued.body
    assert (requeued.headers or {}).get("x-attempts", 0) == 0
    assert (requeued.headers or {}).get("x-delivery-count", 0) == 0  # no delivery counted against the limit

    lines = worker.log_lines()
    assert lines and all(line["worker_id"] == worker.worker_id for line in lines)
    assert any("drain timeout" in line["msg"] for line in lines)
    assert any(line["task_id"] == "quick-1" and line["attempt"] == 1 for line in lines)


async def test_a_task_of_a_worker_killed_mid_execution_completes_on_another_worker_once(
    spawn: Spawn,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    release: threading.Event,
) -> None:
    calls: list[str] = []

    def first_one_hangs(record: ExecRecord) -> ExecOutcome:
        calls.append(record.args[-1])
        if len(calls) == 1:
            release.wait(60)  # the exec whose worker gets killed
        return ExecOutcome(stdout="done\n")

    dagger_engine.on_exec(["crashy"], first_one_hangs)
    doomed = spawn(lease_seconds=3)
    await observer.wait_ready(doomed.worker_id)
    await publish_command(channel, topology_spec, command("survivor-1", "crashy", "x"))
    await wait_until(lambda: dagger_engine.current_execs == 1, 30, "the execution running")
    doomed.kill()
    assert await doomed.wait(10) == -9

    rescuer = spawn(lease_seconds=3)
    await observer.wait_for(lambda: observer.results_for("survivor-1"), 60, "the result from the second worker")
    await observer.wait_heartbeats(3, 15, lambda b: b.worker_id == rescuer.worker_id)
    (result,) = observer.results_for("survivor-1")
    assert result.success and result.worker_id == rescuer.worker_id
    assert len(calls) == 2  # started twice (once per worker), finished once


async def test_worker_processes_share_the_queue_each_task_once(
    spawn: Spawn,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    # Each exec holds on until four run at once: only both workers together (2 slots each) get there.
    def hold(_: ExecRecord) -> ExecOutcome:
        with contextlib.suppress(TimeoutError):
            dagger_engine.wait_until(lambda: dagger_engine.max_concurrent_execs >= 4, timeout=20)
        return ExecOutcome(stdout="ok\n")

    dagger_engine.on_exec(["shared"], hold)
    workers = [spawn("--concurrency", "2"), spawn("--concurrency", "2")]
    for worker in workers:
        await observer.wait_ready(worker.worker_id)
    ids = [f"shared-{i}-{uuid.uuid4().hex[:4]}" for i in range(10)]
    for task_id in ids:
        # distinct commands: identical ones would be one operation to a real engine
        await publish_command(channel, topology_spec, command(task_id, "shared", task_id))

    await observer.wait_for(lambda: len(observer.results) >= len(ids), 60, "every result")
    for worker in workers:
        await observer.wait_heartbeats(2, 15, lambda b, w=worker: b.worker_id == w.worker_id)  # type: ignore[misc]
    assert sorted(r.task_id for r in observer.results) == sorted(ids)
    assert {r.worker_id for r in observer.results} == {w.worker_id for w in workers}
    assert dagger_engine.max_concurrent_execs == 4
    for worker in workers:
        worker.terminate()
    assert [await w.wait(30) for w in workers] == [0, 0]


async def test_start_up_problems_are_told_clearly(spawn: Spawn) -> None:
    port = free_port()
    worker = spawn(
        amqp_url=f"amqp://guest:hunter2@127.0.0.1:{port}/", timeout_seconds=7200, broker_consumer_timeout_seconds=3600
    )
    assert await worker.wait(60) == 1
    # An execution timeout beyond the broker's consumer_timeout is warned about.
    lines = worker.log_lines()
    (warning,) = [line for line in lines if line["level"] == "warning" and line["logger"].startswith("dagger")]
    # The AMQP library's own complaints about the refused connection are warnings, not errors.
    library = [line["level"] for line in lines if line["logger"].startswith(("aio_pika", "aiormq"))]
    assert library and "error" not in library
    assert "consumer_timeout" in warning["msg"] and "7200" in warning["msg"]
    # An unreachable broker is one line, without the password.
    output = worker.output()
    assert "hunter2" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("dagger-adapter: error: cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:")
    assert "Traceback" not in output
    # Valkey unreachable at start-up is waited for, like the engine: tests/test_worker_fleet.py.


async def test_the_worker_can_have_the_sdk_start_the_dagger_cli(
    spawn: Spawn, observer: Observer, channel: AbstractChannel, topology_spec: Topology
) -> None:
    # No session in the environment: the SDK runs `_EXPERIMENTAL_DAGGER_CLI_BIN session` and
    # talks to the engine that CLI stands for.
    cli = Path(__file__).parent / "dagger_engine" / "cli.py"
    worker = spawn(engine_env={"_EXPERIMENTAL_DAGGER_CLI_BIN": str(cli)})
    await observer.wait_ready(worker.worker_id)
    await publish_command(channel, topology_spec, command("via-cli", "echo", "hello from the cli engine"))
    await observer.wait_for(lambda: observer.results_for("via-cli"), 60, "the result")
    (result,) = observer.results_for("via-cli")
    assert result.success and "hello from the cli engine" in encode(result).decode()
    worker.terminate()
    assert await worker.wait(30) == 0
