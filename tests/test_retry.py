"""Retry policy arithmetic, the tenacity-based handler, and retries as the engine sees them."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ExecutionFailure
from consumer.retry import RetryHandler, RetryPolicy
from schemas import ErrorCategory
from tests.dagger_engine import TestEngine
from tests.test_adapter_support import adapter_config, started, workflow_command

TRANSIENT, PERMANENT, TIMEOUT, INVALID = (
    ErrorCategory.TRANSIENT,
    ErrorCategory.PERMANENT,
    ErrorCategory.TIMEOUT,
    ErrorCategory.INVALID,
)


def test_backoff_doubles_from_the_factor_without_jitter() -> None:
    policy = RetryPolicy(max_retries=5, backoff_factor=0.5, jitter=False)
    assert [policy.delay_for(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(max_retries=50, backoff_factor=1.0, jitter=False, max_delay=60.0)
    assert policy.delay_for(30) == 60.0


def test_jitter_stays_between_half_and_the_full_backoff_and_varies() -> None:
    policy = RetryPolicy(backoff_factor=2.0, jitter=True)
    delays = [policy.delay_for(3) for _ in range(200)]  # backoff 8 s
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 1


def test_only_transient_and_timeout_failures_are_retryable() -> None:
    policy = RetryPolicy()
    assert policy.is_retryable(TRANSIENT) and policy.is_retryable("timeout")
    assert not policy.is_retryable(PERMANENT) and not policy.is_retryable(INVALID)
    assert not policy.is_retryable(None) and not policy.is_retryable("bogus")


def test_should_retry_counts_attempts_and_honours_disabling() -> None:
    policy = RetryPolicy(max_retries=2)
    assert policy.should_retry(TRANSIENT, 1) and policy.should_retry(TRANSIENT, 2)
    assert not policy.should_retry(TRANSIENT, 3)  # 3 attempts = 1 + max_retries
    assert not policy.should_retry(TRANSIENT, 1, enabled=False)
    assert not policy.should_retry(PERMANENT, 1)


class Flaky:
    """Fails with ``category`` for the first ``failures`` attempts."""

    def __init__(self, failures: int, category: ErrorCategory = TRANSIENT) -> None:
        self.failures, self.category = failures, category
        self.seen: list[int] = []

    async def __call__(self, attempt: int) -> str:
        self.seen.append(attempt)
        if len(self.seen) <= self.failures:
            raise ExecutionFailure(self.category, f"failure {len(self.seen)}")
        return "done"


async def test_handler_retries_transient_failures_until_success() -> None:
    flaky = Flaky(2)
    value, attempt = await RetryHandler(RetryPolicy(max_retries=3, backoff_factor=0.001)).run(flaky)
    assert (value, attempt, flaky.seen) == ("done", 3, [1, 2, 3])


async def test_handler_gives_up_after_max_retries_with_the_last_failure() -> None:
    flaky = Flaky(10, TIMEOUT)
    retries: list[tuple[int, float]] = []
    with pytest.raises(ExecutionFailure) as info:
        await RetryHandler(RetryPolicy(max_retries=2, backoff_factor=0.001, jitter=False)).run(
            flaky, on_retry=lambda n, failure, delay: retries.append((n, delay))
        )
    assert info.value.message == "failure 3" and info.value.attempts == 3
    assert retries == [(1, 0.001), (2, 0.002)]


async def test_handler_continues_the_attempt_count_of_a_redelivered_message() -> None:
    flaky = Flaky(10)
    with pytest.raises(ExecutionFailure) as info:
        await RetryHandler(RetryPolicy(max_retries=3, backoff_factor=0.001)).run(flaky, first_attempt=3)
    assert flaky.seen == [3, 4] and info.value.attempts == 4


@pytest.mark.parametrize("category", [PERMANENT, INVALID])
async def test_handler_never_retries_permanent_failures(category: ErrorCategory) -> None:
    flaky = Flaky(1, category)
    with pytest.raises(ExecutionFailure) as info:
        await RetryHandler(RetryPolicy(max_retries=3, backoff_factor=0.001)).run(flaky)
    assert flaky.seen == [1] and info.value.attempts == 1


async def test_handler_disabled_makes_one_attempt() -> None:
    flaky = Flaky(1)
    with pytest.raises(ExecutionFailure):
        await RetryHandler(RetryPolicy(max_retries=3, backoff_factor=0.001)).run(flaky, enabled=False)
    assert flaky.seen == [1]


# --- through the adapter, counted at the engine ------------------------------------------


def echo_command(task_id: str = "retry-1", **extra: object) -> object:
    return workflow_command(task_id, container_image="alpine:3.20", command=["echo", "hello"], **extra)


async def test_an_engine_error_is_retried_and_the_second_attempt_succeeds(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        dagger_engine.fail_requests(1)
        result = await adapter.execute(echo_command())
    assert result.success, result.error
    assert result.attempts == 2
    assert [r.args for r in dagger_engine.execs] == [["echo", "hello"]]  # ran once, on attempt 2
    assert result.result["steps"]["command"]["stdout"] == "hello\n"


async def test_retries_stop_at_max_retries(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path, max_retries=2)) as adapter:
        dagger_engine.fail_requests(1000)
        before = dagger_engine.request_count
        result = await adapter.execute(echo_command())
        requests = dagger_engine.request_count - before
    assert not result.success
    assert result.error_category == ErrorCategory.TRANSIENT
    assert result.attempts == 3
    assert "engine" in (result.error or "")
    # each attempt reached the engine and failed there; nothing ran
    assert requests >= 3 and dagger_engine.execs == []


async def test_no_in_process_retries_when_the_worker_retries(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        dagger_engine.fail_requests(1)
        result = await adapter.execute(echo_command(), attempt=2, in_process_retries=False)
    assert not result.success and result.error_category == ErrorCategory.TRANSIENT
    assert result.attempts == 2  # the worker's attempt number, unchanged
    assert adapter.retry_policy.should_retry(result.error_category, result.attempts)


async def test_enable_retry_false_makes_one_attempt(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        dagger_engine.fail_requests(1)
        result = await adapter.execute(echo_command(enable_retry=False))
        assert not result.success and result.attempts == 1
        # the engine is fine again: the same command now succeeds
        again = await adapter.execute(echo_command("retry-2", enable_retry=False))
    assert again.success and again.attempts == 1


async def test_a_step_exiting_non_zero_is_not_retried(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path)) as adapter:
        result = await adapter.execute(
            workflow_command("retry-3", container_image="alpine:3.20", command=["sh", "-c", "exit 3"])
        )
    assert not result.success and result.error_category == ErrorCategory.PERMANENT
    assert result.attempts == 1 and len(dagger_engine.execs) == 1
