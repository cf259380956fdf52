"""The idempotency ledger against a real Valkey: stored outcomes and task leases."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest

import consumer.ledger as ledger_module
from consumer.ledger import Lease, Ledger, Recorded, StoredOutcome
from schemas import ErrorCategory, ExecutionResult

# Short, so expiry tests are quick; renewal every LEASE/3 leaves slack for a busy 2-core machine.
LEASE = 1.0


@pytest.fixture
async def ledger(valkey_url: str) -> AsyncIterator[Ledger]:
    ledger = Ledger.from_url(
        valkey_url, namespace=f"t{uuid.uuid4().hex[:8]}", lease_seconds=LEASE, outcome_ttl_seconds=60
    )
    try:
        yield ledger
    finally:
        await ledger.close()


async def lease_once_expired(ledger: Ledger, task_id: str, owner: str, timeout: float = 10) -> Lease:
    """The lease of ``task_id`` for ``owner``, taken as soon as the current one has expired."""
    deadline = time.monotonic() + timeout
    while (lease := await ledger.try_lease(task_id, owner)) is None:
        assert time.monotonic() < deadline, f"the lease of {task_id} did not expire within {timeout} s"
        await asyncio.sleep(0.05)
    return lease


async def test_an_outcome_is_stored_and_read_back(ledger: Ledger) -> None:
    result = ExecutionResult(task_id="t-1", success=False, error="boom", error_category=ErrorCategory.PERMANENT)
    assert await ledger.outcome("t-1") is None

    stored = StoredOutcome(result=result, message_id="m-1", replay_id="r-1")
    lease = await ledger.try_lease("t-1", "worker-a")
    assert lease is not None
    assert await ledger.record_first(stored, fence=lease.fence) == (Recorded.RECORDED, None)
    back = await ledger.outcome("t-1")
    assert back is not None
    assert back.result == result and back.message_id == "m-1" and back.replay_id == "r-1"
    assert back.published is False

    await ledger.mark_published(stored)
    back = await ledger.outcome("t-1")
    assert back is not None and back.published is True


async def test_a_lease_is_exclusive_until_released(ledger: Ledger) -> None:
    first = await ledger.try_lease("t-2", "worker-a")
    assert first is not None
    assert await ledger.try_lease("t-2", "worker-b") is None
    assert await ledger.lease_holder("t-2") == "worker-a"
    assert 0 < await ledger.lease_remaining("t-2") <= LEASE

    await first.release()
    assert await ledger.lease_remaining("t-2") == 0
    assert await ledger.try_lease("t-2", "worker-b") is not None


async def test_a_held_lease_is_renewed_while_the_task_runs(ledger: Ledger) -> None:
    lease = await ledger.try_lease("t-3", "worker-a")
    assert lease is not None
    async with lease:
        # Well past the lease's own lifetime: only renewal keeps it.
        deadline = time.monotonic() + 3 * LEASE
        while time.monotonic() < deadline:
            assert await ledger.try_lease("t-3", "worker-b") is None
            await asyncio.sleep(0.1)
        assert not lease.lost
    # Released on exit: another worker gets it at once.
    assert await ledger.try_lease("t-3", "worker-b") is not None


async def test_the_lease_of_a_dead_worker_expires(ledger: Ledger) -> None:
    # Taken and never renewed (its worker died): another worker gets it once it has expired.
    assert await ledger.try_lease("t-4", "worker-dead") is not None
    assert await ledger.try_lease("t-4", "worker-b") is None
    await lease_once_expired(ledger, "t-4", "worker-b")
    assert await ledger.lease_holder("t-4") == "worker-b"


async def test_a_stale_lease_holder_does_not_release_the_new_holders_lease(ledger: Ledger) -> None:
    stale = await ledger.try_lease("t-5", "worker-a")
    assert stale is not None
    await lease_once_expired(ledger, "t-5", "worker-b")
    await stale.release()
    assert await ledger.lease_holder("t-5") == "worker-b"


def outcome_of(task_id: str, worker: str, *, success: bool = True, replay_id: str | None = None) -> StoredOutcome:
    result = ExecutionResult(task_id=task_id, success=success, worker_id=worker)
    return StoredOutcome(result=result, message_id=f"m-{worker}", replay_id=replay_id)


async def test_only_the_first_final_outcome_of_a_task_is_recorded(ledger: Ledger) -> None:
    lease = await ledger.try_lease("t-6", "worker-a")
    assert lease is not None
    assert (await ledger.record_first(outcome_of("t-6", "a"), fence=lease.fence))[0] is Recorded.RECORDED
    verdict, standing = await ledger.record_first(outcome_of("t-6", "b"), fence=lease.fence)
    assert verdict is Recorded.EXISTS and standing is not None and standing.result.worker_id == "a"
    stored = await ledger.outcome("t-6")
    assert stored is not None and stored.result.worker_id == "a"


async def test_a_worker_whose_lease_was_taken_over_is_fenced_out(ledger: Ledger) -> None:
    stale = await ledger.try_lease("t-7", "worker-a")
    assert stale is not None
    fresh = await lease_once_expired(ledger, "t-7", "worker-b")  # a stall longer than the lease
    assert fresh.fence > stale.fence
    assert await ledger.record_first(outcome_of("t-7", "a"), fence=stale.fence) == (Recorded.FENCED, None)
    assert await ledger.outcome("t-7") is None
    assert (await ledger.record_first(outcome_of("t-7", "b"), fence=fresh.fence))[0] is Recorded.RECORDED


async def test_racing_records_of_one_task_leave_exactly_one_outcome(ledger: Ledger) -> None:
    lease = await ledger.try_lease("t-8", "worker-a")
    assert lease is not None
    verdicts = await asyncio.gather(
        *(ledger.record_first(outcome_of("t-8", f"w{i}"), fence=lease.fence) for i in range(20))
    )
    assert [v for v, _ in verdicts].count(Recorded.RECORDED) == 1
    assert [v for v, _ in verdicts].count(Recorded.EXISTS) == 19


async def test_a_replay_replaces_a_recorded_failure_but_never_a_success(ledger: Ledger) -> None:
    lease = await ledger.try_lease("t-9", "worker-a")
    assert lease is not None
    await ledger.record_first(outcome_of("t-9", "a", success=False, replay_id=None), fence=lease.fence)
    await ledger.mark_published(outcome_of("t-9", "a"))
    replayed = outcome_of("t-9", "b", success=True, replay_id="r-1")
    assert (await ledger.record_first(replayed, fence=lease.fence))[0] is Recorded.RECORDED
    stored = await ledger.outcome("t-9")
    assert stored is not None and stored.result.success and stored.published is False  # not yet published
    again = outcome_of("t-9", "c", success=False, replay_id="r-2")
    assert (await ledger.record_first(again, fence=lease.fence))[0] is Recorded.EXISTS


async def test_a_lease_whose_renewals_fail_for_a_whole_lifetime_is_lost(valkey_url: str) -> None:
    ledger = Ledger.from_url(
        valkey_url, namespace=f"t{uuid.uuid4().hex[:8]}", lease_seconds=LEASE, outcome_ttl_seconds=60
    )
    lease = await ledger.try_lease("t-10", "worker-a")
    assert lease is not None
    async with lease:
        await ledger._client.aclose()  # Valkey unreachable from here on: every renewal fails
        ledger._client = type(ledger._client).from_url("valkey://127.0.0.1:1")  # nothing listens there
        ledger._renew_all = ledger._client.register_script(ledger_module._RENEW_ALL)
        deadline = time.monotonic() + 5 * LEASE
        while not lease.lost:
            assert time.monotonic() < deadline, "a lease that could not be renewed for its lifetime is not lost"
            await asyncio.sleep(0.05)


async def test_taking_a_lease_reads_the_outcome_standing_at_that_moment(ledger: Ledger) -> None:
    first = await ledger.acquire("t-20", "worker-a")
    assert first.lease is not None and first.outcome is None
    result = ExecutionResult(task_id="t-20", success=True)
    stored = StoredOutcome(result=result, message_id="m-20")
    assert (await ledger.record_first(stored, fence=first.lease.fence))[0] is Recorded.RECORDED
    await ledger.mark_published(stored, releasing=first.lease)

    # Published and released in one step: the next worker gets the lease and the outcome at once.
    second = await ledger.acquire("t-20", "worker-b")
    assert second.lease is not None and second.outcome is not None
    assert second.outcome.result == result and second.outcome.published and second.outcome.message_id == "m-20"
    # Holding the lease, worker-b blocks worker-c, which still sees the outcome.
    third = await ledger.acquire("t-20", "worker-c")
    assert third.lease is None and third.outcome is not None and third.outcome.published
    await second.lease.release()


async def test_all_leases_a_worker_holds_are_kept_together(ledger: Ledger) -> None:
    # Hundreds at once (one renewal round trip for all of them): each is still exclusive after
    # three of its lifetimes, and each is free at once when released.
    leases = [await ledger.try_lease(f"t-many-{i}", "worker-a") for i in range(300)]
    assert all(lease is not None for lease in leases)
    async with contextlib.AsyncExitStack() as held:
        for lease in leases:
            await held.enter_async_context(lease)  # type: ignore[arg-type]
        await asyncio.sleep(3 * LEASE)
        taken = await asyncio.gather(*(ledger.try_lease(f"t-many-{i}", "worker-b") for i in range(300)))
        assert taken == [None] * 300
        assert not any(lease.lost for lease in leases if lease is not None)
    assert await ledger.try_lease("t-many-7", "worker-b") is not None


async def test_a_lease_held_past_its_hold_limit_lapses_so_a_copy_can_run(ledger: Ledger) -> None:
    # The handler holding it is stuck (say, on a broker write that never returns): the lease is
    # no longer renewed once the longest handling could take has passed, and it expires.
    stuck = await ledger.try_lease("t-11", "worker-a", hold_limit=2 * LEASE)
    assert stuck is not None
    async with stuck:
        assert await ledger.try_lease("t-11", "worker-b") is None
        await asyncio.sleep(LEASE)  # renewed meanwhile: still ours
        assert await ledger.try_lease("t-11", "worker-b") is None
        copy = await lease_once_expired(ledger, "t-11", "worker-b", timeout=4 * LEASE)
        assert stuck.lost
        # Our outcome, should the stuck handler come back, is fenced out.
        assert await ledger.record_first(outcome_of("t-11", "a"), fence=stuck.fence) == (Recorded.FENCED, None)
        assert (await ledger.record_first(outcome_of("t-11", "b"), fence=copy.fence))[0] is Recorded.RECORDED
