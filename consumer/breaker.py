"""A circuit breaker around the Dagger engine (a small one of our own, on the monotonic clock).

Only failures that say the *engine* is in trouble count (category ``transient``: unreachable,
transport errors), and a hung engine (an execution timed out and the engine did not answer a
probe either: ``record_engine_failure``). A step exiting non-zero, bad parameters, a timeout of a
slow step and registry or image errors (pull denied, not found, rate limited, a registry's 5xx:
the tenant's problem, retried but never the engine's fault) say nothing about the engine: they
count like successes (the engine answered) and end a streak.

States: ``closed`` (calls pass) -> ``open`` after ``failure_threshold`` consecutive engine
failures (calls fail fast as transient, the engine is not touched) -> once ``reset_seconds`` have
passed, the next call is let through as the one ``half-open`` probe (other calls still fail fast
while it runs): success closes the circuit, failure opens it again for another ``reset_seconds``.
The switch to half-open happens on that next call (there is no timer), which is what
``DaggerAdapter.probe()`` is for. Time is ``time.monotonic()``: a wall-clock step cannot open or
close the circuit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from consumer.errors import ExecutionFailure, classify
from schemas import ErrorCategory

log = logging.getLogger("dagger_adapter.breaker")

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

StateCallback = Callable[[str], None]
Clock = Callable[[], float]


def _engine_failure(failure: ExecutionFailure) -> bool:
    """Whether a failure says the engine is in trouble (registry errors are the tenant's)."""
    return failure.category is ErrorCategory.TRANSIENT and not failure.registry


class EngineCircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        reset_seconds: float,
        *,
        name: str = "dagger-engine",
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_seconds < 0:
            raise ValueError("reset_seconds must not be negative")
        self.name = name
        self._threshold = failure_threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._listeners: list[StateCallback] = []
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False  # a half-open probe is in flight

    @property
    def state(self) -> str:
        return self._state

    @property
    def failure_count(self) -> int:
        """Consecutive engine failures counted so far."""
        return self._failures

    def add_listener(self, callback: StateCallback) -> None:
        """``callback(state)`` on every state change."""
        self._listeners.append(callback)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` through the breaker. Raises ``ExecutionFailure``: the call's own failure,
        or a transient "circuit open" one when the engine was not even tried."""
        probe = self._admit()
        try:
            result: T = await fn(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: says nothing about the engine
                self._release(probe)
                raise
            failure = classify(exc)
            if not _engine_failure(failure):
                self._on_answer(probe)
            elif self._on_engine_failure(probe):
                raise ExecutionFailure(
                    failure.category, f"{failure.message} (engine circuit breaker opened)", partial=failure.partial
                ) from exc
            if failure is exc:
                raise
            raise failure from exc
        self._on_answer(probe)
        return result

    async def record_engine_failure(self, message: str) -> None:
        """Count an engine failure seen outside ``call`` (a hung engine found by a probe)."""

        async def failed() -> None:
            raise ExecutionFailure(ErrorCategory.TRANSIENT, message)

        with contextlib.suppress(ExecutionFailure):
            await self.call(failed)

    # --- decisions ---------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Let a call through (True: it is the half-open probe) or fail fast."""
        if self._state == CLOSED:
            return False
        if self._state == OPEN and self._clock() - self._opened_at >= self._reset_seconds:
            self._set(HALF_OPEN)
        if self._state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        raise ExecutionFailure(
            ErrorCategory.TRANSIENT,
            "engine circuit breaker is open after repeated engine failures "
            f"(circuit: {self._state}; the engine is probed again {self._reset_seconds:g}s after it opened)",
            circuit_open=True,
        )

    def _release(self, probe: bool) -> None:
        if probe:
            self._probing = False

    def _on_answer(self, probe: bool) -> None:
        self._release(probe)
        self._failures = 0
        if probe or self._state == HALF_OPEN:
            self._set(CLOSED)

    def _on_engine_failure(self, probe: bool) -> bool:
        """Count an engine failure; True when it (re)opened the circuit."""
        self._release(probe)
        if self._state == OPEN:  # a call admitted before the circuit opened: already open
            return False
        self._failures += 1
        if probe or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._set(OPEN)
            return True
        return False

    # --- effects -----------------------------------------------------------------------------

    def _set(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        log.log(logging.INFO if state == CLOSED else logging.WARNING, "engine circuit breaker is now %s", state)
        for callback in list(self._listeners):
            try:
                callback(state)
            except Exception:
                log.exception("circuit state listener failed")
