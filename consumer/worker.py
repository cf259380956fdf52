"""The worker: consume execution commands from RabbitMQ and run each through ``DaggerAdapter``.

Lifecycle, top to bottom (``Worker.run``):

1. **start-up** — connect (aio-pika *robust* connection: it reconnects on its own and its robust
   channels re-declare the topology and re-start the consumer), declare the topology, initialise the
   adapter and the Valkey ledger, start the worker heartbeat, start consuming the tasks queue with
   manual ack and ``prefetch_count = max_concurrent_executions``.
2. **run** — each delivery is handled in a task of its own (``_handle``) until SIGTERM/SIGINT. While
   the engine's circuit breaker is open the worker stops consuming and probes the engine; it resumes
   after a probe succeeds.
3. **drain** — stop consuming; in-flight executions get ``drain_timeout_seconds`` to finish and be
   settled; executions still running then are cancelled and their commands requeued (nothing of them
   is published).
4. **shutdown** — stop the heartbeat, close the adapter, the ledger and the connection.

Per message (``_handle``): decode and validate -> ``received`` -> answered from the ledger when the
task already finished -> lease (a task running elsewhere is postponed, not started twice) ->
``running`` (+ periodic ``heartbeat``) -> one attempt through the adapter -> routed: success or a
final failure is recorded in the ledger, published (dead letter, result, reply) and only then acked;
a retryable failure goes to a delayed retry queue carrying the attempt count. Every publish is
confirmed by the broker; a message is acked only after its outcome is out.

What happens to a delivery (finish, retry after N s, postpone, put back; what the ledger's record
means for it) is decided in ``consumer.decisions`` from plain values; ``Worker._carry_out`` makes
the AMQP calls that carry the decision out. An outcome is recorded only as the task's first, under
the lease's fencing token (``consumer.ledger``): a worker whose lease was taken over publishes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
import msgspec
import pamqp.encode
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential
from valkey.exceptions import ValkeyError

from consumer.attempts import SEAL, AttemptSeal
from consumer.broker import BrokerUnavailable, connect_broker, publish_without_drain
from consumer.config import DaggerAdapterConfig, redact_url, topology_for
from consumer.decisions import (
    PUT_BACK_DELAY_SECONDS,
    Disposition,
    Finish,
    LedgerAnswer,
    Postpone,
    PutBack,
    Retry,
    after_attempt,
    answer_from_ledger,
    leased_elsewhere,
    open_circuit,
    replaced_by_replay,
)
from consumer.health import write_health_file
from consumer.ledger import Lease, Ledger, Recorded, StoredOutcome
from consumer.logs import task_context, worker_id_var
from consumer.telemetry import tracing
from consumer.telemetry.metrics import WorkerMetrics
from consumer.version import package_version
from schemas import (
    CONTENT_TYPE,
    DeadLetterHeaders,
    ErrorCategory,
    ExecutionCommand,
    ExecutionResult,
    ExecutionType,
    InvalidMessage,
    StatusEvent,
    TaskState,
    WorkerHeartbeat,
    decode_command,
    encode,
    fingerprint,
    peek,
    result_message_id,
    utcnow,
)
from schemas import headers as h
from schemas.messages import MAX_TASK_ID_LENGTH, is_identifier
from topology.declaring import DeclaredTopology, declare
from topology.spec import RETRY_ROUTING_PREFIX, UNKNOWN_EXECUTION_TYPE

if TYPE_CHECKING:
    from consumer.adapter import DaggerAdapter

log = logging.getLogger("dagger_adapter.worker")

# How long a publish waits for the broker to come back (robust reconnect) before giving up; the
# message is then not acked and comes back to a worker later.
PUBLISH_PATIENCE_SECONDS = 60.0
STATUS_PATIENCE_SECONDS = 10.0
# How long a publish on an open channel waits for the broker's confirm. Confirms come late under
# load (a busy broker, a busy event loop); one that never comes means a broker in trouble.
CONFIRM_TIMEOUT_SECONDS = 60.0
# Beyond timeout_seconds, the longest handling a command may take: resolving its images, and
# publishing its outcome while the broker reconnects (each publish PUBLISH_PATIENCE_SECONDS to get
# out, CONFIRM_TIMEOUT_SECONDS for its confirm) and settling. A handler holding its task's lease
# longer is stuck: the lease is let go, so that a copy of the command can run.
HANDLING_MARGIN_SECONDS = 900.0
# How long an ack (or requeue) may take to go out before the handler lets go of its message.
SETTLE_TIMEOUT_SECONDS = 30.0
# After the drain timeout, how long cancelled executions get to requeue their commands.
SETTLE_GRACE_SECONDS = 10.0
VALKEY_PROBE_SECONDS = 1.0

BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    aiormq.exceptions.ChannelInvalidStateError,  # the channel is closed (reconnecting)
)


# Commands at once between arriving and running (or settling), see ``Worker._handle``.
ADMITTED_AT_ONCE = 64


class Admitted:
    """A command's place among those arriving: taken on arrival, given back (once) when its
    execution is under way, when it starts waiting for a slot, or when it is settled."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = False

    async def enter(self) -> None:
        await self._places.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


class StartupFailed(RuntimeError):
    """RabbitMQ or Valkey could not be reached (or refused us) at start-up; the message is one line, no secrets."""


class Unroutable(RuntimeError):
    """A retry or dead letter that no queue took: the command it is for must not be acked."""


class ConfirmTimeout(RuntimeError):
    """A publish the broker did not confirm in time, on a channel that is still open. Not one of
    the ``BROKER_ERRORS``: the message may well be out, so it is not published again; the command
    is requeued and its copy is answered from the ledger."""


# What keeps a status event from going out: it is logged, and the command goes on.
STATUS_ERRORS: tuple[type[BaseException], ...] = (*BROKER_ERRORS, ConfirmTimeout)


class Unpublishable(RuntimeError):
    """A message the client library refused to send because of what it carries (a property or
    header over its AMQP size): publishing it again cannot help."""


_KNOWN_TYPES = frozenset(t.value for t in ExecutionType)
# The header RabbitMQ quorum queues set on a redelivered message: how often it was returned.
DELIVERY_COUNT = "x-delivery-count"


