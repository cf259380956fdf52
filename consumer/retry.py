"""When and how long to wait before trying a failed execution again.

``RetryPolicy`` holds the arithmetic (used by the adapter's in-process retries *and* by the
worker's retries through RabbitMQ, so both wait the same); ``RetryHandler`` runs attempts
with tenacity under that policy.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity
from tenacity.asyncio import AsyncRetrying

from consumer.errors import ExecutionFailure, classify
from schemas import ErrorCategory

log = logging.getLogger("dagger_adapter.retry")

T = TypeVar("T")

RETRYABLE = frozenset({ErrorCategory.TRANSIENT, ErrorCategory.TIMEOUT})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_retries`` retries after the first attempt; before retry n (1-based) wait
    ``backoff_factor * 2**(n-1)`` seconds, capped at ``max_delay``. With ``jitter`` the
    delay is drawn uniformly from [delay/2, delay] ("equal jitter"): workers that failed
    together do not come back together, and no retry comes back sooner than half its backoff.
    """

    max_retries: int = 3
    backoff_factor: float = 1.0
    jitter: bool = True
    max_delay: float = 600.0
    retryable: frozenset[ErrorCategory] = RETRYABLE
    _random: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        delay: float = min(self.backoff_factor * 2.0 ** max(attempt - 1, 0), self.max_delay)
        if self.jitter and delay > 0:
            return float(self._random.uniform(delay / 2, delay))
        return delay

    def is_retryable(self, category: ErrorCategory | str | None) -> bool:
        if category is None:
            return False
        try:
            return ErrorCategory(category) in self.retryable
        except ValueError:
            return False

    def allows_another(self, attempt: int) -> bool:
        """Whether attempt ``attempt`` (1-based, just failed) may be followed by another."""
        return attempt < self.max_retries + 1

    def should_retry(self, category: ErrorCategory | str | None, attempt: int, *, enabled: bool = True) -> bool:
        """The whole decision: retries enabled, a retryable failure, attempts left."""
        return enabled and self.is_retryable(category) and self.allows_another(attempt)


class RetryHandler:
    """Runs an attempt function until it succeeds, fails for good, or runs out of retries.

    Attempt numbers continue from ``first_attempt`` (a message redelivered by the broker
    for the 2nd time starts at 2), so the total never exceeds ``max_retries + 1``.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    async def run(
        self,
        attempt_fn: Callable[[int], Awaitable[T]],
        *,
        first_attempt: int = 1,
        enabled: bool = True,
        on_retry: Callable[[int, ExecutionFailure, float], None] | None = None,
    ) -> tuple[T, int]:
        """Returns ``(value, attempt number that succeeded)``; raises ``ExecutionFailure``
        (the last one) with ``.attempts`` set when no attempt succeeded."""
        policy = self.policy

        def number(state: tenacity.RetryCallState) -> int:
            return first_attempt + state.attempt_number - 1

        def retryable(exc: BaseException) -> bool:
            return enabled and policy.is_retryable(classify(exc).category)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if error is None:
                return
            failure = classify(error)
            delay = state.upcoming_sleep
            log.info(
                "attempt %d failed (%s: %s); retrying in %.2fs",
                number(state),
                failure.category.value,
                failure.message,
                delay,
            )
            if on_retry is not None:
                on_retry(number(state), failure, delay)

        retrying = AsyncRetrying(
            stop=lambda state: not policy.allows_another(number(state)),
            wait=lambda state: policy.delay_for(number(state)),
            retry=tenacity.retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        attempt_no = first_attempt
        try:
            async for attempt in retrying:
                with attempt:
                    attempt_no = number(attempt.retry_state)
                    value = await attempt_fn(attempt_no)
        except Exception as exc:
            failure = classify(exc)
            failure.attempts = attempt_no
            if failure is exc:
                raise
            raise failure from exc
        return value, attempt_no
