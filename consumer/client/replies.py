"""Request/reply over one private queue: many concurrent waits share a single reply queue,
and each reply finds its waiter by correlation id."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from consumer.client.errors import ClientError, ConnectionLost
from schemas import ExecutionResult, InvalidMessage, decode

log = logging.getLogger("dagger_adapter.client.replies")


class ReplyRouter:
    """Owns the client's reply queue (exclusive, auto-delete, declared on first use) and the
    map ``correlation id -> future`` of the calls waiting on it."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._pending: dict[str, asyncio.Future[ExecutionResult]] = {}
        self._channel: AbstractChannel | None = None
        self._queue_name: str | None = None
        self._lock = asyncio.Lock()
        # Also on every drop of a robust connection: the exclusive reply queue is deleted with
        # the connection, so a reply published before it is re-declared is lost for good.
        connection.close_callbacks.add(self._on_connection_lost)

    async def queue_name(self) -> str:
        """The reply queue's name, declaring it and starting to consume on first use."""
        async with self._lock:
            if self._queue_name is None:
                channel = await self._connection.channel(publisher_confirms=False)
                # No name: aio-pika picks one client-side, so a robust reconnect re-declares the
                # same queue and the replies of calls still waiting find it again.
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                await queue.consume(self._on_reply, no_ack=True)
                self._channel, self._queue_name = channel, queue.name
            return self._queue_name

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
        self._fail_all(ConnectionLost, "lost the connection to RabbitMQ while waiting for a result")

    def _fail_all(self, error: type[ClientError], message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error(message))
        self._pending.clear()

    async def close(self) -> None:
        self._connection.close_callbacks.discard(self._on_connection_lost)
        self._fail_all(ClientError, "the client was closed while waiting for a result")
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None
