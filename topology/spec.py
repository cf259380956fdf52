"""The one place that names exchanges, queues and their arguments.

Everything is derived from a prefix (default ``dagger``):

- ``<p>.tasks``   topic exchange; quorum queue ``<p>.tasks`` bound with ``#``. Publishers use the
  execution type as routing key. ``x-delivery-limit`` dead-letters a message that keeps killing
  workers (at-least-once dead-lettering, which requires ``overflow: reject-publish``).
- ``<p>.results`` topic exchange, ``<execution_type>.<succeeded|failed>``; pub/sub. Every result
  is also appended to the stream ``<p>.results.history`` (retention by age and size), which a
  subscriber reads from a point in time: one that was down misses nothing.
- ``<p>.status``  topic exchange, ``task.<state>`` and ``worker.heartbeat``.
- ``<p>.dead``    fanout exchange and durable classic queue: the dead-letter queue. Classic, so
  that browsing it (get, then requeue) keeps the order and counts no delivery against a limit.
- ``<p>.retry``   direct exchange; one quorum queue per delay tier ``<p>.retry.<ms>ms`` whose
  message TTL dead-letters back into ``<p>.tasks``. A waiting retry lives in RabbitMQ, survives a
  worker crash and holds no consumer slot. Quorum with ``at-least-once`` dead-lettering (which needs
  ``overflow: reject-publish``): an expired retry leaves its tier only once ``<p>.tasks`` has
  confirmed it, so a retry that comes due while the node restarts is not dropped (a classic queue
  dead-letters *at most once*). Deployments made with classic tiers are moved over by
  ``dagger-adapter topology migrate``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

ExchangeKind = Literal["topic", "direct", "fanout"]

# The results routing key of a message whose execution type is not one we know (an invalid
# command): a sender's text never becomes a routing key.
UNKNOWN_EXECUTION_TYPE = "unknown"
# Queues a reply may go to although they are in the broker's reserved ``amq.`` namespace:
# RabbitMQ's direct reply-to, and server-named queues (how most RPC clients name theirs).
REPLY_QUEUES_IN_AMQ = ("amq.rabbitmq.reply-to", "amq.gen-")

RETRY_ROUTING_PREFIX = "retry"  # routing key of a retried command when it re-enters the tasks exchange
HEARTBEAT_ROUTING_KEY = "worker.heartbeat"

# Every queue that hands messages on by dead-lettering does it at least once (RabbitMQ 3.10+, quorum).
AT_LEAST_ONCE_DEAD_LETTERING: dict[str, Any] = {
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    kind: ExchangeKind
    purpose: str


@dataclass(frozen=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any]
    bindings: tuple[tuple[str, str], ...]  # (exchange, routing key)
    purpose: str

    @property
    def queue_type(self) -> str:
        return str(self.arguments.get("x-queue-type", "classic"))


@dataclass(frozen=True)
class RetryTier:
    delay_ms: int
    queue: str
    routing_key: str


@dataclass(frozen=True)
class Topology:
    prefix: str = "dagger"
    retry_delays_seconds: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
    delivery_limit: int = 5
    tasks_queue_arguments: dict[str, Any] = field(default_factory=dict)  # extra x-args, if any
    results_stream_max_age: str = "7D"  # RabbitMQ's x-max-age: a number and Y, M, D, h, m or s
    results_stream_max_bytes: int = 5_000_000_000

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[1-9][0-9]*[YMDhms]", self.results_stream_max_age):
            raise ValueError(
                f"results stream max age {self.results_stream_max_age!r}: a number and Y, M, D, h, m or s (e.g. 7D)"
            )
        if self.results_stream_max_bytes < 1:
            raise ValueError("results stream max bytes must be positive")
        if not self.retry_delays_seconds:
            raise ValueError("at least one retry delay tier is needed")
        if any(d <= 0 for d in self.retry_delays_seconds):
            raise ValueError("retry delay tiers must be positive")

    # --- names ---
    @property
    def tasks_exchange(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def tasks_queue(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def results_exchange(self) -> str:
        return f"{self.prefix}.results"

    @property
    def results_stream(self) -> str:
        return f"{self.prefix}.results.history"

    @property
    def status_exchange(self) -> str:
        return f"{self.prefix}.status"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def retry_exchange(self) -> str:
        return f"{self.prefix}.retry"

    def names_ours(self, name: str) -> bool:
        """Whether ``name`` is (or could be) one of our exchanges or queues: a reply destination
        taken from a message must never be one of them (a reply would inject into our topology)."""
        return name == self.prefix or name.startswith(self.prefix + ".")

    # --- routing keys ---
    @staticmethod
    def task_routing_key(execution_type: str) -> str:
        return execution_type

    @staticmethod
    def result_routing_key(execution_type: str, outcome: str) -> str:
        return f"{execution_type}.{outcome}"

    @staticmethod
    def status_routing_key(state: str) -> str:
        return f"task.{state}"

    heartbeat_routing_key = HEARTBEAT_ROUTING_KEY

    # --- where a worker may publish on a sender's behalf ---
    def reply_to_problem(self, name: str) -> str | None:
        """Why a reply may not be sent to ``name`` (None: it may).

        Replies are published to the default exchange, which delivers to the queue of that name:
        a sender must not be able to aim a worker's publish at the deployment's own queues (a
        result in the tasks queue, a forged dead letter, a fake retry) nor at the broker's
        reserved names. Everything under this topology's prefix is the deployment's."""
        if self.names_ours(name):
            return f"{name!r} is a queue or exchange of the {self.prefix!r} topology, not a reply queue"
        if name.startswith("amq.") and not name.startswith(REPLY_QUEUES_IN_AMQ):
            return f"{name!r} is in RabbitMQ's reserved amq. namespace, not a reply queue"
        return None

    # --- retry tiers ---
    @property
    def retry_tiers(self) -> tuple[RetryTier, ...]:
        delays = sorted({max(1, round(d * 1000)) for d in self.retry_delays_seconds})
        return tuple(RetryTier(ms, f"{self.prefix}.retry.{ms}ms", f"{ms}ms") for ms in delays)

    def retry_tier_for(self, delay_seconds: float) -> RetryTier:
        """The smallest tier whose delay covers ``delay_seconds`` (the largest when none does).

        The message itself carries its exact (jittered) delay as per-message expiration; the
        tier's TTL only bounds it, so head-of-line blocking within a tier stays below one tier."""
        wanted = math.ceil(delay_seconds * 1000)
        for tier in self.retry_tiers:
            if tier.delay_ms >= wanted:
                return tier
        return self.retry_tiers[-1]

    @staticmethod
    def retry_return_routing_key(tier: RetryTier) -> str:
        """The routing key a retry of ``tier`` re-enters the tasks exchange with."""
        return f"{RETRY_ROUTING_PREFIX}.{tier.routing_key}"

    # --- declarations ---
    @property
    def exchanges(self) -> tuple[ExchangeSpec, ...]:
        return (
            ExchangeSpec(self.tasks_exchange, "topic", "execution commands; routing key = execution type"),
            ExchangeSpec(self.results_exchange, "topic", "results; <execution_type>.<succeeded|failed>"),
            ExchangeSpec(self.status_exchange, "topic", "task.<state> and worker.heartbeat events"),
            ExchangeSpec(self.dead_exchange, "fanout", "dead letters, original body + x-error headers"),
            ExchangeSpec(self.retry_exchange, "direct", "delayed retries; routing key = tier"),
        )

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        tasks = QueueSpec(
            self.tasks_queue,
            {
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dead_exchange,
                **AT_LEAST_ONCE_DEAD_LETTERING,
                **self.tasks_queue_arguments,
            },
            ((self.tasks_exchange, "#"),),
            "work queue shared by all workers",
        )
        dead = QueueSpec(
            self.dead_queue,
            {"x-queue-type": "classic"},
            ((self.dead_exchange, ""),),
            "dead letters for operators to inspect and replay",
        )
        retries = tuple(
            QueueSpec(
                tier.queue,
                {
                    "x-queue-type": "quorum",
                    "x-message-ttl": tier.delay_ms,
                    "x-dead-letter-exchange": self.tasks_exchange,
                    "x-dead-letter-routing-key": self.retry_return_routing_key(tier),
                    **AT_LEAST_ONCE_DEAD_LETTERING,
                },
                ((self.retry_exchange, tier.routing_key),),
                f"retries waiting up to {tier.delay_ms} ms",
            )
            for tier in self.retry_tiers
        )
        history = QueueSpec(
            self.results_stream,
            {
                "x-queue-type": "stream",
                "x-max-age": self.results_stream_max_age,
                "x-max-length-bytes": self.results_stream_max_bytes,
            },
            ((self.results_exchange, "#"),),
            "every result, kept by age and size: read from a point in time",
        )
        return (tasks, dead, *retries, history)
