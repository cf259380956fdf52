"""End-to-end throughput of the real worker against a bare consumer, same broker, same engine.

Both sides get the same ``N`` ``dagger_pipeline`` commands (``from alpine:3.20``, ``echo hi``),
published with ``ExecutionClient.submit`` to a topology of this run's own, and are timed from
the first publish until all ``N`` results have arrived on a ``client.results()`` subscription.

- **ours**: ``consumer.worker.Worker`` in this process, ``max_concurrent_executions = C``,
  caching off (validation, Valkey ledger and lease, status events, confirms, acks after outcome).
- **baseline**: ``bench.bare_consumer.BareConsumer``, prefetch ``C``, same engine requests,
  none of those guarantees: what a hand-rolled Celery/Dramatiq-style task would do.

Rounds alternate baseline/ours in ABBA order (so a slow drift of the machine hits both alike),
after one short untimed warm-up round of each; each round prints a line on stderr. Reported:
commands/s of each (best round), ``ratio`` = ours/baseline commands/s (best/best; above 1 means
ours is faster) and the median of the adjacent-pair ratios, wall ms per command and the
per-command overhead (ours - baseline, at concurrency C), and median CPU ms per command: of the
whole process, and of the event loop's thread alone (consumer + SDK client, without the test
engine's threads; RabbitMQ's and Valkey's own CPU is in neither).

Everything runs in one process (the test engine's HTTP threads included) on loopback:
RabbitMQ from ``DAGGER_ADAPTER_AMQP_URL`` (default 127.0.0.1:5672), Valkey from
``DAGGER_ADAPTER_VALKEY_URL`` or a valkey-server of its own. The topology and the ledger keys
are deleted at the end. Each round is bounded (``ROUND_TIMEOUT_SECONDS``); at the defaults the
whole run takes about 80 s on 2 cores, so it runs only on request (``python -m bench worker``).

Reading the figures: per command, the real SDK (it rebuilds a cattrs converter for every chained
call) and the in-process test engine cost ~50 ms of CPU on both sides, while our machinery adds a
few ms, so the ratio sits near 1 and round-to-round noise on a shared machine (±10-20 %) is of the
same size as the difference. Compare figures from the same run only.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.bare_consumer import BareConsumer
from bench.services import amqp_url, broker_topology, dagger_engine, forget_ledger, valkey_url
from consumer.client import ExecutionClient
from consumer.config import DaggerAdapterConfig, topology_for
from consumer.worker import Worker
from schemas import ExecutionCommand, ExecutionType

PIPELINE = [{"from": {"address": "alpine:3.20"}}, {"with_exec": {"args": ["echo", "hi"]}}]
COMMANDS = 300
CONCURRENCY = 8
ROUNDS = 2  # timed rounds per side
WARMUP_COMMANDS = 2 * CONCURRENCY
ROUND_TIMEOUT_SECONDS = 120.0
PUBLISH_CONCURRENCY = 32  # publishes awaiting their confirm at once


@dataclass(frozen=True)
class Round:
    side: str
    commands: int
    seconds: float  # first publish -> last result
    cpu_seconds: float  # this process, every thread (the engine's included)
    loop_cpu_seconds: float  # the event loop's thread only: the consumer and the SDK, not the engine

    @property
    def per_second(self) -> float:
        return self.commands / self.seconds

    def __str__(self) -> str:
        per_command = 1000 / self.commands
        return (
            f"{self.side:8} {self.per_second:6.1f} commands/s ({self.seconds:.1f} s; CPU ms/command: "
            f"{self.cpu_seconds * per_command:.1f} process, {self.loop_cpu_seconds * per_command:.1f} event loop)"
        )


class Bench:
    """The run's services and topology, and one round of either side at a time."""

    def __init__(self, amqp: str, valkey: str, work_dir: Path, concurrency: int) -> None:
        self.concurrency = concurrency
        self.prefix = f"bench{uuid.uuid4().hex[:10]}"
        self.config = DaggerAdapterConfig(
            amqp_url=amqp,
            valkey_url=valkey,
            topology_prefix=self.prefix,
            worker_id=f"{self.prefix}-worker",
            max_concurrent_executions=concurrency,
            caching_enabled=False,
            timeout_seconds=ROUND_TIMEOUT_SECONDS,
            drain_timeout_seconds=30,
            cache_directory=str(work_dir / "cache"),
            workflow_directory=str(work_dir / "workflows"),
            allowed_volume_roots=[str(work_dir)],
            log_level="WARNING",
        )
        self.spec = topology_for(self.config)
        self._round = 0

    def commands(self, n: int) -> list[ExecutionCommand]:
        self._round += 1
        return [
            ExecutionCommand(
                task_id=f"{self.prefix}-r{self._round}-{i:05d}",
                execution_type=ExecutionType.DAGGER_PIPELINE,
                parameters={"pipeline": PIPELINE},
                timeout_seconds=60,
            )
            for i in range(n)
        ]

    async def ours(self, client: ExecutionClient, n: int) -> Round:
        worker = Worker(self.config)
        try:
            await worker.startup()
            return await measure("ours", client, self.commands(n))
        finally:
            await worker.drain()
            await worker.shutdown()

    async def baseline(self, client: ExecutionClient, n: int) -> Round:
        consumer = BareConsumer(self.config.amqp_url, self.spec, self.concurrency)
        try:
            await consumer.start()
            measured = await measure("baseline", client, self.commands(n))
            # Every ack sent before the consumer goes (an unacked command would come back later).
            await wait_for(lambda: consumer.settled >= n, 10, "the baseline to ack every command")
            return measured
        finally:
            await consumer.stop()


