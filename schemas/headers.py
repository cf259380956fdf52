"""AMQP headers that are part of the contract: why a message was dead-lettered, and how many
times it has been attempted (carried through the retry queues)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from schemas.enums import ErrorCategory

ATTEMPTS = "x-attempts"  # attempts made so far; set on retries and dead letters
ERROR_CATEGORY = "x-error-category"
ERROR = "x-error"
TASK_ID = "x-task-id"
DEAD_LETTERED_AT = "x-dead-lettered-at"
WORKER_ID = "x-worker-id"
# DeadLetterHeaders' fields under their header names (the AsyncAPI header schema is generated from it).
DEAD_LETTER_HEADER_OF = {
    "error_category": ERROR_CATEGORY,
    "error": ERROR,
    "attempts": ATTEMPTS,
    "task_id": TASK_ID,
    "dead_lettered_at": DEAD_LETTERED_AT,
    "worker_id": WORKER_ID,
}
# W3C Trace Context of a command (https://www.w3.org/TR/trace-context/), as application headers so
# that any publisher can send them: the worker continues the trace; a malformed value is ignored.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# How a message that RabbitMQ dead-lettered on its own (delivery limit) is told apart.
DELIVERY_LIMIT = "delivery_limit"

MAX_ERROR_HEADER = 4000  # keep headers small: a frame is capped and operators read this in a table


class DeadLetterHeaders(msgspec.Struct, kw_only=True):
    """Why a message is in the dead-letter queue. The body is the original message, unchanged."""

    error_category: ErrorCategory | str
    error: str
    attempts: int
    task_id: str | None = None
    dead_lettered_at: datetime | None = None
    worker_id: str | None = None

    def to_headers(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            ERROR_CATEGORY: str(getattr(self.error_category, "value", self.error_category)),
            ERROR: self.error[:MAX_ERROR_HEADER],
            ATTEMPTS: self.attempts,
        }
        if self.task_id is not None:
            headers[TASK_ID] = self.task_id
        if self.dead_lettered_at is not None:
            headers[DEAD_LETTERED_AT] = self.dead_lettered_at.isoformat()
        if self.worker_id is not None:
            headers[WORKER_ID] = self.worker_id
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, Any]) -> DeadLetterHeaders:
        """Read our headers back; a message RabbitMQ dead-lettered itself (no ``x-error``)
        is described from its ``x-death`` record."""
        if ERROR in headers:
            at = headers.get(DEAD_LETTERED_AT)
            return cls(
                error_category=_text(headers.get(ERROR_CATEGORY)) or "unknown",
                error=_text(headers.get(ERROR)) or "",
                attempts=int(headers.get(ATTEMPTS) or 0),
                task_id=_text(headers.get(TASK_ID)),
                dead_lettered_at=datetime.fromisoformat(_text(at) or "") if at else None,
                worker_id=_text(headers.get(WORKER_ID)),
            )
        deaths = headers.get("x-death") or []
        death = deaths[0] if deaths else {}
        reason = _text(death.get("reason")) or "unknown"
        when = death.get("time")
        return cls(
            error_category=ErrorCategory.PERMANENT,
            error=f"dead-lettered by RabbitMQ: {reason}"
            + (
                " (the message was delivered too many times; workers died or crashed on it)"
                if reason == DELIVERY_LIMIT
                else ""
            ),
            attempts=int(headers.get("x-delivery-count") or death.get("count") or 0),
            task_id=_text(headers.get(TASK_ID)),
            dead_lettered_at=when if isinstance(when, datetime) else None,
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# Set by `dlq replay` on each message it sends back: a stored *failed* outcome of the same task
# does not block a replayed message whose replay id differs from the one recorded with it.
REPLAY_ID = "x-replay-id"
