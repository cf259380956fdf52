"""What happens to a delivery, decided in one place from plain values.

The worker asks these functions and carries the answer out with AMQP calls (``Worker._carry_out``);
nothing here touches the broker or Valkey, so every branch is testable alone
(``tests/test_decisions.py``).

- ``Finish``   a final outcome: record it, publish it (a failure is also dead-lettered), then ack.
- ``Retry``    the attempt failed and may be tried again: back through a retry tier after the
               policy's delay, carrying the attempts made so far.
- ``Postpone`` not an attempt (the task runs elsewhere, the engine's circuit is open): back through
               a retry tier, the attempt count unchanged.
- ``PutBack``  interrupted (the worker is stopping, Valkey is down, the drain cancelled it): back as
               the same attempt after a short delay. A plain requeue would count a delivery, and
               the delivery limit would dead-letter a command that was only interrupted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from schemas import ErrorCategory, ExecutionResult

if TYPE_CHECKING:
    from consumer.ledger import StoredOutcome
    from consumer.retry import RetryPolicy

# A command that could not be handled (Valkey down, a defect) waits this long before it is looked at again.
PUT_BACK_DELAY_SECONDS = 1.0
# The shortest wait before a postponed command (task leased elsewhere, circuit open) is looked at again.
MIN_POSTPONE_SECONDS = 0.2


@dataclass(frozen=True)
class Finish:
    result: ExecutionResult


@dataclass(frozen=True)
class Retry:
    delay_seconds: float
    attempts: int  # attempts made so far, carried in ``x-attempts``
    detail: str  # for the ``retrying`` status event
    error_category: ErrorCategory | None = None  # of the failed attempt (metrics)


@dataclass(frozen=True)
class Postpone:
    delay_seconds: float
    why: str
    status_detail: str | None = None  # a ``retrying`` status event with this detail; None: none
    reason: str = "leased"  # a metric label: leased | circuit_open


@dataclass(frozen=True)
class PutBack:
    why: str
    delay_seconds: float = PUT_BACK_DELAY_SECONDS
    reason: str = "stopping"  # a metric label: stopping | valkey


Disposition = Finish | Retry | Postpone | PutBack


def after_attempt(
    result: ExecutionResult,
    *,
    attempt: int,
    policy: RetryPolicy,
    enable_retry: bool,
    breaker_reset_seconds: float,
) -> Disposition:
    """What becomes of a command after attempt number ``attempt`` produced ``result``."""
    if result.success:
        return Finish(result)
    if failed_fast_on_open_circuit(result):
        return open_circuit(breaker_reset_seconds)  # the engine was never tried: not an attempt
    if policy.should_retry(result.error_category, attempt, enabled=enable_retry):
        delay = policy.delay_for(attempt)
        category = result.error_category.value if result.error_category else "failed"
        return Retry(
            delay_seconds=delay,
            attempts=attempt,
            detail=f"{category}: {result.error}; retry {attempt} of {policy.max_retries} in {delay:.1f} s",
            error_category=result.error_category,
        )
    if enable_retry and policy.is_retryable(result.error_category):
        result = msgspec.structs.replace(result, error=f"{result.error} (gave up after {attempt} attempts)")
    return Finish(result)


def open_circuit(breaker_reset_seconds: float) -> Postpone:
    """The engine's circuit is open: look again when a probe may have closed it."""
    return Postpone(
        max(MIN_POSTPONE_SECONDS, breaker_reset_seconds),
        "engine unavailable (circuit open)",
        status_detail="engine unavailable (circuit open); not an attempt",
        reason="circuit_open",
    )


def leased_elsewhere(lease_remaining_seconds: float) -> Postpone:
    """The task runs on a worker holding its lease: look again when that lease could have run out."""
    return Postpone(max(MIN_POSTPONE_SECONDS, lease_remaining_seconds), "task is running elsewhere")


class LedgerAnswer(enum.Enum):
    """What the ledger's record of a task means for a delivery of it."""

    RUN = "run"  # nothing final for this delivery: go on (lease, execute)
    ACK = "ack"  # this very message's outcome is out already: ack it
    PUBLISH_RECORDED = "publish-recorded"  # recorded, never published (its worker died): publish, ack
    REPUBLISH = "republish"  # a duplicate of a finished task: publish its stored result again, ack
    REFUSE_REUSED = "refuse-reused"  # another command under the same task id: refuse it (invalid)


def answer_from_ledger(
    stored: StoredOutcome | None,
    *,
    message_id: str | None,
    replay_id: str | None,
    leased: bool,
    fingerprint: str | None = None,
) -> LedgerAnswer:
    """``leased``: whether we hold the task's lease. An outcome recorded but not yet published for
    this very message is ours to publish only under the lease: without it, the handler that
    recorded it may still be publishing. ``fingerprint``: of this delivery's command; the stored
    outcome answers (or gives way to a replay of) the same command only."""
    if stored is not None and reused_by_another_command(stored, fingerprint):
        return LedgerAnswer.REFUSE_REUSED
    if stored is None or replaced_by_replay(stored, replay_id):
        return LedgerAnswer.RUN
    same_message = message_id is not None and message_id == stored.message_id
    if same_message and stored.published:
        return LedgerAnswer.ACK
    if same_message:
        return LedgerAnswer.PUBLISH_RECORDED if leased else LedgerAnswer.RUN
    return LedgerAnswer.REPUBLISH


def reused_by_another_command(stored: StoredOutcome, fingerprint: str | None) -> bool:
    """The task id of ``stored`` sent with other parameters (an older record has no fingerprint)."""
    return stored.fingerprint is not None and fingerprint is not None and stored.fingerprint != fingerprint


def replaced_by_replay(stored: StoredOutcome, replay_id: str | None) -> bool:
    """A stored failure gives way to a replay of its task (a new ``x-replay-id``)."""
    return not stored.result.success and replay_id is not None and replay_id != stored.replay_id


def failed_fast_on_open_circuit(result: ExecutionResult) -> bool:
    """The adapter refused to call the engine because its circuit is open."""
    if result.error_category != ErrorCategory.TRANSIENT:
        return False
    detail = result.result
    if isinstance(detail, dict) and detail.get("circuit") == "open":
        return True
    error = result.error or ""
    return "circuit: open" in error or "circuit breaker is open" in error
