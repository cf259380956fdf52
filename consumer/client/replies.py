"""Request/reply over RabbitMQ's direct reply-to: many concurrent waits share the channel's
``amq.rabbitmq.reply-to`` pseudo-queue (no queue is declared; the broker routes the reply straight
to this channel's consumer), and each reply finds its waiter by correlation id."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from consumer.client.errors import ClientError, ConnectionLost
from schemas import ExecutionResult, InvalidMessage, decode

log = logging.getLogger(__name__)

# What a request carries in its ``reply_to`` property; RabbitMQ rewrites it to a name of its own.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class ReplyRouter:
    """Consumes direct reply-to on the channel requests are published on (RabbitMQ requires the
    same channel) and keeps the map ``correlation id -> future`` of the calls waiting."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._pending: dict[str, asyncio.Future[ExecutionResult]] = {}
        self._consuming_on: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._lock = asyncio.Lock()
        # Also on every drop of a robust connection: the reply consumer goes with the channel, so
        # the calls waiting can never get their reply; a later call consumes again.
        connection.close_callbacks.add(self._on_connection_lost)

    async def reply_to(self, channel: AbstractChannel) -> str:
        """What a request published on ``channel`` sets as ``reply_to``; consumes on first use."""
        async with self._lock:
            if self._consuming_on is not channel:
                queue = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
                await queue.consume(self._on_reply, no_ack=True)
                self._consuming_on, self._queue = channel, queue
            return DIRECT_REPLY_TO

    def __contains__(self, correlation_id: str) -> bool:
        return correlation_id in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def expect(self, correlation_id: str) -> asyncio.Future[ExecutionResult]:
        if correlation_id in self._pending:
            raise ValueError(f"a call with correlation id {correlation_id!r} is already waiting")
        future: asyncio.Future[ExecutionResult] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        return future

    def forget(self, correlation_id: str) -> None:
        future = self._pending.pop(correlation_id, None)
        if future is not None and not future.done():
            future.cancel()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            result: ExecutionResult | None = decode(message.body, ExecutionResult)
            error = None
        except InvalidMessage as exc:
            result, error = None, exc
        # The contract sets the AMQP correlation_id; a replier that only echoes the task id
        # (the default correlation id) is still understood.
        key = message.correlation_id or (result.task_id if result is not None else None)
        future = self._pending.get(key or "")
        if future is None or future.done():
            log.debug("reply with correlation id %r has no waiting call (late or duplicate)", key)
            return
        if result is not None:
            future.set_result(result)
        else:
            future.set_exception(ClientError(f"the reply to {key!r} is not a valid ExecutionResult: {error}"))

    def _on_connection_lost(self, _connection: Any, _exc: BaseException | None = None) -> None:
        self._consuming_on = self._queue = None
        self._fail_all(ConnectionLost, "lost the connection to RabbitMQ while waiting for a result")

    def _fail_all(self, error: type[ClientError], message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error(message))
        self._pending.clear()

    async def close(self) -> None:
        """Fail the calls still waiting; the consumer goes with the client's channel."""
        self._connection.close_callbacks.discard(self._on_connection_lost)
        self._fail_all(ClientError, "the client was closed while waiting for a result")
        self._consuming_on = self._queue = None
