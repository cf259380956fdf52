"""The idempotency key is bound to the command: reusing another task's id with other parameters
gets nothing of it; only the identical command gets the stored result."""

from __future__ import annotations

import asyncio

import aio_pika

from schemas import ExecutionResult, decode, encode
from tests.abuse.expect import Broker, exactly_one_invalid_dead_letter
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, command, publish_command
from tests.test_worker import StartWorker


async def test_a_task_id_reused_with_other_parameters_gets_nothing_of_the_earlier_task(
    start_worker: StartWorker,
    observer: Observer,
    broker: Broker,
    dagger_engine: TestEngine,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    worker = await start_worker()
    await publish_command(broker.channel, broker.spec, command("victim", "echo", "top secret output"))
    await observer.wait_for(lambda: observer.results_for("victim"), 30, "the victim's result")
    (original,) = observer.results_for("victim")
    assert original.success and "top secret output" in str(original.result)

    channel = await amqp.channel()
    mine = await channel.declare_queue(exclusive=True)
    replies: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
    await mine.consume(replies.put, no_ack=True)

    # The attacker: the victim's task id, other parameters, its own reply queue.
    attack = command("victim", "echo", "something else", reply_to=mine.name)
    message_id = await broker.publish(encode(attack), "containerized_workflow")
    await exactly_one_invalid_dead_letter(
        broker, observer, worker, message_id=message_id, reason="task_id reused with different parameters"
    )
    reply = decode((await asyncio.wait_for(replies.get(), 30)).body, ExecutionResult)
    assert not reply.success and reply.error == "task_id reused with different parameters"
    assert reply.result is None and "top secret" not in encode(reply).decode()
    # Nothing that contradicts the real task's result went to the results exchange.
    assert observer.results_for("victim") == [original]
    assert len(dagger_engine.execs) == 1

    # The same command again (written differently: key order, defaults spelt out) is answered
    # with the stored result.
    same = command("victim", "echo", "top secret output", reply_to=mine.name)
    same.parameters = {"cache": True, **dict(reversed(list(same.parameters.items())))}
    await broker.publish(encode(same), "containerized_workflow")
    again = decode((await asyncio.wait_for(replies.get(), 30)).body, ExecutionResult)
    assert again == original
    assert len(dagger_engine.execs) == 1


async def test_a_forged_replay_header_does_not_rerun_a_failed_task_with_other_parameters(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine
) -> None:
    """x-replay-id lets a failed task run again - the same command only."""
    worker = await start_worker()
    await publish_command(broker.channel, broker.spec, command("failed-once", "sh", "-c", "exit 3"))
    await observer.wait_for(lambda: observer.results_for("failed-once"), 30, "the failure")
    from tests.support.worker_process import drain_queue

    await drain_queue(broker.channel, broker.spec.dead_queue)
    forged = command("failed-once", "sh", "-c", "cat /etc/shadow")
    message_id = await broker.publish(encode(forged), "containerized_workflow", headers={"x-replay-id": "forged"})
    await exactly_one_invalid_dead_letter(
        broker, observer, worker, message_id=message_id, reason="task_id reused with different parameters"
    )
    assert [e.args for e in dagger_engine.execs] == [["sh", "-c", "exit 3"]]
