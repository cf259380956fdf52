"""A command whose outcome cannot be published is settled once, never looped through the queue:
headers a publisher made just small enough for one frame cannot make the worker's own publish
overflow it, and a command that cannot be handled at all is dead-lettered by the worker at its
last delivery (left to the broker, every such message grew the consumer's prefetch by one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas import DeadLetterHeaders, encode
from tests.abuse.expect import Broker
from tests.abuse.test_limits import assert_prefetch_is
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, command, drain_queue, wait_until
from tests.test_worker import StartWorker


async def test_headers_that_fill_a_frame_do_not_break_the_retry(
    start_worker: StartWorker,
    observer: Observer,
    broker: Broker,
    dagger_engine: TestEngine,
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    """The retry copied every header and added its own: past the frame size, RabbitMQ closed the
    worker's connection (FRAME_ERROR) - on every redelivery of the command, for ever."""
    await start_worker()
    dagger_engine.fail_requests(1)  # a transient failure: the command goes through a retry queue
    await broker.publish(
        encode(command("fat-headers")),
        "containerized_workflow",
        headers={"padding": "x" * 130_000, "x-replay-id": "r-1"},
    )
    await observer.wait_for(lambda: observer.results_for("fat-headers"), 30, "the result")
    (result,) = observer.results_for("fat-headers")
    assert result.success and result.attempts == 2
    lines = worker_log()
    assert not any("reconnected" in line["msg"] for line in lines), "the worker lost its connection"
    assert any("only the replay id goes through the retry queue" in line["msg"] for line in lines)
    assert await drain_queue(broker.channel, broker.spec.dead_queue) == []


async def test_a_command_that_cannot_be_handled_is_dead_lettered_by_the_worker_once(
    start_worker: StartWorker,
    observer: Observer,
    broker: Broker,
    dagger_engine: TestEngine,
) -> None:
    """The operator deleted the retry queues: a transient failure cannot be retried, the command
    is requeued, and at its last delivery the worker dead-letters it with the reason and acks it.
    The worker's prefetch stays at its capacity."""
    worker = await start_worker(max_concurrent_executions=1, breaker_failure_threshold=50)
    for tier in broker.spec.retry_tiers:
        await broker.channel.queue_delete(tier.queue)
    dagger_engine.fail_requests(10_000)
    message_id = await broker.publish(encode(command("no-retry-queue")), "containerized_workflow")

    async def dead_lettered() -> bool:
        return await broker.depth(broker.spec.dead_queue) >= 1

    await wait_until(dead_lettered, 60, "the dead letter")
    await observer.wait_heartbeats(3, 15, lambda b: b.worker_id == worker.worker_id)
    (letter,) = await drain_queue(broker.channel, broker.spec.dead_queue)
    assert letter.message_id == message_id
    why = DeadLetterHeaders.from_headers(dict(letter.headers))
    assert why.error_category == "permanent"
    assert "could not be handled (Unroutable" in why.error and "gave up after 4 deliveries" in why.error
    assert await broker.depth(broker.spec.tasks_queue) == 0

    dagger_engine.fail_requests(0)
    await assert_prefetch_is(worker, broker, observer, dagger_engine, 1)