@dataclass(frozen=True)
class Delivery:
    """What the worker reads from an incoming message besides its body."""

    message: AbstractIncomingMessage
    attempts_before: int  # attempts already made (a sealed ``x-attempts``; 0 for a fresh command)
    message_id: str | None
    replay_id: str | None
    # Standard AMQP request/reply properties; they win over the command's body fields.
    reply_to: str | None = None
    correlation_id: str | None = None
    returned: int = 0  # times the broker got this message back before (``x-delivery-count``)
    fingerprint: str | None = None  # of the command, once decoded (``schemas.fingerprint``)

    @classmethod
    def of(cls, message: AbstractIncomingMessage, seal: AttemptSeal | None = None) -> Delivery:
        headers = message.headers or {}
        replay = headers.get(h.REPLAY_ID)
        # Only the broker's own redelivered flag makes its delivery count believable.
        returned = headers.get(DELIVERY_COUNT) if message.redelivered else 0
        return cls(
            message=message,
            attempts_before=seal.attempts_before(message.body, headers) if seal is not None else 0,
            message_id=message.message_id,
            replay_id=replay.decode() if isinstance(replay, bytes) else (str(replay) if replay else None),
            reply_to=_short_text(message.reply_to),
            correlation_id=_short_text(message.correlation_id),
            returned=returned if isinstance(returned, int) and returned > 0 else 0,
        )

    @property
    def attempt(self) -> int:
        """The number of the attempt this delivery is (1-based)."""
        return self.attempts_before + 1

    @property
    def original_routing_key(self) -> str:
        return self.message.routing_key or ""


