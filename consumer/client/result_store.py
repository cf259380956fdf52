"""Looking up what became of a task after the fact: its outcome record.

The answer comes from where the workers record every final outcome before they ack its command:
the idempotency ledger in Valkey (like Celery's or Dramatiq's result backend). So a lookup works
with no worker running, and answers exactly what a duplicate of the command would be answered.
Records live ``max(cache_ttl_seconds, 1 day)``; an older or never-seen task is unknown (None).
"""

from __future__ import annotations

from types import TracebackType

import msgspec

from consumer.ledger import Ledger
from schemas import ExecutionResult, InvalidMessage
from schemas.messages import TaskId
from topology import Topology

# A lookup only reads: the lease and retention settings of a Ledger are the workers' business.
_READ_ONLY = {"lease_seconds": 1.0, "outcome_ttl_seconds": 1.0}


class ResultStore:
    """``get(task_id)``: the task's final ``ExecutionResult``, or None when none is recorded."""

    def __init__(self, valkey_url: str, topology: Topology | None = None) -> None:
        prefix = (topology or Topology()).prefix
        self._ledger = Ledger.from_url(valkey_url, namespace=prefix, **_READ_ONLY)

    async def get(self, task_id: str) -> ExecutionResult | None:
        stored = await self._ledger.outcome(_checked(task_id))
        return None if stored is None else stored.result

    async def running_on(self, task_id: str) -> str | None:
        """The worker holding the task's lease (running it now), if any."""
        return await self._ledger.lease_holder(_checked(task_id))

    async def close(self) -> None:
        await self._ledger.close()

    async def __aenter__(self) -> ResultStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _checked(task_id: str) -> str:
    """A task id as commands may carry it (so a lookup cannot name some other key)."""
    try:
        return msgspec.convert(task_id, TaskId)
    except msgspec.ValidationError as exc:
        raise InvalidMessage(f"task id: {exc}") from None
