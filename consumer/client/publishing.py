"""Publishing with publisher confirms and ``mandatory``: a message the broker cannot route or
refuses becomes an exception for the caller, never a silent loss."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.exceptions import ChannelInvalidStateError, ChannelNotFoundEntity, DeliveryError, PublishError

from consumer.client.errors import ConnectionLost, PublishFailed, TopologyMissing
from consumer.telemetry import tracing
from schemas import CONTENT_TYPE, ExecutionCommand, encode, utcnow
from schemas.headers import TASK_ID


def new_message_id() -> str:
    return uuid.uuid4().hex


def command_message(
    command: ExecutionCommand, *, message_id: str | None = None, reply_to: str | None = None
) -> aio_pika.Message:
    """The AMQP message of a command: persistent JSON with a fresh ``message_id``; request/reply
    fields are also set as AMQP properties (the worker honours them first, as every AMQP client
    sets them; ``reply_to`` overrides the command's own, e.g. with direct reply-to). The current
    trace context travels in the ``traceparent``/``tracestate`` headers, so the worker's span and
    the engine's requests join the caller's trace."""
    headers: dict[str, Any] = {TASK_ID: command.task_id}
    tracing.inject(headers)
    return aio_pika.Message(
        body=encode(command),
        message_id=message_id or new_message_id(),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        reply_to=reply_to or command.reply_to,
        correlation_id=command.correlation_id,
        # The AMQP priority: RabbitMQ 4 quorum queues deliver priority 5-9 before 0-4; 3.x ignores it.
        priority=command.priority,
        timestamp=utcnow(),
        headers=headers,
    )


async def confirm_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel whose publishes wait for the broker's confirm and raise on a return."""
    return await connection.channel(publisher_confirms=True, on_return_raises=True)


async def publish_confirmed(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    *,
    task_id: str | None = None,
    timeout: float | None = None,
) -> None:
    """Publish ``message`` and return once the broker has taken responsibility for it."""
    try:
        await exchange.publish(message, routing_key, mandatory=True, timeout=timeout)
    except PublishError as exc:
        raise PublishFailed(
            f"RabbitMQ could not route the message to any queue (exchange {exchange.name!r}, "
            f"routing key {routing_key!r}): {_reply_text(exc)}",
            task_id=task_id,
        ) from None
    except DeliveryError as exc:
        raise PublishFailed(
            f"RabbitMQ refused the message (exchange {exchange.name!r}, routing key {routing_key!r}); "
            f"is the queue full? ({type(exc.frame).__name__})",
            task_id=task_id,
        ) from None
    except ChannelNotFoundEntity as exc:
        raise TopologyMissing(f"{exc}; declare the topology first (dagger-adapter topology declare)") from None
    except ChannelInvalidStateError:
        # A robust connection is reconnecting: nothing was sent, the caller decides whether to retry.
        raise ConnectionLost(
            f"not connected to RabbitMQ (the connection was lost); nothing was published to {exchange.name!r}"
        ) from None
    except TimeoutError:
        if timeout is None:
            raise
        raise PublishFailed(
            f"RabbitMQ did not confirm the message within {timeout:g} s (exchange {exchange.name!r}); "
            "it may or may not have been taken",
            task_id=task_id,
        ) from None


def _reply_text(exc: PublishError) -> str:
    delivery: Any = getattr(exc.message, "delivery", None)
    return str(getattr(delivery, "reply_text", "") or "NO_ROUTE")


async def require_exchange(connection: AbstractConnection, name: str) -> None:
    """Fail with ``TopologyMissing`` when exchange ``name`` does not exist."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(name, passive=True)
    except ChannelNotFoundEntity:
        raise TopologyMissing(
            f"exchange {name!r} does not exist; declare the topology first (dagger-adapter topology declare)"
        ) from None
    finally:
        if not channel.is_closed:
            await channel.close()


async def require_queue(connection: AbstractConnection, name: str) -> int:
    """The number of ready messages in queue ``name``; ``TopologyMissing`` when it does not exist."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    except ChannelNotFoundEntity:
        raise TopologyMissing(
            f"queue {name!r} does not exist; declare the topology first (dagger-adapter topology declare)"
        ) from None
    finally:
        if not channel.is_closed:
            await channel.close()