class Worker:
    def __init__(self, config: DaggerAdapterConfig, adapter: DaggerAdapter | None = None) -> None:
        self.config = config
        self.spec = topology_for(config)
        if adapter is None:
            from consumer.adapter import DaggerAdapter

            adapter = DaggerAdapter(config)
        self.adapter = adapter
        self.worker_id = config.worker_id
        self.capacity = config.max_concurrent_executions
        self.limits = config.limits
        self._seal: AttemptSeal | None = None  # from Valkey, once it answers

        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._slots = asyncio.Semaphore(self.capacity)  # executions in flight, across reconnects too
        self._admission = asyncio.Semaphore(ADMITTED_AT_ONCE)  # commands between arriving and running
        self._handlers: set[asyncio.Task[None]] = set()
        self._executions: set[asyncio.Task[ExecutionResult]] = set()
        # Executions running now, and what their heartbeats say (``_task_heartbeat_loop``).
        self._beating: dict[asyncio.Task[ExecutionResult], tuple[ExecutionCommand, int]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._circuit_changed = asyncio.Event()
        self._consumer_tag: str | None = None
        self._paused_for: set[str] = set()  # dependencies that are down ("engine", "valkey")
        self._consume_lock = asyncio.Lock()

        self._connection: AbstractRobustConnection | None = None
        self._status_connection: AbstractRobustConnection | None = None
        self._status_channel: AbstractRobustChannel | None = None
        self._topology: DeclaredTopology | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._reply_channel: AbstractRobustChannel | None = None
        self._status_exchange: AbstractExchange | None = None
        self._heartbeat_exchange: AbstractExchange | None = None
        self._queue: AbstractRobustQueue | None = None
        self._ledger: Ledger | None = None
        self.metrics = WorkerMetrics(worker_id=self.worker_id, version=package_version(), capacity=self.capacity)
        self.metrics_port: int | None = None  # where /metrics is served, once started

    # ================================================================ lifecycle

    async def run(self) -> None:
        """Start, consume until ``request_stop``, drain, shut down."""
        try:
            await self.startup()
            await self._stop_requested.wait()
            await self.drain()
        finally:
            await self.shutdown()

    @property
    def in_flight(self) -> int:
        """Commands received and not yet settled (acked, put back or requeued)."""
        return len(self._handlers)

    def request_stop(self) -> None:
        """Begin a graceful stop (the SIGTERM/SIGINT handler calls this)."""
        if not self._stop_requested.is_set():
            log.info("stop requested: no new commands; draining in-flight executions")
        self._stop_requested.set()

    async def startup(self) -> None:
        worker_id_var.set(self.worker_id)
        self._warn_about_consumer_timeout()
        self._start_telemetry()
        try:
            self._connection = await connect_broker(self.config.amqp_url, reconnect_interval=1)
        except BrokerUnavailable as exc:
            raise StartupFailed(str(exc)) from None
        # Declared on robust channels: after a reconnect they re-declare all of it themselves.
        self._topology = await declare(self._connection, self.spec)
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._consume_channel = await self._connection.channel()
        await self._consume_channel.set_qos(prefetch_count=self.capacity)
        tasks_queue = next(q for q in self.spec.queues if q.name == self.spec.tasks_queue)
        self._queue = await self._consume_channel.declare_queue(
            tasks_queue.name, durable=True, arguments=tasks_queue.arguments
        )
        # Replies go through the default exchange, on a confirming channel of their own.
        self._reply_channel = await self._connection.channel()
        # Status events and heartbeats are informational: published on a channel without
        # publisher confirms, so no command waits for a confirm of its own progress report
        # (one may be lost if the broker fails at that moment; results and retries never are).
        # On a connection of their own: when the broker holds back a connection that publishes
        # faster than its queues take (flow control), a thousand executions' heartbeats must not
        # hold back the results, acks and confirms behind them.
        try:
            self._status_connection = await connect_broker(self.config.amqp_url, reconnect_interval=1)
        except BrokerUnavailable as exc:
            raise StartupFailed(str(exc)) from None
        self._status_channel = await self._status_connection.channel(publisher_confirms=False)
        self._status_exchange = await self._status_channel.get_exchange(self.spec.status_exchange, ensure=False)
        # The worker's own heartbeat on a channel of its own: behind a burst of thousands of
        # task events on one channel the heartbeat would come late.
        heartbeat_channel = await self._status_connection.channel(publisher_confirms=False)
        self._heartbeat_exchange = await heartbeat_channel.get_exchange(self.spec.status_exchange, ensure=False)

        await self.adapter.initialize()
        valkey_url = self.adapter.valkey_url or self.config.valkey_url
        if valkey_url is None:
            raise StartupFailed(
                "the worker needs Valkey for its idempotency ledger: set valkey_url, or enable caching "
                "(caching_enabled) so that an embedded Valkey is started"
            )
        self._ledger = Ledger.from_url(
            valkey_url,
            namespace=self.spec.prefix,
            lease_seconds=self.config.lease_seconds,
            outcome_ttl_seconds=self.config.idempotency_ttl_seconds,
        )
        self.adapter.add_circuit_listener(self._on_circuit_change)

        start_up_pause: list[asyncio.Task[None]] = []
        try:
            await self._valkey_answers()
        except ValkeyError as exc:
            # Like a missing engine: stay up (not ready), consume once Valkey answers.
            log.warning(
                "Valkey at %s not reachable at start-up (%s): not consuming until it is", redact_url(valkey_url), exc
            )
            start_up_pause.append(
                asyncio.create_task(
                    self._pause_until("valkey", self._valkey_answers, VALKEY_PROBE_SECONDS),
                    name="valkey-start-up-pause",
                )
            )
            await asyncio.sleep(0)
        if not self.adapter.get_status().engine_connected:
            # No engine yet: wait for one instead of spending every command's attempts (and the
            # breaker's threshold) on it. The pause registers itself before its first await, so
            # the sleep(0) is enough for _start_consuming below to see it.
            start_up_pause.append(
                asyncio.create_task(
                    self._pause_until("engine", self.adapter.probe, self.config.breaker_reset_seconds),
                    name="engine-start-up-pause",
                )
            )
            await asyncio.sleep(0)
        consuming = await self._start_consuming()
        # After consuming has started, so that the first heartbeat already says ready.
        self._background = [
            asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat"),
            asyncio.create_task(self._task_heartbeat_loop(), name="task-heartbeats"),
            asyncio.create_task(self._follow_circuit(), name="circuit-follower"),
            *start_up_pause,
        ]
        # What start-up loaded (modules, the engine's schema, clients) lives as long as the
        # process: frozen out of the collector's sight, a full collection no longer walks it
        # (with a thousand executions in flight one took half a second of a busy event loop).
        gc.freeze()
        # Say what is true: a worker paused at start-up (no engine yet) has not started consuming.
        log.info(
            "worker consuming" if consuming else "worker started, not consuming yet",
            extra={
                "queue": self.spec.tasks_queue,
                "prefetch": self.capacity,
                "amqp_url": redact_url(self.config.amqp_url),
                "waiting_for": sorted(self._paused_for),
            },
        )

    async def drain(self) -> None:
        self._stopping = True
        await self._stop_consuming()
        pending = set(self._handlers)
        if pending:
            log.info(
                "draining %d in-flight command(s)", len(pending), extra={"timeout": self.config.drain_timeout_seconds}
            )
            _, pending = await asyncio.wait(pending, timeout=self.config.drain_timeout_seconds)
        if pending:
            log.warning("drain timeout: cancelling %d execution(s); their commands go back to the queue", len(pending))
            for execution in list(self._executions):
                execution.cancel()
            _, pending = await asyncio.wait(pending, timeout=SETTLE_GRACE_SECONDS)
            for handler in pending:  # stuck on the broker: its message is returned when we disconnect
                handler.cancel()
        log.info("drained")

    async def shutdown(self) -> None:
        self.metrics.close()
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for handler in list(self._handlers):
            handler.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.adapter.close(), timeout=30)
        if self._ledger is not None:
            with contextlib.suppress(Exception):
                await self._ledger.close()
        for connection in (self._status_connection, self._connection):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        log.info("worker stopped")

    def _warn_about_consumer_timeout(self) -> None:
        if self.config.timeout_seconds > self.config.broker_consumer_timeout_seconds:
            log.warning(
                "timeout_seconds (%.0f s) exceeds RabbitMQ's consumer_timeout (%.0f s): the broker closes the "
                "channel of an execution that runs longer and redelivers its command. Raise consumer_timeout "
                "on the broker (see deploy/rabbitmq/rabbitmq.conf) and set "
                "DAGGER_ADAPTER_BROKER_CONSUMER_TIMEOUT_SECONDS to match.",
                self.config.timeout_seconds,
                self.config.broker_consumer_timeout_seconds,
            )

    def _start_telemetry(self) -> None:
        """Traces (exporters from OTEL_*), metrics hooked to the adapter, ``/metrics`` when configured."""
        try:
            tracing.configure_tracing(dagger_sdk=True)
        except tracing.TracingConfigError as exc:
            raise StartupFailed(str(exc)) from None
        self.metrics.follow(
            in_flight=lambda: self.in_flight,
            executing=lambda: self.adapter.current_load,
            consuming=lambda: self._consumer_tag is not None,
            circuit_state=lambda: self.adapter.circuit_state,
        )
        self.adapter.add_circuit_listener(self.metrics.circuit_changed)
        self.adapter.add_engine_request_listener(self.metrics.engine_request)
        if self.config.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_address)
            except OSError as exc:
                raise StartupFailed(
                    f"cannot serve metrics on {self.config.metrics_address}:{self.config.metrics_port}: {exc}"
                ) from None

    def _on_reconnect(self, *_: Any) -> None:
        self.metrics.broker_reconnected()
        log.warning("reconnected to RabbitMQ (topology re-declared); running executions carry on")

    # ================================================================ consuming on and off

    async def _start_consuming(self) -> bool:
        """Start the consumer unless something keeps the worker paused; True when it is consuming."""
        async with self._consume_lock:
            if self._consumer_tag is None and not self._paused_for and not self._stopping and self._queue is not None:
                self._consumer_tag = await self._queue.consume(self._on_message)
            return self._consumer_tag is not None

    async def _stop_consuming(self) -> bool:
        """Cancel the consumer; True when there was one to cancel."""
        async with self._consume_lock:
            tag, self._consumer_tag = self._consumer_tag, None
            if tag is not None and self._queue is not None:
                try:
                    await self._queue.cancel(tag)
                except BROKER_ERRORS as exc:  # gone with the channel; robust restore skips it now
                    log.info("consumer cancel did not reach the broker: %s", exc)
            return tag is not None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # A task of our own, not aiormq's: aiormq cancels its tasks when the channel closes, and an
        # execution must outlive a broker reconnect.
        handler = asyncio.create_task(self._handle(message))
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    # ================================================================ pausing while a dependency is down

    async def _pause_until(self, reason: str, recovered: Callable[[], Awaitable[bool]], every: float) -> None:
        """Stop consuming (commands stay queued: nothing is tried, nothing is dead-lettered) and
        check ``recovered()`` every ``every`` seconds; consume again once it holds and nothing else
        keeps the worker paused."""
        if reason in self._paused_for:
            return
        self._paused_for.add(reason)
        if await self._stop_consuming():
            log.warning("%s unavailable: stopped consuming until it is back", reason)
        else:
            log.warning("%s unavailable: not consuming until it is back", reason)
        try:
            while not self._stop_requested.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), timeout=every)
                if self._stop_requested.is_set():
                    return
                try:
                    if await recovered():
                        break
                except Exception as exc:
                    log.info("%s still unavailable: %s", reason, exc)
        finally:
            self._paused_for.discard(reason)
        log.info("%s available again", reason)
        # The broker may be reconnecting right now: keep trying until it takes the consumer.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(BROKER_ERRORS), wait=wait_exponential(multiplier=0.2, max=5), reraise=True
        ):
            with attempt:
                if await self._start_consuming():
                    log.info("worker consuming", extra={"queue": self.spec.tasks_queue, "prefetch": self.capacity})

    def _on_circuit_change(self, state: str) -> None:
        log.info("engine circuit %s", state)
        self._circuit_changed.set()

    async def _follow_circuit(self) -> None:
        """Engine circuit open: pause, and let a half-open probe through every breaker_reset_seconds."""
        while not self._stopping:
            await self._circuit_changed.wait()
            self._circuit_changed.clear()
            if self.adapter.circuit_state == "open" and not self._stopping:
                await self._pause_until("engine", self.adapter.probe, self.config.breaker_reset_seconds)

    async def _ledger_failed(self, exc: Exception) -> None:
        """Valkey down: without the ledger no outcome can be recorded, so pause rather than spin
        commands through the queue (where the delivery limit would dead-letter them)."""
        if "valkey" not in self._paused_for and self._ledger is not None:
            log.warning("Valkey error: %s", exc)
            with task_context(None):  # the pause is the worker's, not the task's that ran into it
                pause = asyncio.create_task(self._pause_until("valkey", self._valkey_answers, VALKEY_PROBE_SECONDS))
            self._background.append(pause)

    async def _valkey_answers(self) -> bool:
        ledger = self._require_ledger()
        try:
            await ledger.ping()
        except ValkeyError:
            # The host's embedded Valkey may have died with no one to start it: we do.
            if await self.adapter.revive_embedded_valkey():
                await ledger.ping()
            else:
                raise
        if self._seal is None:  # needed before the first command is read: consuming waits for it
            self._seal = AttemptSeal(await ledger.attempts_key(), self.config.max_retries)
        return True

    # ================================================================ heartbeat

    async def _heartbeat_loop(self) -> None:
        async for _ in _fixed_cadence(self.config.heartbeat_interval_seconds, first_at_once=True):
            await self._publish_heartbeat()

    async def _publish_heartbeat(self) -> None:
        status = self.adapter.get_status()
        beat = WorkerHeartbeat(
            worker_id=self.worker_id,
            ready=status.ready and self._consumer_tag is not None and not self._stopping,
            current_load=status.current_load,
            capacity=status.capacity,
            version=status.version,
            circuit=status.circuit,
        )
        if self.config.health_file:
            try:
                write_health_file(self.config.health_file, beat)
            except OSError as exc:
                log.warning("health file %s not written: %s", self.config.health_file, exc)
        try:
            if self._heartbeat_exchange is None:
                raise RuntimeError("the worker has not started")
            await self._publish(
                self._heartbeat_exchange,
                self.spec.heartbeat_routing_key,
                self._message(encode(beat)),
                patience=0,
            )
        except Exception as exc:
            log.info("heartbeat not published: %s", exc)

    # ================================================================ one message

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        # A burst of deliveries (a whole prefetch of a thousand at once) would otherwise run its
        # first steps in one turn of the event loop, holding up heartbeats and confirms for a
        # second: a bounded number of commands is between arriving and running at a time.
        admitted = Admitted(self._admission)
        await admitted.enter()
        try:
            await self._handle_admitted(message, admitted)
        finally:
            admitted.release()

    async def _handle_admitted(self, message: AbstractIncomingMessage, admitted: Admitted) -> None:
        delivery = Delivery.of(message, self._seal)
        try:
            # Limits first, then decoding; only InvalidMessage comes out of decode_command.
            command, params = decode_command(message.body, self.limits)
            reply_to = delivery.reply_to or command.reply_to
            problem = self.spec.reply_to_problem(reply_to) if reply_to is not None else None
            if problem is not None:
                raise InvalidMessage(f"reply_to: {problem}", task_id=command.task_id)
            delivery = dataclasses.replace(delivery, fingerprint=fingerprint(command, params))
        except Exception as exc:  # whatever reading the message raises, it ends settled
            invalid = exc if isinstance(exc, InvalidMessage) else InvalidMessage(f"unreadable message: {exc!r}")
            self.metrics.command_received(None)
            with task_context(invalid.task_id, delivery.attempt), self._command_span(delivery, invalid.task_id, None):
                await self._guarded(delivery, self._reject_invalid(delivery, invalid))
            return
        self.metrics.command_received(command.execution_type)
        # Every log line about this message names its task, the failure paths' included.
        with (
            task_context(command.task_id, delivery.attempt),
            self._command_span(delivery, command.task_id, command.execution_type.value),
        ):
            await self._guarded(delivery, self._process(delivery, command, params.enable_retry, admitted))

    def _command_span(
        self, delivery: Delivery, task_id: str | None, execution_type: str | None
    ) -> contextlib.AbstractContextManager[Any]:
        return tracing.command_span(
            delivery.message.headers,
            queue=self.spec.tasks_queue,
            message_id=delivery.message_id,
            task_id=task_id,
            execution_type=execution_type,
            attempt=delivery.attempt,
            worker_id=self.worker_id,
        )

    async def _guarded(self, delivery: Delivery, handling: Awaitable[None]) -> None:
        """Run ``handling``; a message it could not settle goes back to the queue, never dropped."""
        try:
            await handling
        except ValkeyError as exc:
            await self._ledger_failed(exc)
            await self._put_back(delivery, "until Valkey is available", reason="valkey")
        except Unpublishable as exc:
            # Its own content makes its outcome unpublishable: trying again would loop.
            log.warning("the outcome of a command cannot be published; dead-lettering it: %s", exc)
            await self._give_up(delivery, f"its outcome could not be published: {exc}", ErrorCategory.INVALID)
        except Exception as exc:
            # A defect, or the broker gone for longer than a publish waits. Requeued (a command
            # that keeps failing this way is dead-lettered at its delivery limit).
            log.exception("could not handle a command; requeueing it")
            await self._requeue(delivery, f"it could not be handled ({type(exc).__name__}: {exc})")

    async def _requeue(self, delivery: Delivery, why: str) -> None:
        """Back to the queue, unless this is the last delivery the queue's delivery limit allows:
        that one we dead-letter ourselves, with the reason. (Left to the broker, the dead letter
        would say only "delivery_limit", and RabbitMQ 3.x quorum queues hand the consumer one
        extra message of prefetch for every message they dead-letter on a requeue.)"""
        if delivery.returned >= self.config.delivery_limit:
            await self._give_up(delivery, f"{why}; gave up after {delivery.returned + 1} deliveries")
            return
        await asyncio.sleep(PUT_BACK_DELAY_SECONDS)
        await self._settle(delivery, requeue=True)

    async def _give_up(self, delivery: Delivery, why: str, category: ErrorCategory = ErrorCategory.PERMANENT) -> None:
        """Dead-letter the command as it arrived, with ``why``, and ack it: once, never in a loop.
        Only what the broker itself accepted goes into the dead letter (the body, its properties)."""
        try:
            await self._dead_letter(
                delivery,
                DeadLetterHeaders(
                    error_category=category,
                    error=why,
                    attempts=delivery.attempts_before,
                    task_id=_peek_task_id(delivery.message.body, self),
                    dead_lettered_at=utcnow(),
                    worker_id=self.worker_id,
                ),
                routing_key=delivery.original_routing_key,
            )
        except Exception as exc:  # the broker is gone: it redelivers the message later
            log.warning("could not dead-letter the command (%s); requeueing it", exc)
            await asyncio.sleep(PUT_BACK_DELAY_SECONDS)
            await self._settle(delivery, requeue=True)
            return
        await self._settle(delivery)

    async def _put_back(self, delivery: Delivery, why: str, *, reason: str = "stopping") -> None:
        await self._carry_out(delivery, None, PutBack(why, reason=reason))

    async def _process(
        self, delivery: Delivery, command: ExecutionCommand, enable_retry: bool, admitted: Admitted | None = None
    ) -> None:
        await self._status(command, TaskState.RECEIVED, delivery.attempt)
        # With every slot taken, a copy of a finished task is answered now rather than after a
        # slot frees; otherwise the outcome is read together with taking the lease (a round trip).
        if self._slots.locked() and await self._answer_from_ledger(delivery, command, leased=False):
            return
        if self._stopping:
            await self._carry_out(delivery, command, PutBack("the worker is stopping"))
            return
        if self._slots.locked() and admitted is not None:  # waiting for a slot is not arriving
            admitted.release()
        async with self._slots:
            if self._stopping:
                await self._carry_out(delivery, command, PutBack("the worker is stopping"))
                return
            ledger = self._require_ledger()
            lease, standing = await ledger.acquire(
                command.task_id, self.worker_id, hold_limit=self.config.timeout_seconds + HANDLING_MARGIN_SECONDS
            )
            if lease is None:
                if await self._answer_from_ledger(delivery, command, leased=False, stored=standing, read=True):
                    return
                log.info("task is running elsewhere", extra={"holder": await ledger.lease_holder(command.task_id)})
                await self._carry_out(
                    delivery, command, leased_elsewhere(await ledger.lease_remaining(command.task_id))
                )
                return
            async with lease:
                # Finished by someone else between our first look and our lease?
                if await self._answer_from_ledger(delivery, command, leased=True, stored=standing):
                    return
                if self.adapter.circuit_state == "open":
                    await self._carry_out(delivery, command, open_circuit(self.config.breaker_reset_seconds))
                    return
                result = await self._execute(command, delivery, admitted)
                if result is None:  # cancelled by the drain timeout: back to the queue, nothing published
                    await self._carry_out(delivery, command, PutBack("cancelled by the drain timeout"))
                    return
                disposition = after_attempt(
                    result,
                    attempt=delivery.attempt,
                    policy=self.adapter.retry_policy,
                    enable_retry=enable_retry,
                    breaker_reset_seconds=self.config.breaker_reset_seconds,
                )
                await self._carry_out(delivery, command, disposition, lease=lease)

    async def _carry_out(
        self,
        delivery: Delivery,
        command: ExecutionCommand | None,
        disposition: Disposition,
        *,
        lease: Lease | None = None,
    ) -> None:
        """The AMQP side of a decision (``consumer.decisions``); the message is settled last."""
        match disposition:
            case Finish(result=result):
                assert command is not None and lease is not None
                await self._finish(delivery, command, result, lease)
            case Retry(delay_seconds=delay, attempts=attempts, detail=detail, error_category=category):
                assert command is not None
                await self._send_to_retry(delivery, delay, attempts=attempts)
                self.metrics.retried(command.execution_type, category)
                tracing.set_outcome("retried")
                await self._status(command, TaskState.RETRYING, delivery.attempt, detail=detail)
                log.info("retry scheduled", extra={"delay_s": round(delay, 3), "error": detail})
                await self._settle(delivery)
            case Postpone(delay_seconds=delay, why=why, status_detail=status_detail, reason=reason):
                await self._send_to_retry(delivery, delay, attempts=delivery.attempts_before)
                self.metrics.command_postponed(reason)
                tracing.set_outcome("postponed")
                if status_detail is not None and command is not None:
                    await self._status(command, TaskState.RETRYING, delivery.attempt, detail=status_detail)
                log.info("postponed: %s", why, extra={"delay_s": round(delay, 3)})
                await self._settle(delivery)
            case PutBack(why=why, delay_seconds=delay, reason=reason):
                try:
                    await self._send_to_retry(delivery, delay, attempts=delivery.attempts_before)
                    self.metrics.command_postponed(reason)
                    tracing.set_outcome("put_back")
                    log.info("command put back: %s", why)
                    await self._settle(delivery)
                except Exception as exc:
                    log.warning("could not put the command back (%s); requeueing it", exc)
                    await self._requeue(delivery, f"it could not be put back ({exc})")

    async def _execute(
        self, command: ExecutionCommand, delivery: Delivery, admitted: Admitted | None = None
    ) -> ExecutionResult | None:
        """One attempt through the adapter, with ``heartbeat`` status events while it runs.
        None when the drain cancelled it.

        ``running`` is told when the adapter reports its first step starting: a result answered
        from the cache goes from ``received`` to ``succeeded``, since nothing ran."""
        running: list[asyncio.Task[None]] = []

        def on_progress(step: str, state: str, detail: str | None) -> None:
            if not running:
                running.append(asyncio.create_task(self._status(command, TaskState.RUNNING, delivery.attempt)))
            _log_progress(step, state, detail)

        execution = asyncio.create_task(
            tracing.in_execution_span(
                command.execution_type.value,
                self.adapter.execute(
                    command,
                    attempt=delivery.attempt,
                    in_process_retries=False,
                    on_progress=on_progress,
                    replay_id=delivery.replay_id,
                ),
            )
        )
        self._executions.add(execution)
        self._beating[execution] = (command, delivery.attempt)
        if admitted is not None:
            admitted.release()
        started = time.monotonic()
        try:
            result = await execution
        except asyncio.CancelledError:
            if execution.cancelled() and not _is_being_cancelled():
                log.warning("execution cancelled by the drain timeout; the command goes back to the queue")
                return None
            raise
        finally:
            self._executions.discard(execution)
            self._beating.pop(execution, None)
        if running:  # published before the outcome's own status events
            await running[0]
        log.info(
            "execution finished",
            extra={
                "success": result.success,
                "error_category": result.error_category.value if result.error_category else None,
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        self.metrics.execution_finished(command.execution_type, result, time.monotonic() - started)
        return msgspec.structs.replace(
            result,
            attempts=delivery.attempt,
            worker_id=self.worker_id,
            execution_type=command.execution_type,
            trace_id=tracing.current_trace_id(),
        )

    async def _task_heartbeat_loop(self) -> None:
        """Every running execution's heartbeat, from one timer on a fixed cadence: a thousand
        executions cost one wake-up per interval (not a thousand), and a busy moment delays one
        round of beats instead of pushing each task's later ones back. A beat that cannot go out
        at once (the broker is reconnecting) is skipped, not waited for."""
        async for _ in _fixed_cadence(self.config.heartbeat_interval_seconds, first_at_once=False):
            if self._status_channel is None or self._status_channel.is_closed:
                if self._beating:
                    log.info("task heartbeats skipped: the status connection is reconnecting")
                continue
            for command, attempt in list(self._beating.values()):
                with task_context(command.task_id, attempt):
                    await self._status(command, TaskState.HEARTBEAT, attempt, patience=0)

    # ================================================================ outcomes

    async def _finish(
        self, delivery: Delivery, command: ExecutionCommand, result: ExecutionResult, lease: Lease
    ) -> None:
        """A final outcome: recorded (so a copy of the command is answered, not run again), published,
        then acked. Recorded only as the task's first final outcome and under our lease's fence;
        otherwise nothing of ours is published: a task has one result, fleet-wide."""
        ledger = self._require_ledger()
        if lease.lost:
            # Whether another worker took the task over meanwhile is for the fence to say: if none
            # did, ours is still the only run and its outcome stands.
            log.warning("the task lease lapsed while the task ran; recording only if no one took it over")
        outcome = StoredOutcome(
            result=result,
            message_id=delivery.message_id,
            replay_id=delivery.replay_id,
            fingerprint=delivery.fingerprint,
        )
        verdict, _standing = await ledger.record_first(outcome, fence=lease.fence)
        if verdict is Recorded.EXISTS:
            # Another worker finished this task while we ran it: our lease lapsed (a stall longer
            # than the lease) and it took the task over. The first outcome stands; publishing ours
            # too would give the task two results.
            log.warning("another worker finished this task first; its outcome stands and ours is not published")
            await self._settle(delivery)
            return
        if verdict is Recorded.FENCED:
            log.warning("another worker took the task over (our lease lapsed); our outcome is not published")
            await self._carry_out(delivery, command, leased_elsewhere(await ledger.lease_remaining(command.task_id)))
            return
        await self._publish_outcome(delivery, command, outcome)
        try:
            await ledger.mark_published(outcome, releasing=lease)
        except ValkeyError as exc:
            # The outcome is out: acking is right. A redelivered copy would publish it again.
            log.warning("outcome published but not marked so in Valkey (%s); acking anyway", exc)
            await self._ledger_failed(exc)
        await self._settle(delivery)

    async def _publish_outcome(self, delivery: Delivery, command: ExecutionCommand, outcome: StoredOutcome) -> None:
        result = outcome.result
        if not result.success:
            category = result.error_category or ErrorCategory.PERMANENT
            await self._dead_letter(
                delivery,
                DeadLetterHeaders(
                    error_category=category,
                    error=result.error or "failed",
                    attempts=result.attempts,
                    task_id=command.task_id,
                    dead_lettered_at=utcnow(),
                    worker_id=self.worker_id,
                ),
                routing_key=self._dead_letter_routing_key(delivery, command.execution_type.value),
            )
        await self._publish_result(
            result, command.execution_type.value, *self._reply_of(delivery, command), outcome.replay_id
        )
        if result.success:
            await self._status(command, TaskState.SUCCEEDED, result.attempts)
        else:
            await self._status(command, TaskState.FAILED, result.attempts, detail=result.error)
            await self._status(command, TaskState.DEAD_LETTERED, result.attempts, detail=result.error)
        self.metrics.outcome_published(command.execution_type, result)
        tracing.set_outcome("succeeded" if result.success else "dead_lettered", error=result.error)
        log.info("outcome published", extra={"outcome": result.outcome.value})

    async def _answer_from_ledger(
        self,
        delivery: Delivery,
        command: ExecutionCommand,
        *,
        leased: bool,
        stored: StoredOutcome | None = None,
        read: bool = False,
    ) -> bool:
        """True when the task already has an outcome and this delivery is settled from it.
        ``leased``: the outcome ``stored`` was read together with taking the lease; ``read``:
        ``stored`` was read just now, though the lease was not ours.

        An outcome recorded but not yet published for this very message is finished only under
        the task's lease: without it, the handler that recorded it may still be publishing."""
        if not leased and not read:
            stored = await self._require_ledger().outcome(command.task_id)
        answer = answer_from_ledger(
            stored,
            message_id=delivery.message_id,
            replay_id=delivery.replay_id,
            leased=leased,
            fingerprint=delivery.fingerprint,
        )
        if answer is LedgerAnswer.REFUSE_REUSED:
            await self._refuse_reused_task_id(delivery, command)
            return True
        if answer is LedgerAnswer.RUN or stored is None:
            if stored is not None and replaced_by_replay(stored, delivery.replay_id):
                log.info("replay of a failed task: running it again")
            return False
        if answer is LedgerAnswer.ACK:
            log.info("redelivered command whose outcome was already published; acking it")
            kind = "redelivered"
        elif answer is LedgerAnswer.PUBLISH_RECORDED:
            log.info("outcome recorded but not published (worker died or lost the broker); publishing it")
            await self._publish_outcome(delivery, command, stored)
            await self._require_ledger().mark_published(stored)
            kind = "unpublished"
        else:
            log.info("duplicate of a finished task: republishing its stored result")
            await self._publish_result(
                stored.result, command.execution_type.value, *self._reply_of(delivery, command), stored.replay_id
            )
            kind = "duplicate"
        self.metrics.answered_from_ledger(command.execution_type, kind)
        tracing.set_outcome(kind)
        await self._settle(delivery)
        return True

    async def _refuse_reused_task_id(self, delivery: Delivery, command: ExecutionCommand) -> None:
        """The task id has an outcome of another command: dead-letter this one as invalid and
        answer its sender (its reply queue only) with a failure that carries nothing of the other.
        Nothing goes to the results exchange or the status events: those speak for the task
        that really has this id, and must not contradict its result."""
        reason = "task_id reused with different parameters"
        log.warning("invalid command dead-lettered: %s", reason)
        await self._dead_letter(
            delivery,
            DeadLetterHeaders(
                error_category=ErrorCategory.INVALID,
                error=reason,
                attempts=delivery.attempts_before,
                task_id=command.task_id,
                dead_lettered_at=utcnow(),
                worker_id=self.worker_id,
            ),
            routing_key=self._dead_letter_routing_key(delivery, command.execution_type.value),
        )
        reply_to, correlation_id = self._reply_of(delivery, command)
        if reply_to:
            now = utcnow()
            refusal = ExecutionResult(
                task_id=command.task_id,
                success=False,
                error=reason,
                error_category=ErrorCategory.INVALID,
                attempts=delivery.attempts_before,
                worker_id=self.worker_id,
                started_at=now,
                finished_at=now,
                execution_type=command.execution_type,
            )
            # Its own message id: it is not a copy of the task's result.
            await self._publish_reply(
                encode(refusal), refusal.task_id, reply_to, correlation_id, f"refused:{delivery.message_id}"
            )
        await self._settle(delivery)

    async def _reject_invalid(self, delivery: Delivery, exc: InvalidMessage) -> None:
        """Not a command we can run (not JSON, wrong types, unknown type, over a limit): dead-letter
        it with the reason, and answer its task (when it has a readable task id) with a failure
        result. What is read of a rejected message is checked like a valid one's: a known
        execution type for the routing key, a reply queue that is not ours, AMQP-sized ids."""
        task_id = exc.task_id
        log.warning("invalid command dead-lettered: %s", exc)
        tracing.set_outcome("invalid", error=str(exc))
        fields = peek(delivery.message.body, self.limits)
        peeked_type = _text_field(fields, "execution_type")
        execution_type = peeked_type if peeked_type in _KNOWN_TYPES else UNKNOWN_EXECUTION_TYPE
        await self._dead_letter(
            delivery,
            DeadLetterHeaders(
                error_category=ErrorCategory.INVALID,
                error=str(exc),
                attempts=delivery.attempts_before,
                task_id=task_id,
                dead_lettered_at=utcnow(),
                worker_id=self.worker_id,
            ),
            routing_key=delivery.original_routing_key,
        )
        if task_id is not None:
            now = utcnow()
            result = ExecutionResult(
                task_id=task_id,
                success=False,
                error=str(exc),
                error_category=ErrorCategory.INVALID,
                attempts=delivery.attempts_before,
                worker_id=self.worker_id,
                started_at=now,
                finished_at=now,
                trace_id=tracing.current_trace_id(),
            )
            await self._publish_result(
                result,
                execution_type,
                delivery.reply_to or _text_field(fields, "reply_to"),
                delivery.correlation_id or _text_field(fields, "correlation_id"),
                delivery.replay_id,
            )
            self.metrics.outcome_published(execution_type, result)
            await self._status_event(
                StatusEvent(
                    task_id=task_id,
                    state=TaskState.DEAD_LETTERED,
                    attempt=delivery.attempts_before,
                    worker_id=self.worker_id,
                    detail=str(exc),
                )
            )
        await self._settle(delivery)

    # ================================================================ retries and postponing

    async def _send_to_retry(self, delivery: Delivery, delay: float, *, attempts: int) -> None:
        """Back to the tasks queue after ``delay`` seconds, through the smallest retry tier that
        covers it; the message's own expiration is the exact delay."""
        tier = self.spec.retry_tier_for(delay)
        original = delivery.message
        headers = _forwarded_headers(original.headers or {})
        if self._seal is not None and attempts > 0:
            headers.update(self._seal.headers(original.body, attempts))
        message = aio_pika.Message(
            original.body,
            headers=headers,
            content_type=original.content_type or CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=original.message_id,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            priority=original.priority,
            expiration=max(0.001, min(delay, tier.delay_ms / 1000)),
        )
        await self._publish_to_queue(self._exchanges.retry, tier.routing_key, message)

    # ================================================================ publishing

    @property
    def _exchanges(self) -> DeclaredTopology:
        if self._topology is None:
            raise RuntimeError("the worker has not started")
        return self._topology

    @property
    def _status_events(self) -> AbstractExchange:
        if self._status_exchange is None:
            raise RuntimeError("the worker has not started")
        return self._status_exchange

    @property
    def _reply_exchange(self) -> AbstractExchange:
        if self._reply_channel is None:
            raise RuntimeError("the worker has not started")
        return self._reply_channel.default_exchange

    def _require_ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the worker has not started")
        return self._ledger

    @staticmethod
    def _message(body: bytes, **properties: Any) -> aio_pika.Message:
        return aio_pika.Message(
            body, content_type=CONTENT_TYPE, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties
        )

    async def _publish(
        self,
        exchange: AbstractExchange,
        routing_key: str,
        message: aio_pika.Message,
        *,
        mandatory: bool = False,
        patience: float = PUBLISH_PATIENCE_SECONDS,
    ) -> bool:
        """Publish and wait for the broker's confirm (on a confirming channel). While the connection
        is down, wait for the robust connection to come back (up to ``patience`` seconds) and
        publish again. A confirm that is only slow is waited for (``CONFIRM_TIMEOUT_SECONDS``),
        never answered by publishing again: under load that put a second copy of results out.
        False when a ``mandatory`` message came back: no queue took it."""
        try:  # the common case, without setting up a retry loop for each message
            return await self._publish_once(exchange, routing_key, message, mandatory)
        except BROKER_ERRORS:
            if patience <= 0:
                raise
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(BROKER_ERRORS),
            wait=wait_exponential(multiplier=0.2, max=2),
            stop=stop_after_delay(patience),
            reraise=True,
        ):
            with attempt:
                return await self._publish_once(exchange, routing_key, message, mandatory)
        return False  # pragma: no cover - AsyncRetrying either returns or raises

    @staticmethod
    async def _publish_once(
        exchange: AbstractExchange, routing_key: str, message: aio_pika.Message, mandatory: bool
    ) -> bool:
        try:
            confirmed = await publish_without_drain(
                exchange, message, routing_key, mandatory=mandatory, confirm_timeout=CONFIRM_TIMEOUT_SECONDS
            )
        except (TypeError, ValueError) as exc:  # encoding: a property, header or key too long
            raise Unpublishable(str(exc)) from exc
        except TimeoutError as exc:  # not a broker error: publishing again could only add a copy
            raise ConfirmTimeout(f"no confirm from the broker in {CONFIRM_TIMEOUT_SECONDS:.0f} s") from exc
        return not isinstance(confirmed, aiormq.abc.DeliveredMessage)

    async def _publish_to_queue(self, exchange: AbstractExchange, routing_key: str, message: aio_pika.Message) -> None:
        """Publish what must land in one of our queues (a retry or a dead letter): the command is
        acked after this, so a message no queue took (its queue was deleted) is an error, not a drop."""
        if not await self._publish(exchange, routing_key, message, mandatory=True):
            raise Unroutable(f"no queue is bound to {exchange.name!r} for {routing_key!r}; the command stays queued")

    @staticmethod
    def _reply_of(delivery: Delivery, command: ExecutionCommand) -> tuple[str | None, str | None]:
        """Where the reply goes and its correlation id: the AMQP properties (what every AMQP client
        sets) win over the command's body fields (for clients that cannot set properties)."""
        return delivery.reply_to or command.reply_to, delivery.correlation_id or command.correlation_id

    async def _publish_result(
        self,
        result: ExecutionResult,
        execution_type: str,
        reply_to: str | None,
        correlation_id: str | None,
        replay_id: str | None,
    ) -> None:
        body = encode(result)
        correlation = correlation_id or result.task_id
        headers = {h.TASK_ID: result.task_id}
        # Every copy of this result carries the same id: a consumer recognises a repeated publish.
        message_id = result_message_id(result.task_id, result.attempts, replay_id)
        await self._publish(
            self._exchanges.results,
            self.spec.result_routing_key(execution_type, result.outcome.value),
            self._message(body, correlation_id=correlation, headers=headers, message_id=message_id),
        )
        if reply_to:
            await self._publish_reply(body, result.task_id, reply_to, correlation_id, message_id)

    async def _publish_reply(
        self, body: bytes, task_id: str, reply_to: str, correlation_id: str | None, message_id: str
    ) -> None:
        problem = self.spec.reply_to_problem(reply_to)
        if problem is not None:  # refused when the command came in; this is the last line
            log.warning("reply not sent: %s", problem)
            return
        delivered = await self._publish(
            self._reply_exchange,
            reply_to,
            self._message(
                body, correlation_id=correlation_id or task_id, headers={h.TASK_ID: task_id}, message_id=message_id
            ),
            mandatory=True,
        )
        if not delivered:
            log.warning("reply not delivered: no queue %r (the caller is gone)", reply_to)

    async def _dead_letter(self, delivery: Delivery, why: DeadLetterHeaders, *, routing_key: str) -> None:
        original = delivery.message
        await self._publish_to_queue(
            self._exchanges.dead,
            routing_key,
            aio_pika.Message(
                original.body,
                headers=why.to_headers(),
                content_type=original.content_type or CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=original.message_id or uuid.uuid4().hex,
                correlation_id=original.correlation_id,
                reply_to=original.reply_to,
            ),
        )
        self.metrics.dead_lettered(routing_key, why.error_category)

    def _dead_letter_routing_key(self, delivery: Delivery, execution_type: str) -> str:
        # A retried command re-enters the tasks exchange as `retry.<tier>`; its original key was its type.
        key = delivery.original_routing_key
        return execution_type if not key or key.startswith(RETRY_ROUTING_PREFIX + ".") else key

    async def _status(
        self,
        command: ExecutionCommand,
        state: TaskState,
        attempt: int,
        *,
        detail: str | None = None,
        patience: float = STATUS_PATIENCE_SECONDS,
    ) -> None:
        await self._status_event(
            StatusEvent(task_id=command.task_id, state=state, attempt=attempt, worker_id=self.worker_id, detail=detail),
            patience=patience,
        )

    async def _status_event(self, event: StatusEvent, *, patience: float = STATUS_PATIENCE_SECONDS) -> None:
        """Status events are informational: one that cannot be published is logged, never fatal."""
        try:
            await self._publish(
                self._status_events,
                self.spec.status_routing_key(event.state.value),
                self._message(encode(event), headers={h.TASK_ID: event.task_id}),
                patience=patience,
            )
        except STATUS_ERRORS as exc:
            log.warning("status event %s not published: %r", event.state.value, exc)

    async def _settle(self, delivery: Delivery, *, requeue: bool = False) -> None:
        """Ack (or requeue) on the channel the message came from. When that channel died with a
        reconnect, the broker has already requeued the message; its copy is answered from the ledger."""
        message = delivery.message
        if message.processed:
            return
        try:
            # Bounded: a handler stuck here would keep its task's lease renewed, and every copy
            # of the command postponed, for as long as it hangs.
            async with asyncio.timeout(SETTLE_TIMEOUT_SECONDS):
                if requeue:
                    await message.nack(requeue=True)
                else:
                    await message.ack()
        except TimeoutError:
            log.warning(
                "the %s did not go out in %.0f s; letting go of the message (the broker redelivers it "
                "when its channel closes, and the copy is answered from the ledger)",
                "requeue" if requeue else "ack",
                SETTLE_TIMEOUT_SECONDS,
            )
        except BROKER_ERRORS as exc:
            log.info("could not settle the message on its (closed) channel; the broker redelivers it: %s", exc)


# ==================================================================== helpers


async def _fixed_cadence(interval: float, *, first_at_once: bool) -> AsyncIterator[None]:
    """Every ``interval`` seconds on a fixed cadence: the time a round takes, or a busy moment,
    does not push the later ones back (after a stall longer than an interval, the next round
    comes half an interval later, not in a burst)."""
    due = time.monotonic() + (0.0 if first_at_once else interval)
    while True:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        yield
        due = max(due + interval, time.monotonic() + interval / 2)


def _log_progress(step: str, state: str, detail: str | None) -> None:
    # The detail (output tails) stays out of the log: it is the task owner's, in the result.
    log.info("step %s %s", step, state, extra={"step": step, "step_state": state})


def _is_being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _text_field(fields: dict[str, Any], name: str) -> str | None:
    """A field of a rejected message, if it is a well-formed identifier (AMQP-sized, printable)."""
    return _short_text(fields.get(name))


def _short_text(value: Any) -> str | None:
    """A usable AMQP short string (reply queue, correlation id), or None."""
    return value if is_identifier(value) else None


def _peek_task_id(body: bytes, worker: Worker) -> str | None:
    task_id = peek(body, worker.limits).get("task_id")
    return task_id if is_identifier(task_id, MAX_TASK_ID_LENGTH) else None


# What a retry may carry of the headers a publisher set. A content header must fit in one AMQP
# frame (128 KiB): headers just under that, plus ours, would make the retry's publish close the
# worker's connection (FRAME_ERROR), again on every redelivery.
MAX_FORWARDED_HEADER_BYTES = 16_384
# Ours to write (a sealed count) or the broker's (set on redelivery): never a publisher's.
_OWN_HEADERS = (h.ATTEMPTS, SEAL, DELIVERY_COUNT)


def _forwarded_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """The publisher's headers to carry through a retry queue: all of them when they are small,
    else only the replay id (the one the worker reads back), if it is itself short. Attempt
    counts are never copied (the worker writes a sealed one), nor the broker's delivery count."""
    kept = {k: v for k, v in headers.items() if k not in _OWN_HEADERS}
    try:
        size = len(pamqp.encode.field_table(kept))
    except Exception:  # not even encodable: keep none of it
        size = MAX_FORWARDED_HEADER_BYTES + 1
    if size <= MAX_FORWARDED_HEADER_BYTES:
        return kept
    log.warning("the command's headers are %d bytes: only the replay id goes through the retry queue", size)
    replay = kept.get(h.REPLAY_ID)
    replay = replay.decode("utf-8", "replace") if isinstance(replay, bytes) else replay
    return {h.REPLAY_ID: replay} if is_identifier(replay) else {}
