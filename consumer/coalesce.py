"""Concurrent look-ups of one key share a request, without any of them getting an answer older
than its own question.

At most one request per key is in flight. Callers that arrive while it is in flight do not join
it (its answer may predate them: an image tag moved just before they asked); they share the
*next* request, sent as soon as the one in flight is answered. So under a burst of commands for
one image the engine sees about one digest look-up per round trip instead of one per command,
and an idle worker's look-up is sent at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    def __init__(self) -> None:
        self._waiting: dict[Hashable, asyncio.Future[T]] = {}  # the next request's, not sent yet
        self._in_flight: dict[Hashable, asyncio.Future[T]] = {}
        self._senders: set[asyncio.Task[None]] = set()

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        """``fetch()``'s answer for ``key``, from a request sent after this call began; ``fetch``
        of the first caller of a batch is the one sent. A caller that is cancelled leaves the
        request to the others."""
        batch = self._waiting.get(key)
        if batch is None:
            batch = self._waiting[key] = asyncio.get_running_loop().create_future()
            # Its failure is every caller's; if all of them gave up, nobody is left to read it.
            batch.add_done_callback(lambda done: done.cancelled() or done.exception())
            sender = asyncio.create_task(self._send(key, batch, fetch))
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await asyncio.shield(batch)

    async def _send(self, key: Hashable, batch: asyncio.Future[T], fetch: Callable[[], Awaitable[T]]) -> None:
        previous = self._in_flight.get(key)
        if previous is not None:
            await asyncio.wait([previous])
        # From here on, a new caller waits for the request after this one.
        del self._waiting[key]
        self._in_flight[key] = batch
        try:
            batch.set_result(await fetch())
        except BaseException as exc:  # every caller of the batch gets the failure
            batch.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._in_flight.get(key) is batch:
                del self._in_flight[key]
            if not batch.done():  # pragma: no cover - set above on every path
                batch.cancel()
