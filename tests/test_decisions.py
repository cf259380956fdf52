"""The worker's decisions about a delivery, alone: no broker, no Valkey."""

from __future__ import annotations

import msgspec
import pytest

from consumer.decisions import (
    MIN_POSTPONE_SECONDS,
    Finish,
    LedgerAnswer,
    Postpone,
    Retry,
    after_attempt,
    answer_from_ledger,
    leased_elsewhere,
)
from consumer.ledger import StoredOutcome
from consumer.retry import RetryPolicy
from schemas import ErrorCategory, ExecutionResult

POLICY = RetryPolicy(max_retries=2, backoff_factor=1.0, jitter=False)


def failed(category: ErrorCategory, error: str = "boom", **extra: object) -> ExecutionResult:
    return ExecutionResult(task_id="t", success=False, error=error, error_category=category, **extra)  # type: ignore[arg-type]


def decide(result: ExecutionResult, attempt: int, *, enable_retry: bool = True) -> object:
    return after_attempt(result, attempt=attempt, policy=POLICY, enable_retry=enable_retry, breaker_reset_seconds=7)


def test_a_success_is_finished_as_it_is() -> None:
    ok = ExecutionResult(task_id="t", success=True)
    assert decide(ok, 1) == Finish(ok)


def test_a_transient_failure_is_retried_with_the_policy_delay_and_the_attempts_made() -> None:
    assert decide(failed(ErrorCategory.TRANSIENT), 1) == Retry(
        1.0, 1, "transient: boom; retry 1 of 2 in 1.0 s", error_category=ErrorCategory.TRANSIENT
    )
    second = decide(failed(ErrorCategory.TIMEOUT), 2)
    assert isinstance(second, Retry) and second.delay_seconds == 2.0 and second.attempts == 2


def test_the_last_allowed_attempt_finishes_saying_it_gave_up() -> None:
    decision = decide(failed(ErrorCategory.TRANSIENT), 3)
    assert isinstance(decision, Finish)
    assert decision.result.error == "boom (gave up after 3 attempts)"


@pytest.mark.parametrize("category", [ErrorCategory.PERMANENT, ErrorCategory.INVALID])
def test_a_permanent_failure_is_finished_at_once(category: ErrorCategory) -> None:
    result = failed(category)
    assert decide(result, 1) == Finish(result)


def test_retries_disabled_finish_a_transient_failure_without_saying_it_gave_up() -> None:
    result = failed(ErrorCategory.TRANSIENT)
    assert decide(result, 1, enable_retry=False) == Finish(result)


def test_an_open_circuit_postpones_without_counting_an_attempt() -> None:
    decision = decide(failed(ErrorCategory.TRANSIENT, result={"circuit": "open"}), 3)
    assert isinstance(decision, Postpone) and decision.delay_seconds == 7 and decision.status_detail


def test_a_task_leased_elsewhere_is_looked_at_again_when_the_lease_can_have_run_out() -> None:
    assert leased_elsewhere(4.5).delay_seconds == 4.5
    assert leased_elsewhere(0).delay_seconds == MIN_POSTPONE_SECONDS


def stored(
    success: bool, *, message_id: str = "m1", published: bool = True, replay_id: str | None = None
) -> StoredOutcome:
    return StoredOutcome(
        result=ExecutionResult(task_id="t", success=success),
        message_id=message_id,
        published=published,
        replay_id=replay_id,
    )


def answer(
    record: StoredOutcome | None, *, message_id: str = "m1", replay_id: str | None = None, leased: bool = False
) -> LedgerAnswer:
    return answer_from_ledger(record, message_id=message_id, replay_id=replay_id, leased=leased)


def test_no_record_runs_the_task() -> None:
    assert answer(None) is LedgerAnswer.RUN


def test_a_redelivered_message_whose_outcome_is_out_is_only_acked() -> None:
    assert answer(stored(True)) is LedgerAnswer.ACK


def test_a_recorded_unpublished_outcome_is_published_only_under_the_lease() -> None:
    assert answer(stored(True, published=False), leased=False) is LedgerAnswer.RUN
    assert answer(stored(True, published=False), leased=True) is LedgerAnswer.PUBLISH_RECORDED


def test_another_copy_of_a_finished_task_gets_its_stored_result_again() -> None:
    assert answer(stored(True), message_id="m2") is LedgerAnswer.REPUBLISH


def test_a_replay_runs_a_failed_task_again_but_never_a_succeeded_one() -> None:
    assert answer(stored(False, replay_id="r1"), message_id="m2", replay_id="r2") is LedgerAnswer.RUN
    assert answer(stored(False, replay_id="r1"), message_id="m2", replay_id="r1") is LedgerAnswer.REPUBLISH
    assert answer(stored(True), message_id="m2", replay_id="r2") is LedgerAnswer.REPUBLISH


def test_a_task_id_reused_by_another_command_is_refused_even_as_a_replay() -> None:
    record = msgspec.structs.replace(stored(False, replay_id="r1"), fingerprint="f-original")
    assert answer_from_ledger(record, message_id="m2", replay_id=None, leased=False, fingerprint="f-other") is (
        LedgerAnswer.REFUSE_REUSED
    )
    assert answer_from_ledger(record, message_id="m2", replay_id="r2", leased=False, fingerprint="f-other") is (
        LedgerAnswer.REFUSE_REUSED
    )
    # The same command: answered as before; an older record without a fingerprint: too.
    assert answer_from_ledger(record, message_id="m2", replay_id=None, leased=False, fingerprint="f-original") is (
        LedgerAnswer.REPUBLISH
    )
    assert answer_from_ledger(stored(True), message_id="m2", replay_id=None, leased=False, fingerprint="f") is (
        LedgerAnswer.REPUBLISH
    )
