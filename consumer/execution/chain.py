"""Building a chain of SDK calls on one ``dagger.Container`` in O(N).

Every SDK call copies the whole selection chain of the object it derives from, and a query
is built as one nested selection as deep as the chain: an unbroken chain of N calls costs
O(N^2) memory and time, and a few thousand calls exceed Python's recursion limit when the
query is built. So a chain is cut into chunks of ``CHUNK`` calls: after each chunk the
container is synced, and the next chunk starts from the ID the engine returned (a one-call
chain). Each call also costs the SDK about a millisecond of CPU (it builds a converter per
call), so more than a few calls are applied in a worker thread: the event loop keeps serving
heartbeats and other executions meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dagger

CHUNK = 32  # calls per query: bounds the query's depth and the SDK's per-call copying
INLINE_CALLS = 8  # so few calls are applied on the loop: a thread hop would cost more than they do

Call = tuple[str, dict[str, Any]]  # (SDK Container method, keyword arguments)


def _apply(ctr: dagger.Container, calls: list[Call]) -> dagger.Container:
    for method, kwargs in calls:
        ctr = getattr(ctr, method)(**kwargs)
    return ctr


class ChainBuilder:
    def __init__(self, ctr: dagger.Container, *, chunk: int = CHUNK) -> None:
        self._ctr = ctr
        self._chunk = chunk
        self._pending: list[Call] = []
        self._depth = 1  # calls on self._ctr since the last sync (the start is a call, unsynced)

    def add(self, method: str, **kwargs: Any) -> None:
        self._pending.append((method, kwargs))

    async def step(self) -> None:
        """Apply what is pending once it would make the chain since the last sync a chunk long."""
        if self._depth + len(self._pending) >= self._chunk:
            await self.synced()

    async def applied(self) -> dagger.Container:
        """The container with every call so far applied, a chunk at a time with a sync between
        chunks; the last chunk is not synced (the caller's next request evaluates it)."""
        pending, self._pending = self._pending, []
        start = 0
        while start < len(pending):
            room = max(self._chunk - self._depth, 1)
            calls = pending[start : start + room]
            start += len(calls)
            if len(calls) <= INLINE_CALLS:
                self._ctr = _apply(self._ctr, calls)
            else:
                self._ctr = await asyncio.to_thread(_apply, self._ctr, calls)
            self._depth += len(calls)
            if start < len(pending):
                await self._sync()
        return self._ctr

    async def synced(self) -> dagger.Container:
        """The container with every call so far applied, evaluated, and loaded by its ID."""
        await self.applied()
        if self._depth:
            await self._sync()
        return self._ctr

    async def _sync(self) -> None:
        self._ctr = await self._ctr.sync()
        self._depth = 0
