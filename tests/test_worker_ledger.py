"""The idempotency ledger against a real Valkey: stored outcomes and task leases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from consumer.ledger import Lease, Ledger, StoredOutcome
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
    await ledger.record(stored)
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