async def measure(side: str, client: ExecutionClient, commands: Sequence[ExecutionCommand]) -> Round:
    """Publish ``commands`` and time until a result for each has arrived; all must succeed."""
    waiting = {c.task_id for c in commands}
    failures: list[str] = []

    async def collect() -> None:
        async for result in results:
            if result.task_id in waiting:
                waiting.discard(result.task_id)
                if not result.success:
                    failures.append(result.error or "failed")
                if not waiting:
                    return

    async def publish() -> None:
        gate = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(command: ExecutionCommand) -> None:
            async with gate:
                await client.submit(command)

        await asyncio.gather(*(one(c) for c in commands))

    async with client.results() as results:
        cpu_start, loop_cpu_start, start = time.process_time(), time.thread_time(), time.perf_counter()
        tasks = [asyncio.create_task(publish()), asyncio.create_task(collect())]
        try:
            done, _ = await asyncio.wait(tasks, timeout=ROUND_TIMEOUT_SECONDS, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a publish error surfaces here
            if len(done) < len(tasks):
                raise TimeoutError(
                    f"{side}: {len(waiting)} of {len(commands)} results missing after {ROUND_TIMEOUT_SECONDS:g} s"
                )
        finally:
            for task in tasks:
                task.cancel()
        elapsed = time.perf_counter() - start
        cpu, loop_cpu = time.process_time() - cpu_start, time.thread_time() - loop_cpu_start
    if failures:
        raise RuntimeError(f"{side}: {len(failures)} of {len(commands)} commands failed, e.g. {failures[0]}")
    return Round(side, len(commands), elapsed, cpu, loop_cpu)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def run_rounds(bench: Bench, n: int, rounds: int) -> list[tuple[Round, Round]]:
    """(baseline, ours) pairs, in ABBA order after an untimed warm-up of each side."""
    async with (
        broker_topology(bench.config.amqp_url, bench.spec),
        ExecutionClient.connect(bench.config.amqp_url, bench.spec) as client,
    ):
        await bench.baseline(client, min(n, WARMUP_COMMANDS))
        await bench.ours(client, min(n, WARMUP_COMMANDS))
        pairs = []
        for index in range(rounds):
            sides: list[Callable[[ExecutionClient, int], Awaitable[Round]]] = [bench.baseline, bench.ours]
            if index % 2:
                sides.reverse()
            first, second = [await side(client, n) for side in sides]
            report(f"round {index + 1}: {first}")
            report(f"round {index + 1}: {second}")
            pairs.append((first, second) if first.side == "baseline" else (second, first))
        return pairs


def report(line: str) -> None:
    """Progress on stderr (stdout carries the figures, maybe as JSON)."""
    print(f"bench worker: {line}", file=sys.stderr, flush=True)


def figures(pairs: list[tuple[Round, Round]], concurrency: int, seconds: float) -> dict[str, float]:
    baseline = max((b for b, _ in pairs), key=lambda r: r.per_second)
    ours = max((o for _, o in pairs), key=lambda r: r.per_second)
    n = ours.commands

    def ms(r: Round) -> float:
        return r.seconds / r.commands * 1000

    def median_ms(seconds: Iterable[float]) -> float:
        return statistics.median(seconds) / n * 1000

    return {
        "commands": n,
        "concurrency": concurrency,
        "rounds": len(pairs),
        "ours_commands_per_s": ours.per_second,
        "baseline_commands_per_s": baseline.per_second,
        "ratio": ours.per_second / baseline.per_second,  # above 1: ours is faster
        "ratio_median_of_pairs": statistics.median(o.per_second / b.per_second for b, o in pairs),
        "ours_ms_per_command": ms(ours),
        "baseline_ms_per_command": ms(baseline),
        "overhead_ms_per_command": ms(ours) - ms(baseline),
        "ours_cpu_ms_per_command": median_ms(o.cpu_seconds for _, o in pairs),
        "baseline_cpu_ms_per_command": median_ms(b.cpu_seconds for b, _ in pairs),
        "ours_loop_cpu_ms_per_command": median_ms(o.loop_cpu_seconds for _, o in pairs),
        "baseline_loop_cpu_ms_per_command": median_ms(b.loop_cpu_seconds for b, _ in pairs),
        "total_seconds": seconds,
    }


def run(n: int = COMMANDS, concurrency: int = CONCURRENCY, rounds: int = ROUNDS) -> dict[str, float]:
    started = time.perf_counter()
    amqp = amqp_url()
    with (
        dagger_engine() as engine,
        valkey_url() as valkey,
        tempfile.TemporaryDirectory(prefix="bench-worker-") as work_dir,
    ):
        bench = Bench(amqp, valkey, Path(work_dir), concurrency)

        async def main() -> list[tuple[Round, Round]]:
            try:
                return await run_rounds(bench, n, rounds)
            finally:
                with contextlib.suppress(Exception):
                    await forget_ledger(valkey, bench.prefix)

        pairs = asyncio.run(main())
        if engine.query_errors:  # a query the real engine would reject: the figures mean nothing
            raise RuntimeError(f"queries the real engine's schema rejects: {engine.query_errors[:3]}")
    return figures(pairs, concurrency, time.perf_counter() - started)
