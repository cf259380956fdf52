"""The worker fixtures of ``tests/test_worker.py`` (an in-process worker on the test's own
topology, its JSON log), and what every abuse test measures: the engine untouched, the
event loop responsive."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from hypothesis import settings

from tests.abuse.expect import Broker
from tests.test_worker import start_worker, worker_log
from topology import Topology

__all__ = ["FUZZ_WORKER_SAMPLE", "LoopLag", "broker", "loop_lag", "start_worker", "worker_log"]

# Hypothesis profiles: "ci" runs in the default suite, "fuzz" is `just fuzz`
# (HYPOTHESIS_PROFILE=fuzz). No deadline: the machine is shared and noisy.
settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("fuzz", max_examples=5_000, deadline=None)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
# How many generated messages go through a real worker.
FUZZ_WORKER_SAMPLE = 400 if PROFILE == "fuzz" else 30


class LoopLag:
    """The longest the event loop (the in-process worker's) was blocked while the test ran:
    a ticker that should wake every ``tick`` seconds records how late it woke."""

    def __init__(self, tick: float = 0.01) -> None:
        self.tick = tick
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.tick)
            self.worst = max(self.worst, time.monotonic() - before - self.tick)

    def start(self) -> None:
        """Measure from now on (after the worker's start-up, which may block a little)."""
        self.worst = 0.0
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def __enter__(self) -> LoopLag:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@pytest.fixture
async def loop_lag() -> AsyncIterator[LoopLag]:
    lag = LoopLag()
    yield lag
    lag.stop()


@pytest.fixture
def broker(amqp: AbstractRobustConnection, channel: AbstractChannel, topology_spec: Topology) -> Broker:
    return Broker(amqp, channel, topology_spec)
