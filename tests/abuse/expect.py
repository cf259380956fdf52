"""What every abuse test checks once the worker has dealt with a hostile message."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from consumer.worker import Worker
from schemas import DeadLetterHeaders
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, command, drain_queue, publish_command, wait_until
from topology import Topology, queue_depths


@dataclass
class Broker:
    """The test's view of its topology: a connection (queue depths) and a channel (publishing,
    draining)."""

    connection: AbstractRobustConnection
    channel: AbstractChannel
    spec: Topology
    sent: dict[str, bytes] = field(default_factory=dict)  # message id -> body

    async def depth(self, queue: str) -> int:
        return (await queue_depths(self.connection, self.spec))[queue] or 0

    async def publish(
        self, body: bytes | dict[str, Any], routing_key: str = "dagger_pipeline", **properties: Any
    ) -> str:
        """Publish to the tasks exchange like any publisher may (JSON for a mapping); the message id."""
        data = orjson.dumps(body) if isinstance(body, dict) else body
        exchange = await self.channel.get_exchange(self.spec.tasks_exchange, ensure=False)
        message_id = properties.pop("message_id", uuid.uuid4().hex)
        await exchange.publish(
            aio_pika.Message(data, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
            routing_key=routing_key,
        )
        self.sent[message_id] = data
        return message_id


async def invalid_dead_letters(
    broker: Broker, observer: Observer, worker: Worker, *, reasons: dict[str, str], timeout: float = 30
) -> dict[str, DeadLetterHeaders]:
    """``reasons``: message id -> what its refusal must say. Wait for that many dead letters, let
    the worker go round a few heartbeats (one more, or a requeue loop, would show), then take
    the dead-letter queue: exactly one per message, each ``invalid`` with its reason, the body
    unchanged; nothing left in the tasks queue."""
    spec = broker.spec

    async def arrived() -> bool:
        return await broker.depth(spec.dead_queue) >= len(reasons)

    await wait_until(arrived, timeout, f"{len(reasons)} dead letter(s)")
    await observer.wait_heartbeats(3, 15, lambda b: b.worker_id == worker.worker_id)
    await wait_until(lambda: worker.in_flight == 0, 15, "the messages settled")
    assert await broker.depth(spec.tasks_queue) == 0, "a command is still (or again) in the tasks queue"
    letters = await drain_queue(broker.channel, spec.dead_queue)
    by_id = {letter.message_id: letter for letter in letters}
    assert len(letters) == len(by_id) == len(reasons), (
        f"{len(letters)} dead letters: {[dict(m.headers) for m in letters]}"
    )
    assert set(by_id) == set(reasons)
    out = {}
    for message_id, reason in reasons.items():
        why = DeadLetterHeaders.from_headers(dict(by_id[message_id].headers))
        assert why.error_category == "invalid", why
        assert reason in why.error, f"{reason!r} not in {why.error!r}"
        if message_id in broker.sent:
            assert by_id[message_id].body == broker.sent[message_id]
        out[message_id] = why
    return out


async def exactly_one_invalid_dead_letter(
    broker: Broker, observer: Observer, worker: Worker, *, message_id: str, reason: str
) -> DeadLetterHeaders:
    found = await invalid_dead_letters(broker, observer, worker, reasons={message_id: reason})
    return found[message_id]


async def still_works(broker: Broker, observer: Observer, task_id: str = "after-abuse") -> None:
    """A well-formed command afterwards runs and succeeds: the worker was not wedged."""
    await publish_command(broker.channel, broker.spec, command(task_id))
    await observer.wait_for(lambda: observer.results_for(task_id), 30, "the good command's result")
    assert observer.results_for(task_id)[0].success


def engine_untouched(engine: TestEngine, requests_before: int) -> None:
    """Nothing of the hostile command reached the engine: no exec, no request at all."""
    assert engine.execs == []
    assert engine.request_count == requests_before, "the engine was called"
