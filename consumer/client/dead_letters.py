"""Operating the dead-letter queue: browse without consuming, show, replay, purge.

Browsing takes messages with ``basic.get`` without acknowledging them and then closes the
channel: RabbitMQ puts every unacknowledged message back in its original position (the dead
queue is a *classic* queue for this reason, and classic queues count no deliveries), so a
listing neither loses nor reorders anything and two listings agree.

Replay publishes each selected message to the tasks exchange with publisher confirms and only
then acknowledges the dead letter, so a message is never lost; a crash between the two leaves it
in both places (at-least-once), never in neither. The replay is still *run* exactly once: its
``x-replay-id`` is derived from the dead letter itself (``replay_id_for``), so replaying the letter
left behind sends the same id again, and the worker answers that copy from its ledger instead of
running the task a second time. A letter dead-lettered anew (the replay failed too) is another
letter with another id.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelNotFoundEntity

from consumer.client.errors import ClientError, DeadLetterNotFound, TopologyMissing
from consumer.client.publishing import confirm_channel, new_message_id, publish_confirmed
from schemas import CONTENT_TYPE, DeadLetterHeaders, utcnow
from schemas.headers import (
    ATTEMPTS,
    DEAD_LETTERED_AT,
    ERROR,
    ERROR_CATEGORY,
    REPLAY_ID,
    WORKER_ID,
)
from topology import Topology

# Headers that describe a past death; a replayed message starts afresh without them.
_DEATH_HEADERS = {ATTEMPTS, ERROR, ERROR_CATEGORY, DEAD_LETTERED_AT, WORKER_ID, "x-delivery-count"}
_DEATH_PREFIXES = ("x-death", "x-first-death-", "x-last-death-")
REDACTED = "***"


@dataclass(frozen=True)
class DeadLetter:
    """One message in the dead-letter queue: the original body, and why it is there."""

    id: str  # the message_id; a content hash when the publisher set none
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    reason: DeadLetterHeaders
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    timestamp: datetime | None = None
    command: dict[str, Any] = field(default_factory=dict)  # the body as JSON, when it is an object

    @property
    def task_id(self) -> str | None:
        task_id = self.reason.task_id or self.command.get("task_id")
        return task_id if isinstance(task_id, str) else None

    @property
    def execution_type(self) -> str | None:
        value = self.command.get("execution_type")
        return value if isinstance(value, str) else None

    @property
    def category(self) -> str:
        return str(getattr(self.reason.error_category, "value", self.reason.error_category))

    @property
    def when(self) -> datetime | None:
        return self.reason.dead_lettered_at or self.timestamp

    @property
    def replay_routing_key(self) -> str:
        """Where a replay sends it: the execution type from the body, else the original key."""
        return Topology.task_routing_key(self.execution_type) if self.execution_type else self.routing_key

    def summary(self) -> dict[str, Any]:
        """What ``dlq list`` shows."""
        return {
            "id": self.id,
            "task_id": self.task_id,
            "execution_type": self.execution_type,
            "category": self.category,
            "error": self.reason.error,
            "attempts": self.reason.attempts,
            "dead_lettered_at": self.when.isoformat() if self.when else None,
            "worker_id": self.reason.worker_id,
        }

    def to_json(self) -> dict[str, Any]:
        """The full message: summary, properties, headers and body (what ``dlq show`` prints).
        Secret values and registry passwords in the body are shown as ``***``."""
        try:
            body: Any = redact_command(msgspec.json.decode(self.body))
        except msgspec.DecodeError:
            body = self.body.decode("utf-8", "replace")
        return {
            **self.summary(),
            "routing_key": self.routing_key,
            "properties": {
                "message_id": self.message_id,
                "correlation_id": self.correlation_id,
                "reply_to": self.reply_to,
                "content_type": self.content_type,
                "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            },
            "headers": jsonable(self.headers),
            "body": body,
        }


@dataclass(frozen=True)
class Selector:
    """Which dead letters an operation applies to: given ids, all, a category or a task id."""

    ids: tuple[str, ...] = ()
    everything: bool = False
    category: str | None = None
    task_id: str | None = None

    def __post_init__(self) -> None:
        chosen = sum((bool(self.ids), self.everything, self.category is not None, self.task_id is not None))
        if chosen != 1:
            raise ValueError("select dead letters by ids, all, a category or a task id (exactly one)")

    def matches(self, letter: DeadLetter) -> bool:
        if self.everything:
            return True
        if self.ids:
            return letter.id in self.ids
        if self.category is not None:
            return letter.category == self.category
        return letter.task_id == self.task_id


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    routing_key: str
    replay_id: str | None  # None in a dry run


class ReplayIncomplete(ClientError):
    """Replay stopped part-way; ``moved`` lists what was replayed before the failure."""

    def __init__(self, message: str, moved: list[Replayed]) -> None:
        super().__init__(message)
        self.moved = moved


class DeadLetterQueue:
    """The dead-letter queue of ``topology``, on ``connection``."""

    def __init__(
        self, connection: AbstractConnection, topology: Topology, *, publish_timeout: float | None = 30.0
    ) -> None:
        self.connection = connection
        self.topology = topology
        self.publish_timeout = publish_timeout  # a broker that never confirms (resource alarm) stops a replay

    async def browse(self, limit: int | None = None) -> list[DeadLetter]:
        """The first ``limit`` dead letters (all when None), oldest first; nothing is consumed."""
        async with self._browse() as queue:
            return [letter for letter, _ in await _take(queue, limit)]

    async def show(self, letter_id: str) -> list[DeadLetter]:
        """The dead letters with id ``letter_id`` (usually one); ``DeadLetterNotFound`` if none."""
        async with self._browse() as queue:
            found = [letter for letter, _ in await _take(queue, None) if letter.id == letter_id]
        if not found:
            raise DeadLetterNotFound([letter_id])
        return found

    async def replay(self, selector: Selector, *, dry_run: bool = False) -> list[Replayed]:
        """Send each selected dead letter back to the tasks exchange once, with a fresh
        ``x-replay-id`` and no attempt/error headers; return what moved (or would move).
        Unknown ids raise ``DeadLetterNotFound`` before anything moves."""
        async with self._browse() as queue:
            chosen = _select(await _take(queue, None), selector)
            if dry_run:
                return [Replayed(letter, letter.replay_routing_key, None) for letter, _ in chosen]
            moved: list[Replayed] = []
            channel = await confirm_channel(self.connection)
            try:
                tasks = await channel.get_exchange(self.topology.tasks_exchange, ensure=False)
                for letter, delivery in chosen:
                    replay_id = replay_id_for(letter)
                    try:
                        await publish_confirmed(
                            tasks,
                            replay_message(letter, replay_id),
                            letter.replay_routing_key,
                            task_id=letter.task_id,
                            timeout=self.publish_timeout,
                        )
                    except ClientError as exc:
                        raise ReplayIncomplete(f"replay of {letter.id} failed: {exc}", moved) from None
                    await delivery.ack()  # only now: it is safely in the tasks queue
                    moved.append(Replayed(letter, letter.replay_routing_key, replay_id))
            finally:
                if not channel.is_closed:
                    await channel.close()
            return moved

    async def purge(self, selector: Selector) -> list[DeadLetter]:
        """Delete the selected dead letters; return them."""
        async with self._browse() as queue:
            chosen = _select(await _take(queue, None), selector)
            for _, delivery in chosen:
                await delivery.ack()
            return [letter for letter, _ in chosen]

    async def purge_all(self) -> int:
        """Delete every dead letter; return how many there were."""
        async with self._browse() as queue:
            result = await queue.purge()
            return int(result.message_count or 0)

    @contextlib.asynccontextmanager
    async def _browse(self) -> AsyncIterator[AbstractQueue]:
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            try:
                queue = await channel.declare_queue(self.topology.dead_queue, passive=True)
            except ChannelNotFoundEntity:
                raise TopologyMissing(
                    f"queue {self.topology.dead_queue!r} does not exist; declare the topology first "
                    "(dagger-adapter topology declare)"
                ) from None
            yield queue
        finally:
            if not channel.is_closed:
                # Closing hands every message taken but not acknowledged back, in its place.
                await channel.close()


async def _take(queue: AbstractQueue, limit: int | None) -> list[tuple[DeadLetter, AbstractIncomingMessage]]:
    taken: list[tuple[DeadLetter, AbstractIncomingMessage]] = []
    while limit is None or len(taken) < limit:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append((dead_letter_from(message), message))
    return taken


def _select(
    taken: list[tuple[DeadLetter, AbstractIncomingMessage]], selector: Selector
) -> list[tuple[DeadLetter, AbstractIncomingMessage]]:
    chosen = [(letter, delivery) for letter, delivery in taken if selector.matches(letter)]
    missing = [i for i in dict.fromkeys(selector.ids) if all(letter.id != i for letter, _ in chosen)]
    if missing:
        raise DeadLetterNotFound(missing)
    return chosen


def dead_letter_from(message: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(message.headers or {})
    try:
        reason = DeadLetterHeaders.from_headers(headers)
    except (ValueError, TypeError):
        reason = DeadLetterHeaders(error_category="unknown", error="unreadable dead-letter headers", attempts=0)
    try:
        decoded = msgspec.json.decode(message.body)
    except msgspec.DecodeError:
        decoded = None
    return DeadLetter(
        id=message.message_id or content_id(message.body, headers),
        routing_key=message.routing_key or "",
        body=message.body,
        headers=headers,
        reason=reason,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        content_type=message.content_type,
        timestamp=message.timestamp,
        command=decoded if isinstance(decoded, dict) else {},
    )


def content_id(body: bytes, headers: dict[str, Any]) -> str:
    """A stable id for a message without ``message_id``: the same across listings."""
    digest = hashlib.sha256(body)
    digest.update(msgspec.json.encode(jsonable(headers), order="sorted"))
    return "sha-" + digest.hexdigest()[:16]


def replay_id_for(letter: DeadLetter) -> str:
    """The ``x-replay-id`` of a replay of ``letter``: the same for every replay of this one dead
    letter (its message id, body and dead-letter headers, which name when it was dead-lettered)."""
    digest = hashlib.sha256((letter.message_id or "").encode())
    digest.update(content_id(letter.body, letter.headers).encode())
    return "replay-" + digest.hexdigest()[:32]


def replay_message(letter: DeadLetter, replay_id: str) -> aio_pika.Message:
    headers = {k: v for k, v in letter.headers.items() if k not in _DEATH_HEADERS and not k.startswith(_DEATH_PREFIXES)}
    headers[REPLAY_ID] = replay_id
    return aio_pika.Message(
        body=letter.body,
        headers=headers,
        message_id=letter.message_id or new_message_id(),
        correlation_id=letter.correlation_id,
        reply_to=letter.reply_to,
        content_type=letter.content_type or CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=utcnow(),
    )


def redact_command(body: Any) -> Any:
    """A command body safe to print: ``parameters.secrets`` values and ``registry_auth``
    password/token replaced by ``***`` (the message itself, and a replay, keep them)."""
    parameters = body.get("parameters") if isinstance(body, dict) else None
    if not isinstance(parameters, dict):
        return body
    parameters = dict(parameters)
    if isinstance(parameters.get("secrets"), dict):
        parameters["secrets"] = {name: REDACTED for name in parameters["secrets"]}
    auth = parameters.get("registry_auth")
    if isinstance(auth, dict):
        parameters["registry_auth"] = {k: REDACTED if k in ("password", "token") else v for k, v in auth.items()}
    return {**body, "parameters": parameters}


def jsonable(value: Any) -> Any:
    """AMQP header values (datetimes, bytes, decimals, nested tables) as JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return float(value)
    return value
