"""A circuit breaker (aiobreaker) around the Dagger engine.

Only failures that say the *engine* is in trouble count (category ``transient``: unreachable,
transport errors), and a hung engine (an execution timed out and the engine did not answer a
probe either: ``record_engine_failure``). A step exiting non-zero, bad parameters, a timeout
of a slow step and registry or image errors (pull denied, not found, rate limited, a registry's
5xx: the tenant's problem, retried but never the engine's fault) say nothing about the engine:
aiobreaker treats them like successes (the engine answered).

States: ``closed`` (calls pass) -> ``open`` after ``failure_threshold`` consecutive engine
failures (calls fail fast as transient, the engine is not touched) -> after
``reset_seconds`` the next call is let through as a ``half-open`` probe: success closes the
circuit, failure opens it again. The switch to half-open happens on that next call (aiobreaker
has no timer), which is what ``DaggerAdapter.probe()`` is for.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener, CircuitBreakerState

from consumer.errors import ExecutionFailure, classify
from schemas import ErrorCategory

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
_NAMES = {
    CircuitBreakerState.CLOSED: CLOSED,
    CircuitBreakerState.OPEN: OPEN,
    CircuitBreakerState.HALF_OPEN: HALF_OPEN,
}

StateCallback = Callable[[str], None]


def _not_an_engine_failure(exc: Exception) -> bool:
    failure = classify(exc)
    return failure.category is not ErrorCategory.TRANSIENT or failure.registry


class _StateListener(CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, owner: EngineCircuitBreaker) -> None:
        self._owner = owner

    def state_change(self, breaker: CircuitBreaker, old: Any, new: Any) -> None:
        self._owner._notify(_NAMES[new.state])


class EngineCircuitBreaker:
    def __init__(self, failure_threshold: int, reset_seconds: float, *, name: str = "dagger-engine") -> None:
        self._listeners: list[StateCallback] = []
        self._reset_seconds = reset_seconds
        self._breaker = CircuitBreaker(
            fail_max=failure_threshold,
            timeout_duration=timedelta(seconds=reset_seconds),
            exclude=[_not_an_engine_failure],
            listeners=[_StateListener(self)],
            name=name,
        )

    @property
    def state(self) -> str:
        return _NAMES[self._breaker.current_state]

    @property
    def failure_count(self) -> int:
        """Consecutive engine failures counted so far."""
        return int(self._breaker.fail_counter)

    def add_listener(self, callback: StateCallback) -> None:
        """``callback(state)`` on every state change."""
        self._listeners.append(callback)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` through the breaker. Raises ``ExecutionFailure``: the call's own failure,
        or a transient "circuit open" one when the engine was not even tried."""
        try:
            result: T = await self._breaker.call_async(fn, *args, **kwargs)
            return result
        except CircuitBreakerError as exc:
            cause = exc.__cause__
            if cause is None:  # rejected without touching the engine
                raise ExecutionFailure(
                    ErrorCategory.TRANSIENT,
                    "engine circuit breaker is open after repeated engine failures "
                    f"(circuit: open; the engine is probed again {self._reset_seconds:g}s after it opened)",
                    circuit_open=True,
                ) from None
            # This call's failure tripped the breaker: report the failure itself.
            failure = classify(cause)
            raise ExecutionFailure(
                failure.category, f"{failure.message} (engine circuit breaker opened)", partial=failure.partial
            ) from cause
        except ExecutionFailure:
            raise
        except Exception as exc:
            raise classify(exc) from exc

    async def record_engine_failure(self, message: str) -> None:
        """Count an engine failure seen outside ``call`` (a hung engine found by a probe)."""

        async def failed() -> None:
            raise ExecutionFailure(ErrorCategory.TRANSIENT, message)

        with contextlib.suppress(ExecutionFailure):
            await self.call(failed)

    def _notify(self, state: str) -> None:
        log.log(logging.INFO if state == CLOSED else logging.WARNING, "engine circuit breaker is now %s", state)
        for callback in list(self._listeners):
            try:
                callback(state)
            except Exception:
                log.exception("circuit state listener failed")
