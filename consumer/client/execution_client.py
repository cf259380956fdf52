"""``ExecutionClient``: what platform code uses to publish commands and hear back."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from consumer.client.errors import ClientError
from consumer.client.publishing import (
    command_message,
    confirm_channel,
    new_message_id,
    publish_confirmed,
    require_exchange,
)
from consumer.client.replies import ReplyRouter
from consumer.client.result_store import ResultStore
from consumer.client.subscriptions import (
    Subscription,
    decode_result,
    result_routing_keys,
    status_decoder,
    status_routing_keys,
)
from consumer.config import check_amqp_url
from consumer.telemetry import tracing
from schemas import (
    ExecutionCommand,
    ExecutionResult,
    ExecutionType,
    Outcome,
    StatusEvent,
    TaskState,
    WorkerHeartbeat,
    parse_parameters,
    utcnow,
)
from topology import Topology

E = TypeVar("E")


class ExecutionClient:
    """Submit commands, wait for their results, watch results and status.

    Use ``client = await ExecutionClient.connect(url, topology)`` (then ``await client.close()``),
    or ``async with ExecutionClient.connect(url, topology) as client:``. On an existing
    connection: ``ExecutionClient(connection, topology)`` (then ``await client.start()``); the
    connection stays the caller's.

    Everything goes over one connection: one confirm channel for publishing, one reply queue
    for every ``submit_and_wait`` in flight, one private queue per ``results``/``status`` stream.
    """

    def __init__(
        self,
        connection: AbstractConnection,
        topology: Topology | None = None,
        *,
        publish_timeout: float | None = 30.0,
        owns_connection: bool = False,
        valkey_url: str | None = None,
    ) -> None:
        self.connection = connection
        self.topology = topology or Topology()
        self.valkey_url = valkey_url
        self._results: ResultStore | None = None
        self.publish_timeout = publish_timeout
        self._owns_connection = owns_connection
        self._replies = ReplyRouter(connection)
        self._subscriptions: set[Subscription[Any]] = set()
        self._channel: AbstractChannel | None = None
        self._tasks: AbstractExchange | None = None
        self._start_lock = asyncio.Lock()

    @classmethod
    def connect(
        cls, amqp_url: str, topology: Topology | None = None, *, timeout: float = 10.0, valkey_url: str | None = None
    ) -> _Connecting:
        """Open a robust connection and a client on it; await it, or use it with ``async with``.
        ``valkey_url`` (the workers' Valkey) is needed only by ``get_result``."""
        return _Connecting(cls, amqp_url, topology, timeout, valkey_url)

    async def start(self) -> ExecutionClient:
        """Check the topology exists and open the publishing channel."""
        async with self._start_lock:
            if self._tasks is None:
                await require_exchange(self.connection, self.topology.tasks_exchange)
                self._channel = await confirm_channel(self.connection)
                self._tasks = await self._channel.get_exchange(self.topology.tasks_exchange, ensure=False)
        return self

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._replies.close()
        if self._results is not None:
            await self._results.close()
            self._results = None
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = self._tasks = None
        if self._owns_connection and not self.connection.is_closed:
            await self.connection.close()

    async def __aenter__(self) -> ExecutionClient:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- publishing ---
    async def submit(self, command: ExecutionCommand) -> str:
        """Publish ``command`` to the tasks exchange; return its task id once RabbitMQ has it.

        Raises ``InvalidMessage`` for bad parameters (before anything is sent), ``PublishFailed``
        when RabbitMQ cannot route or refuses the message, ``TopologyMissing`` without a topology.
        """
        await self._publish(command)
        return command.task_id

    async def submit_and_wait(self, command: ExecutionCommand, timeout: float) -> ExecutionResult:
        """Submit ``command`` and wait up to ``timeout`` seconds for its result.

        The request is standard AMQP RPC over RabbitMQ's direct reply-to: the ``reply_to``
        property is ``amq.rabbitmq.reply-to`` (no reply queue is declared), the correlation id
        (``command.correlation_id`` or a fresh one) is in the body and the properties. A repeated
        copy of the reply (same ``message_id``) is dropped.
        Raises ``TimeoutError`` when no result came in time, ``ConnectionLost`` at once when
        the connection drops while waiting (the reply queue goes with it); the task may still run.
        """
        correlation_id = command.correlation_id or new_message_id()
        async with asyncio.timeout(timeout):
            await self.start()
            assert self._channel is not None
            reply_to = await self._replies.reply_to(self._channel)  # consumed on the publishing channel
            command = msgspec.structs.replace(command, reply_to=None, correlation_id=correlation_id)
            waiting = self._replies.expect(correlation_id)  # before publishing: a reply can be quick
            try:
                await self._publish(command, reply_to=reply_to)
                return await waiting
            finally:
                self._replies.forget(correlation_id)

    @property
    def waiting(self) -> int:
        """How many ``submit_and_wait`` calls are waiting for their result."""
        return len(self._replies)

    async def _publish(self, command: ExecutionCommand, *, reply_to: str | None = None) -> None:
        parse_parameters(command.execution_type, command.parameters)  # raises InvalidMessage
        if command.submitted_at is None:
            command = msgspec.structs.replace(command, submitted_at=utcnow())
        if self._tasks is None:
            await self.start()
        assert self._tasks is not None
        # A PRODUCER span when the application traces (a no-op otherwise); its context goes in the headers.
        with tracing.publish_span(
            self.topology.tasks_exchange, task_id=command.task_id, execution_type=command.execution_type.value
        ):
            await publish_confirmed(
                self._tasks,
                command_message(command, reply_to=reply_to),
                self.topology.task_routing_key(command.execution_type.value),
                task_id=command.task_id,
                timeout=self.publish_timeout,
            )

    # --- looking up ---
    async def get_result(self, task_id: str) -> ExecutionResult | None:
        """What became of ``task_id``: its final result as the workers recorded it (success, or the
        failure that was dead-lettered), or None when no outcome is recorded (unknown, expired,
        or not finished yet). Reads the workers' outcome records in Valkey: needs ``valkey_url``."""
        if self.valkey_url is None:
            raise ClientError("get_result needs the workers' Valkey: pass valkey_url to the ExecutionClient")
        if self._results is None:
            self._results = ResultStore(self.valkey_url, self.topology)
        return await self._results.get(task_id)

    # --- watching ---
    def results(
        self,
        execution_type: ExecutionType | str | None = None,
        outcome: Outcome | str | None = None,
        task_id: str | None = None,
        *,
        since: datetime | timedelta | Literal["first"] | None = None,
    ) -> Subscription[ExecutionResult]:
        """Result events published from now on; with ``since``, first those kept in the results
        stream from that time (a ``datetime``, a ``timedelta`` back from now, or ``"first"`` for
        all it keeps), then new ones as they come: a subscriber that was down misses nothing.

        Live only: type and outcome are filtered by RabbitMQ (routing keys), ``task_id`` here.
        From the stream, everything is filtered here; RabbitMQ starts at the chunk holding
        ``since``, so a few results from shortly before it may come too."""
        wanted_type, wanted_outcome = _value(execution_type), _value(outcome)
        keys = result_routing_keys(self.topology, wanted_type, wanted_outcome)

        def accept(r: ExecutionResult) -> bool:
            return (
                (task_id is None or r.task_id == task_id)
                and (wanted_outcome is None or r.outcome.value == wanted_outcome)
                and (wanted_type is None or (r.execution_type is not None and r.execution_type.value == wanted_type))
            )

        if since is None:
            return self._track(
                Subscription(self.connection, self.topology.results_exchange, keys, decode_result, accept)
            )
        offset: Any = since
        if isinstance(since, timedelta):
            offset = datetime.now(UTC) - since
        elif since != "first" and not isinstance(since, datetime):
            raise ValueError('since: a datetime, a timedelta or "first"')
        return self._track(
            Subscription(
                self.connection,
                self.topology.results_exchange,
                keys,
                decode_result,
                accept,
                stream=self.topology.results_stream,
                stream_offset=offset,
            )
        )

    def status(
        self,
        *,
        task_id: str | None = None,
        states: Sequence[TaskState | str] | None = None,
        tasks: bool = True,
        heartbeats: bool = True,
    ) -> Subscription[StatusEvent | WorkerHeartbeat]:
        """Task status events (``StatusEvent``) and worker heartbeats (``WorkerHeartbeat``)
        published from now on. ``task_id`` filters task events; heartbeats pass it."""
        keys = status_routing_keys(self.topology, [str(_value(s)) for s in states or ()], tasks, heartbeats)

        def accept(event: StatusEvent | WorkerHeartbeat) -> bool:
            return task_id is None or isinstance(event, WorkerHeartbeat) or event.task_id == task_id

        return self._track(
            Subscription(self.connection, self.topology.status_exchange, keys, status_decoder(self.topology), accept)
        )

    def _track(self, subscription: Subscription[E]) -> Subscription[E]:
        self._subscriptions.add(subscription)
        subscription.on_close = self._subscriptions.discard
        return subscription


def _value(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


class _Connecting:
    """``await`` it for a started client, or ``async with`` it for one closed on exit."""

    def __init__(
        self, cls: type[ExecutionClient], url: str, topology: Topology | None, timeout: float, valkey_url: str | None
    ) -> None:
        self._cls, self._url, self._topology, self._timeout = cls, url, topology, timeout
        self._valkey_url = valkey_url
        self._client: ExecutionClient | None = None

    async def _open(self) -> ExecutionClient:
        check_amqp_url(self._url)
        connection = await aio_pika.connect_robust(self._url, timeout=self._timeout, fail_fast=True)
        client = self._cls(connection, self._topology, owns_connection=True, valkey_url=self._valkey_url)
        try:
            return await client.start()
        except BaseException:
            await client.close()
            raise

    def __await__(self) -> Generator[Any, None, ExecutionClient]:
        return self._open().__await__()

    async def __aenter__(self) -> ExecutionClient:
        self._client = await self._open()
        return self._client

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.close()
