"""The console's one link to RabbitMQ: it listens to results, status events and heartbeats,
polls queue depths, keeps what it saw (``History``), and tells the open pages what changed.

While RabbitMQ cannot be reached (or the topology is not declared), the hub says why in
``broker`` and tries again with backoff; pages show that as a banner, never as a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiormq
from aio_pika.abc import AbstractRobustConnection

from consumer.broker import BrokerUnavailable, connect_broker
from consumer.client import ClientError, DeadLetterQueue, ExecutionClient, Subscription, TopologyMissing
from consumer.config import DaggerAdapterConfig, redact_url, topology_for
from consumer.webconsole.history import History
from schemas import ExecutionResult, StatusEvent, WorkerHeartbeat
from topology import queue_depths

log = logging.getLogger("dagger_adapter.webconsole.hub")

DEPTH_POLL_SECONDS = 2.0
RETRY_MAX_SECONDS = 15.0
STALE_AFTER_INTERVALS = 3  # as `dagger-adapter status`
LATE_AFTER_INTERVALS = 1.8
FORGET_AFTER_SECONDS = 600.0  # a worker unheard this long leaves the fleet table
NOTICE_BACKLOG = 256
DEFAULT_BACKFILL = timedelta(hours=1)
RESUME_MARGIN = timedelta(
    seconds=5
)  # read a little before the last result seen: duplicates are dropped  # notices queued per page before the oldest are dropped (a slow page refetches anyway)


@dataclass
class BrokerState:
    connected: bool = False
    error: str | None = "connecting to RabbitMQ…"
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    retry_at: datetime | None = None


@dataclass
class SeenWorker:
    heartbeat: WorkerHeartbeat
    last_seen: datetime
    interval: float  # seconds between its last two heartbeats (or the configured interval)

    def age(self, now: datetime) -> float:
        return (now - self.last_seen).total_seconds()

    def freshness(self, now: datetime) -> str:
        """fresh | late | stale, by how many of its heartbeat intervals it has been silent."""
        age = self.age(now)
        if age > self.interval * STALE_AFTER_INTERVALS:
            return "stale"
        if age > self.interval * LATE_AFTER_INTERVALS:
            return "late"
        return "fresh"


@dataclass(frozen=True)
class Notice:
    """What changed, for the pages: ``kind`` is fleet | flow | broker; for flow, the task id and
    its state (a status event's state, or the result's outcome)."""

    kind: str
    task_id: str | None = None
    state: str | None = None


class Hub:
    def __init__(
        self,
        config: DaggerAdapterConfig,
        *,
        history_size: int | None = None,
        backfill: timedelta = DEFAULT_BACKFILL,
    ) -> None:
        self.config = config
        # Results from the results stream read at start (then, after a reconnect, from the last
        # one seen, so a dropped connection loses none); zero: only what happens from now on.
        self.backfill = backfill
        self._last_result_at: datetime | None = None
        self.topology = topology_for(config)
        self.where = redact_url(config.amqp_url)
        self.history = History(history_size) if history_size else History()
        self.broker = BrokerState()
        self.workers: dict[str, SeenWorker] = {}
        self.depths: dict[str, int | None] = {}
        self.client: ExecutionClient | None = None
        self.connection: AbstractRobustConnection | None = None
        # Browsing takes every dead letter off the queue until the channel closes: two browses at
        # once would each see part of it. One at a time in this process.
        self.dead_letter_lock = asyncio.Lock()
        self._listeners: set[asyncio.Queue[Notice]] = set()
        # Counts notices: a page knows the one it was rendered at, and the event stream says the
        # current one when it (re)connects, so a page catches up on what changed in between.
        self.version = 0
        self._retry_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def retry_now(self) -> None:
        self._retry_now.set()

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                connection = await connect_broker(self.config.amqp_url, timeout=5.0)
            except BrokerUnavailable as exc:
                self._down(str(exc), delay)
                await self._pause(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

            def on_close(_sender: Any, exc: BaseException | None = None, lost: asyncio.Future[Any] = lost) -> None:
                if not lost.done():
                    lost.set_result(exc)

            connection.close_callbacks.add(on_close)
            client = ExecutionClient(connection, self.topology)
            try:
                await client.start()
                async with await self._results(client) as results, client.status() as status:
                    self.connection, self.client = connection, client
                    self._up()
                    delay = 1.0
                    followers: list[asyncio.Future[Any]] = [
                        asyncio.create_task(self._follow(results)),
                        asyncio.create_task(self._follow(status)),
                        asyncio.create_task(self._poll_depths(connection)),
                        lost,
                    ]
                    try:
                        done, _ = await asyncio.wait(followers, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in followers:
                            task.cancel()
                        await asyncio.gather(*followers, return_exceptions=True)
                    for task in done:
                        error = None if task is lost or task.cancelled() else task.exception()
                        if error is not None:
                            raise error
                    why = lost.result() if lost.done() and not lost.cancelled() else None
                    raise ConnectionError(f"the connection to RabbitMQ was lost ({why or 'closed'})")
            except (ClientError, ConnectionError, aiormq.exceptions.AMQPError, RuntimeError) as exc:
                self._down(_one_line(exc), delay)
            finally:
                self.connection = self.client = None
                with contextlib.suppress(Exception):
                    await client.close()
                with contextlib.suppress(Exception):
                    await connection.close()
            await self._pause(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _results(self, client: ExecutionClient) -> Subscription[ExecutionResult]:
        """Results from the stream since the backfill window (or the last one seen), then live;
        live only when the topology has no results stream."""
        since = (self._last_result_at - RESUME_MARGIN) if self._last_result_at else datetime.now(UTC) - self.backfill
        if not self.backfill and self._last_result_at is None:
            return client.results()
        stream = client.results(since=since)
        try:
            await stream.open()
        except TopologyMissing:
            await stream.close()
            log.warning("console: no results stream in this topology; showing results from now on")
            return client.results()
        return stream

    async def _pause(self, seconds: float) -> None:
        self._retry_now.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retry_now.wait(), seconds)

    def _up(self) -> None:
        self.broker = BrokerState(connected=True, error=None)
        log.info("console connected to RabbitMQ at %s", self.where)
        self.notify(Notice("broker"))

    def _down(self, error: str, retry_in: float) -> None:
        now = datetime.now(UTC)
        was = self.broker
        since = was.since if not was.connected else now
        self.broker = BrokerState(False, error, since, now + timedelta(seconds=retry_in))
        if was.connected or was.error != error:
            log.warning("console: %s; retrying", error)
        self.notify(Notice("broker"))

    # --- what comes in ---
    async def _follow(self, events: AsyncIterator[Any]) -> None:
        async for event in events:
            now = datetime.now(UTC)
            if isinstance(event, WorkerHeartbeat):
                self._heartbeat(event, now)
                self.notify(Notice("fleet"))
            elif isinstance(event, StatusEvent):
                self.history.add_status(event, now)
                self.notify(Notice("flow", event.task_id, event.state.value))
            elif isinstance(event, ExecutionResult):
                self._last_result_at = now
                if not self.history.add_result(event, now):
                    continue  # read again after a reconnect
                self.notify(Notice("flow", event.task_id, event.outcome.value))

    def _heartbeat(self, beat: WorkerHeartbeat, now: datetime) -> None:
        before = self.workers.get(beat.worker_id)
        interval = self.config.heartbeat_interval_seconds
        if before is not None:
            gap = (now - before.last_seen).total_seconds()
            interval = max(0.1, min(gap, interval * 10)) if gap > 0 else before.interval
        self.workers[beat.worker_id] = SeenWorker(beat, now, interval)
        for worker_id in [w for w, seen in self.workers.items() if seen.age(now) > FORGET_AFTER_SECONDS]:
            del self.workers[worker_id]

    async def _poll_depths(self, connection: AbstractRobustConnection) -> None:
        while True:
            depths = await queue_depths(connection, self.topology)
            if self.dead_letter_lock.locked():
                # A browse holds the dead letters unacknowledged: the queue would look empty.
                depths[self.topology.dead_queue] = self.depths.get(self.topology.dead_queue)
            if depths != self.depths:
                self.depths = depths
                self.notify(Notice("fleet"))
            await asyncio.sleep(DEPTH_POLL_SECONDS)

    # --- what goes out ---
    def notify(self, notice: Notice) -> None:
        self.version += 1
        for queue in self._listeners:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(notice)

    @contextlib.contextmanager
    def listen(self) -> Any:
        queue: asyncio.Queue[Notice] = asyncio.Queue(NOTICE_BACKLOG)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    def dead_letters(self) -> DeadLetterQueue:
        if self.connection is None:
            raise ClientError(self.broker.error or "not connected to RabbitMQ")
        return DeadLetterQueue(self.connection, self.topology)

    def require_client(self) -> ExecutionClient:
        if self.client is None:
            raise ClientError(self.broker.error or "not connected to RabbitMQ")
        return self.client

    def workers_now(self, now: datetime) -> list[SeenWorker]:
        return sorted(self.workers.values(), key=lambda w: w.heartbeat.worker_id)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, aiormq.exceptions.AMQPError | ConnectionError) and "RabbitMQ" not in text:
        return f"lost the connection to RabbitMQ: {text}"
    return text
