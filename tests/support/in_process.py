"""Workers run in the test's own event loop (``Worker`` configured from ``DAGGER_ADAPTER_*``
settings, as the CLI configures it): started, awaited until they consume, drained at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from consumer.config import load_config
from consumer.worker import Worker
from tests.support.worker_process import Observer


class InProcessWorkers:
    def __init__(self, observer: Observer) -> None:
        self._observer = observer
        self._runs: dict[Worker, asyncio.Task[None]] = {}

    async def start(self, settings: Mapping[str, str], *, wait_ready: bool = True, ready_timeout: float = 30) -> Worker:
        """A running worker; with ``wait_ready``, once its heartbeat says it consumes (its
        start-up error, if it fails first, is raised here)."""
        worker = Worker(load_config(env=dict(settings)))
        task = asyncio.create_task(worker.run())
        self._runs[worker] = task
        if not wait_ready:
            return worker
        ready = asyncio.create_task(self._observer.wait_ready(worker.worker_id, timeout=ready_timeout))
        await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()  # raises the start-up error
        await ready
        return worker

    async def stop(self, worker: Worker) -> None:
        """Stop ``worker`` and wait until it has shut down."""
        worker.request_stop()
        await asyncio.wait_for(self._runs[worker], 30)

    async def stop_all(self) -> None:
        for worker in self._runs:
            worker.request_stop()
        for task in self._runs.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
