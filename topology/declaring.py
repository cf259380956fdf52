"""Declare the topology on a channel: idempotent, and clear about conflicts."""

from __future__ import annotations

from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue

from topology.spec import Topology

_KINDS = {
    "topic": aio_pika.ExchangeType.TOPIC,
    "direct": aio_pika.ExchangeType.DIRECT,
    "fanout": aio_pika.ExchangeType.FANOUT,
}


class TopologyConflict(RuntimeError):
    """An exchange or queue already exists with other settings than ours."""


class DeclaredTopology:
    """What ``declare`` returns: the exchange and queue objects, by role."""

    def __init__(self, spec: Topology, exchanges: dict[str, AbstractExchange], queues: dict[str, AbstractQueue]):
        self.spec = spec
        self.exchanges = exchanges
        self.queues = queues

    @property
    def tasks(self) -> AbstractExchange:
        return self.exchanges[self.spec.tasks_exchange]

    @property
    def results(self) -> AbstractExchange:
        return self.exchanges[self.spec.results_exchange]

    @property
    def status(self) -> AbstractExchange:
        return self.exchanges[self.spec.status_exchange]

    @property
    def dead(self) -> AbstractExchange:
        return self.exchanges[self.spec.dead_exchange]

    @property
    def retry(self) -> AbstractExchange:
        return self.exchanges[self.spec.retry_exchange]

    @property
    def tasks_queue(self) -> AbstractQueue:
        return self.queues[self.spec.tasks_queue]

    @property
    def dead_queue(self) -> AbstractQueue:
        return self.queues[self.spec.dead_queue]


async def declare(connection: AbstractConnection, spec: Topology) -> DeclaredTopology:
    """Declare every exchange, queue and binding of ``spec`` on a channel of ``connection``.

    Safe to run any number of times. A queue or exchange that exists with different arguments
    makes RabbitMQ close the channel (PRECONDITION_FAILED); that becomes ``TopologyConflict``
    naming the object, and the caller's connection stays usable. The channel used stays open
    (robust channels re-declare what was declared on them after a reconnect).
    """
    channel = await connection.channel()
    exchanges: dict[str, AbstractExchange] = {}
    queues: dict[str, AbstractQueue] = {}
    current = ""
    try:
        for ex in spec.exchanges:
            current = f"exchange {ex.name!r}"
            exchanges[ex.name] = await channel.declare_exchange(ex.name, _KINDS[ex.kind], durable=True)
        for q in spec.queues:
            current = f"queue {q.name!r}"
            queue = await channel.declare_queue(q.name, durable=True, arguments=q.arguments)
            for exchange, key in q.bindings:
                await queue.bind(exchanges[exchange], routing_key=key)
            queues[q.name] = queue
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyConflict(
            f"{current} already exists with different settings ({exc}). "
            + (
                "It was made by an older version (classic retry queues): stop the old workers and run "
                "`dagger-adapter topology migrate`, which moves its waiting retries over. "
                if current in {f"queue {t.queue!r}" for t in spec.retry_tiers}
                else ""
            )
            + "Otherwise delete it, or choose another topology prefix (DAGGER_ADAPTER_TOPOLOGY_PREFIX)."
        ) from None
    return DeclaredTopology(spec, exchanges, queues)


async def migrate(connection: AbstractConnection, spec: Topology) -> list[str]:
    """Bring a deployment declared by an older version to ``spec``; one line per change made.

    A retry tier that exists with other settings (a classic queue) is unbound, its waiting retries
    are handed back to the tasks queue at once (published with confirms, each acked from the old
    queue only after that: none is lost, at worst one comes back twice and the ledger answers the
    copy), and it is deleted and declared anew. Other conflicts are reported, not touched: they
    may hold commands. Run it with the old workers stopped. Declares everything at the end."""
    changes: list[str] = []
    for tier in spec.retry_tiers:
        queue_spec = next(q for q in spec.queues if q.name == tier.queue)
        if await _declares_cleanly(connection, queue_spec.name, queue_spec.arguments):
            continue
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            old = await channel.declare_queue(tier.queue, passive=True)
            retry_exchange = await channel.get_exchange(spec.retry_exchange, ensure=False)
            await old.unbind(retry_exchange, routing_key=tier.routing_key)
            tasks = await channel.declare_exchange(spec.tasks_exchange, _KINDS["topic"], durable=True)
            moved = 0
            while (message := await old.get(no_ack=False, fail=False)) is not None:
                await tasks.publish(
                    aio_pika.Message(
                        message.body,
                        headers=message.headers,
                        content_type=message.content_type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=message.message_id,
                        correlation_id=message.correlation_id,
                        reply_to=message.reply_to,
                        priority=message.priority,
                    ),
                    spec.retry_return_routing_key(tier),
                    mandatory=True,
                )
                await message.ack()
                moved += 1
            await old.delete(if_unused=False, if_empty=True)
        finally:
            if not channel.is_closed:
                await channel.close()
        changes.append(
            f"queue {tier.queue!r}: re-declared as {queue_spec.queue_type}; {moved} waiting retries sent back"
        )
    await declare(connection, spec)
    return changes


async def _declares_cleanly(connection: AbstractConnection, name: str, arguments: dict[str, Any]) -> bool:
    """Whether queue ``name`` can be declared with ``arguments`` (absent, or present with those)."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
        return True
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def delete(connection: AbstractConnection, spec: Topology) -> None:
    """Delete every queue (with its messages) and exchange of ``spec``: for tests and benchmarks
    that made a topology of their own."""
    channel = await connection.channel()
    try:
        for q in spec.queues:
            await channel.queue_delete(q.name)
        for ex in spec.exchanges:
            await channel.exchange_delete(ex.name)
    finally:
        if not channel.is_closed:
            await channel.close()


async def queue_depths(connection: AbstractConnection, spec: Topology) -> dict[str, int | None]:
    """Messages ready in each of our queues (passive declare; None where a queue is missing)."""
    depths: dict[str, int | None] = {}
    for q in spec.queues:
        channel: AbstractChannel = await connection.channel()
        try:
            queue = await channel.declare_queue(q.name, passive=True)
            depths[q.name] = queue.declaration_result.message_count
        except aiormq.exceptions.ChannelNotFoundEntity:
            depths[q.name] = None
        finally:
            if not channel.is_closed:
                await channel.close()
    return depths
