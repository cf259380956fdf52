"""The worker as a confused deputy: a reply_to naming our own topology (or the broker's
reserved names) must not make it publish there, and no sender's text becomes a routing key."""

from __future__ import annotations

import asyncio

import aio_pika

from schemas import encode
from tests.abuse.expect import Broker, engine_untouched, invalid_dead_letters, still_works
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, command, drain_queue, publish_command
from tests.test_worker import StartWorker


async def test_a_reply_to_our_own_queues_or_reserved_names_is_refused(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine
) -> None:
    spec = broker.spec
    worker = await start_worker()
    before = dagger_engine.request_count
    targets = [spec.tasks_queue, spec.dead_queue, spec.retry_tiers[0].queue, f"{spec.prefix}.anything", "amq.direct"]
    reasons = {}
    for i, target in enumerate(targets):
        sent = command(f"deputy-{i}", reply_to=target)
        reasons[await broker.publish(encode(sent), "containerized_workflow")] = f"reply_to: {target!r} is "
    await invalid_dead_letters(broker, observer, worker, reasons=reasons)
    engine_untouched(dagger_engine, before)
    # Each task is answered on the results exchange only: nothing was published into our queues
    # (invalid_dead_letters found the tasks queue empty and exactly these dead letters).
    for i in range(len(targets)):
        (result,) = observer.results_for(f"deputy-{i}")
        assert result.error_category is not None and result.error_category.value == "invalid"
    assert await drain_queue(broker.channel, spec.retry_tiers[0].queue) == []
    await still_works(broker, observer)


async def test_a_rejected_message_is_not_answered_into_our_queues_either(
    start_worker: StartWorker, observer: Observer, broker: Broker
) -> None:
    """Invalid for another reason, its peeked reply_to is checked too: no reply goes there."""
    worker = await start_worker()
    body = {"task_id": "bad-and-deputy", "execution_type": "teleport", "reply_to": broker.spec.dead_queue}
    message_id = await broker.publish(body, "teleport")
    await invalid_dead_letters(broker, observer, worker, reasons={message_id: "teleport"})
    (result,) = observer.results_for("bad-and-deputy")
    assert result.error_category is not None and result.error_category.value == "invalid"
    # The unknown type did not become a routing key.
    assert observer.result_keys == ["unknown.failed"]


async def test_reply_queues_of_rpc_clients_still_get_replies(
    start_worker: StartWorker, observer: Observer, broker: Broker, amqp_url: str
) -> None:
    """Server-named queues (amq.gen-...), what most RPC clients reply to, are in the amq.
    namespace and still get their replies."""
    await start_worker()
    connection = await aio_pika.connect(amqp_url)  # not robust: the broker names the queue
    try:
        channel = await connection.channel()
        server_named = await channel.declare_queue("", exclusive=True)
        assert server_named.name.startswith("amq.gen-")
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await server_named.consume(got.put, no_ack=True)
        await publish_command(broker.channel, broker.spec, command("rpc-gen", reply_to=server_named.name))
        assert (await asyncio.wait_for(got.get(), 30)).correlation_id == "rpc-gen"

    finally:
        await connection.close()
