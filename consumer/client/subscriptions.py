"""Live events from a topic exchange, through a private queue bound with the narrowest keys."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueueIterator
from aiormq.exceptions import ChannelNotFoundEntity

from consumer.client.errors import TopologyMissing
from schemas import ExecutionResult, InvalidMessage, StatusEvent, WorkerHeartbeat, decode
from topology import Topology

log = logging.getLogger(__name__)

E = TypeVar("E")

# How many events may be in flight to one subscriber before RabbitMQ waits for it.
PREFETCH = 256
# How many message ids a subscription remembers to recognise a repeated copy of an event.
REMEMBERED_IDS = 10_000


class Subscription(Generic[E]):
    """An async iterator of events. ``async with`` it to be sure the queue is bound before
    acting (events published before that are not seen: the exchanges are pub/sub, not logs).
    Iterating without ``async with`` binds on the first ``__anext__``.

    A copy of an event already delivered (the same AMQP ``message_id``: a result republished
    after a lost confirm, or to a duplicate command) is dropped and counted in ``duplicates``."""

    def __init__(
        self,
        connection: AbstractConnection,
        exchange: str,
        routing_keys: Sequence[str],
        decode_event: Callable[[AbstractIncomingMessage], E | None],
        accept: Callable[[E], bool] = lambda _event: True,
        *,
        stream: str | None = None,
        stream_offset: Any = None,
    ) -> None:
        """With ``stream``, read that stream queue from ``stream_offset`` (``"first"``, a
        ``datetime``, an offset) instead of a private queue bound to ``exchange``."""
        self._connection = connection
        self.exchange = exchange
        self.routing_keys = tuple(routing_keys)
        self._decode = decode_event
        self._accept = accept
        self._channel: AbstractChannel | None = None
        self._iterator: AbstractQueueIterator | None = None
        self._closed = False
        self.stream = stream
        self._stream_offset = stream_offset
        self.on_close: Callable[[Subscription[E]], None] | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0

    async def open(self) -> None:
        if self._iterator is not None:
            return
        if self._closed:
            raise RuntimeError("this subscription is closed")
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=PREFETCH)  # a stream consumer needs one
            if self.stream is not None:
                queue = await channel.declare_queue(self.stream, passive=True)
                iterator = queue.iterator(arguments={"x-stream-offset": self._stream_offset})
            else:
                exchange = await channel.get_exchange(self.exchange, ensure=True)
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                for key in self.routing_keys:
                    await queue.bind(exchange, routing_key=key)
                iterator = queue.iterator()
        except ChannelNotFoundEntity:
            what = f"queue {self.stream!r}" if self.stream is not None else f"exchange {self.exchange!r}"
            raise TopologyMissing(
                f"{what} does not exist; declare the topology first (dagger-adapter topology declare)"
            ) from None
        except BaseException:
            if not channel.is_closed:
                await channel.close()
            raise
        self._channel = channel
        self._iterator = iterator

    def __aiter__(self) -> Subscription[E]:
        return self

    async def __anext__(self) -> E:
        if self._closed:
            raise StopAsyncIteration
        await self.open()
        assert self._iterator is not None
        while True:
            message = await self._iterator.__anext__()
            await message.ack()
            if self._repeated(message.message_id):
                self.duplicates += 1
                continue
            event = self._decode(message)
            if event is not None and self._accept(event):
                return event

    def _repeated(self, message_id: str | None) -> bool:
        if not message_id:
            return False
        if message_id in self._seen:
            return True
        self._seen[message_id] = None
        if len(self._seen) > REMEMBERED_IDS:
            self._seen.popitem(last=False)
        return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._iterator is not None:
            await self._iterator.close()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()  # the queue is auto-delete: it goes with its consumer
        if self.on_close is not None:
            self.on_close(self)

    async def __aenter__(self) -> Subscription[E]:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def result_routing_keys(spec: Topology, execution_type: str | None, outcome: str | None) -> list[str]:
    """The one binding that selects exactly the wanted results on the server."""
    return [spec.result_routing_key(execution_type or "*", outcome or "*")]


def status_routing_keys(spec: Topology, states: Sequence[str] | None, tasks: bool, heartbeats: bool) -> list[str]:
    keys: list[str] = []
    if tasks:
        keys += [spec.status_routing_key(s) for s in states] if states else [spec.status_routing_key("*")]
    if heartbeats:
        keys.append(spec.heartbeat_routing_key)
    return keys


def decode_result(message: AbstractIncomingMessage) -> ExecutionResult | None:
    try:
        return decode(message.body, ExecutionResult)
    except InvalidMessage as exc:
        log.warning("skipping a result event that is not an ExecutionResult (%s): %s", message.routing_key, exc)
        return None


def status_decoder(spec: Topology) -> Callable[[AbstractIncomingMessage], StatusEvent | WorkerHeartbeat | None]:
    def decode_status(message: AbstractIncomingMessage) -> StatusEvent | WorkerHeartbeat | None:
        cls: type[StatusEvent] | type[WorkerHeartbeat] = (
            WorkerHeartbeat if message.routing_key == spec.heartbeat_routing_key else StatusEvent
        )
        try:
            return decode(message.body, cls)
        except InvalidMessage as exc:
            log.warning("skipping a status event that is not a %s (%s): %s", cls.__name__, message.routing_key, exc)
            return None

    return decode_status
