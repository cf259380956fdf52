"""What our worker costs per command, each scenario a ratio against a raw aio-pika loop measured
in the same invocation on the same broker (``bench/README.md`` has the method and a run).

Scenarios (each with a topology of its own, deleted afterwards):

- ``raw``: ``bench.raw_loop`` — prefetch, late ack, one confirmed persistent result per command.
- ``cache hit``: identical commands whose result is in the result cache; the full contract
  (validation, ledger, status events, result, reply to nobody).
- ``trivial``: a two-operation ``dagger_pipeline`` through the real SDK against the test engine
  (running in a process of its own, answering at once); result cache off.
- ``idle round trip``: one command at a time, raw vs a trivial execution: latency.
- ``capacity``: one worker with ``max_concurrent_executions = N`` given N commands whose exec
  takes ``CAPACITY_EXEC_SECONDS`` at the engine: how many ran at once, RSS, and how punctual
  worker and task heartbeats were meanwhile (a late heartbeat is a starved event loop).

Throughput is commands/s from the first publish to the last result; latency is per command from
its publish to its result; CPU per command is the consumer process's user+system time (from
``/proc``) over the scenario, divided by the commands. The driver (publisher, result and status
observer) runs in this process, the engine, the raw loop and the worker each in their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from bench.engine_server import SLOW_COMMAND
from bench.processes import EngineProcess, Process, RawLoopProcess, WorkerProcess
from bench.services import amqp_url, broker_topology, forget_ledger, valkey_url
from consumer.config import DaggerAdapterConfig, topology_for
from schemas import ExecutionCommand, ExecutionType, encode
from topology import Topology

TRIVIAL = [{"from": {"address": "alpine:3.20"}}, {"with_exec": {"args": ["echo", "hi"]}}]
SLOW = [{"from": {"address": "alpine:3.20"}}, {"with_exec": {"args": SLOW_COMMAND}}]
PUBLISH_WINDOW = 64  # publishes awaiting their confirm at once
CAPACITY_EXEC_SECONDS = 5.0
CAPACITY_HEARTBEAT_SECONDS = 1.0
SCENARIO_TIMEOUT_SECONDS = 240.0


@dataclass
class Observed:
    """What arrived on the results and status exchanges, and when (monotonic seconds)."""

    results: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    outcomes: dict[str, set[bool]] = field(default_factory=lambda: defaultdict(set))
    message_ids: dict[str, set[str | None]] = field(default_factory=lambda: defaultdict(set))
    worker_beats: list[tuple[float, bool]] = field(default_factory=list)
    task_beats: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.monotonic()
        key = message.routing_key or ""
        body = msgspec.json.decode(message.body)
        if key == "worker.heartbeat":
            self.worker_beats.append((now, bool(body.get("ready"))))
        elif key == "task.heartbeat":
            self.task_beats[body["task_id"]].append(now)
        elif not key.startswith("task."):
            self.results[body["task_id"]].append(now)
            self.outcomes[body["task_id"]].add(bool(body.get("success")))
            self.message_ids[body["task_id"]].add(message.message_id)
        self.changed.set()

    async def wait(self, condition: Any, what: str, timeout: float = SCENARIO_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 1.0))

    def have_results(self, task_ids: Iterable[str]) -> bool:
        return all(task_id in self.results for task_id in task_ids)


@dataclass
class Run:
    """One scenario's figures."""

    name: str
    commands: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float
    engine_requests: int | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.commands / self.seconds

    @property
    def cpu_ms_per_command(self) -> float:
        return self.cpu_seconds / self.commands * 1000

    def latency_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


class Driver:
    """Publishes commands to one topology and observes its results and status events."""

    def __init__(self, url: str, spec: Topology) -> None:
        self.url = url
        self.spec = spec
        self.observed = Observed()
        self._channel: AbstractChannel | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Driver]:
        async with broker_topology(self.url, self.spec) as connection:
            self._channel = await connection.channel()
            observe = await self._channel.declare_queue(exclusive=True, auto_delete=True)
            await observe.bind(self.spec.results_exchange, "#")
            for key in ("worker.heartbeat", "task.heartbeat"):
                await observe.bind(self.spec.status_exchange, key)
            await observe.consume(self._on_message, no_ack=True)
            yield self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.observed.on_message(message)

    async def publish(self, commands: list[ExecutionCommand]) -> dict[str, float]:
        """Publish with confirms, ``PUBLISH_WINDOW`` at a time; when each was sent."""
        assert self._channel is not None
        exchange = await self._channel.get_exchange(self.spec.tasks_exchange, ensure=False)
        sent: dict[str, float] = {}
        gate = asyncio.Semaphore(PUBLISH_WINDOW)

        async def one(command: ExecutionCommand) -> None:
            async with gate:
                sent[command.task_id] = time.monotonic()
                message = aio_pika.Message(
                    encode(command),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=uuid.uuid4().hex,
                )
                await exchange.publish(message, command.execution_type.value)

        await asyncio.gather(*(one(c) for c in commands))
        return sent

    async def throughput(self, name: str, consumer: Process, commands: list[ExecutionCommand]) -> Run:
        ids = [c.task_id for c in commands]
        cpu = consumer.cpu_seconds()
        started = time.monotonic()
        sent = await self.publish(commands)
        try:
            await self.observed.wait(lambda: self.observed.have_results(ids), f"{name}: {len(ids)} results")
        except TimeoutError:
            arrived = sum(1 for i in ids if i in self.observed.results)
            raise TimeoutError(
                f"{name}: {arrived} of {len(ids)} results within {SCENARIO_TIMEOUT_SECONDS:g} s"
            ) from None
        last = max(self.observed.results[i][0] for i in ids)
        run = Run(
            name,
            len(ids),
            seconds=last - started,
            latencies=[self.observed.results[i][0] - sent[i] for i in ids],
            cpu_seconds=consumer.cpu_seconds() - cpu,
        )
        failed = [i for i in ids if self.observed.outcomes[i] != {True}]
        if failed:
            raise RuntimeError(f"{name}: {len(failed)} commands did not succeed (e.g. {failed[0]})")
        return run

    async def round_trips(self, name: str, consumer: Process, commands: list[ExecutionCommand]) -> Run:
        """One at a time: each published only after the previous result arrived."""
        cpu, started, latencies = consumer.cpu_seconds(), time.monotonic(), []
        for command in commands:
            sent = await self.publish([command])
            await self.observed.wait(lambda c=command: c.task_id in self.observed.results, f"{name}: a result")
            latencies.append(self.observed.results[command.task_id][0] - sent[command.task_id])
        return Run(name, len(commands), time.monotonic() - started, latencies, consumer.cpu_seconds() - cpu)

    async def worker_ready(self) -> None:
        await self.observed.wait(
            lambda: any(ready for _, ready in self.observed.worker_beats), "the worker to be ready"
        )


def commands(prefix: str, n: int, pipeline: list[dict[str, Any]], *, tag: str) -> list[ExecutionCommand]:
    return [
        ExecutionCommand(
            task_id=f"{prefix}-{tag}-{i:05d}",
            execution_type=ExecutionType.DAGGER_PIPELINE,
            parameters={"pipeline": pipeline},
            timeout_seconds=120,
        )
        for i in range(n)
    ]


class Bench:
    def __init__(self, amqp: str, valkey: str, work_dir: Path, report: Any, profile_dir: Path | None = None) -> None:
        self.amqp = amqp
        self.valkey = valkey
        self.work_dir = work_dir
        self.report = report
        self.profile_dir = profile_dir

    @contextlib.contextmanager
    def profiled(self, name: str, process: Process) -> Iterator[None]:
        """With ``--profile DIR``: py-spy samples ``process`` meanwhile; its collapsed stacks go
        to ``DIR/<name>.txt`` (``bench/profile.py`` summarises them)."""
        if self.profile_dir is None:
            yield
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{name}.txt"
        spy = subprocess.Popen(
            [_py_spy(), "record", "--pid", str(process.pid), "--format", "raw", "--rate", "250", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)

    def settings(self, prefix: str, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "amqp_url": self.amqp,
            "valkey_url": self.valkey,
            "topology_prefix": prefix,
            "worker_id": f"{prefix}-worker",
            "max_concurrent_executions": 8,
            "caching_enabled": "false",
            "timeout_seconds": 120,
            "heartbeat_interval_seconds": 5,
            "drain_timeout_seconds": 30,
            "cache_directory": str(self.work_dir / "cache"),
            "workflow_directory": str(self.work_dir / "workflows"),
            "allowed_volume_roots": str(self.work_dir),
            "log_level": "WARNING",
        }
        values.update(overrides)
        return values

    @contextlib.asynccontextmanager
    async def scenario(self, name: str, **settings: Any) -> AsyncIterator[tuple[Driver, WorkerProcess, EngineProcess]]:
        """A topology, an engine and a worker of this scenario's own."""
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        config = DaggerAdapterConfig(amqp_url=self.amqp, topology_prefix=prefix)
        exec_delay = settings.pop("exec_delay", 0.0)
        engine = EngineProcess(exec_delay)
        try:
            async with Driver(self.amqp, topology_for(config)).running() as driver:
                log = self.work_dir / f"{name}.log"
                worker = WorkerProcess(self.settings(prefix, **settings), engine, log)
                try:
                    await driver.worker_ready()
                    yield driver, worker, engine
                finally:
                    worker.stop()
                    kept = Path(tempfile.gettempdir()) / f"bench-{name}-worker.log"
                    shutil.copyfile(log, kept)
                    self.report(f"{name}: the worker's log (WARNING and up) is in {kept}")
                    with contextlib.suppress(Exception):
                        await forget_ledger(self.valkey, prefix)
        finally:
            engine.stop()

    async def raw(self, n: int, concurrency: int) -> tuple[Run, Run]:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        spec = topology_for(DaggerAdapterConfig(amqp_url=self.amqp, topology_prefix=prefix))
        async with Driver(self.amqp, spec).running() as driver:
            loop = RawLoopProcess(self.amqp, prefix, concurrency)
            try:
                throughput = await driver.throughput("raw", loop, commands(prefix, n, TRIVIAL, tag="raw"))
                idle = await driver.round_trips("raw idle", loop, commands(prefix, 30, TRIVIAL, tag="idle"))
                return throughput, idle
            finally:
                loop.stop()

    async def cache_hit(self, n: int, concurrency: int) -> Run:
        async with self.scenario("cache-hit", caching_enabled="true", max_concurrent_executions=concurrency) as (
            driver,
            worker,
            engine,
        ):
            prefix = driver.spec.prefix
            warm = commands(prefix, 1, TRIVIAL, tag="warm")
            await driver.throughput("warm-up", worker, warm)  # the one that fills the result cache
            before = engine.stats()["requests"]
            with self.profiled("cache-hit", worker):
                run = await driver.throughput("cache hit", worker, commands(prefix, n, TRIVIAL, tag="hit"))
            run.engine_requests = engine.stats()["requests"] - before
            return run

    async def trivial(self, n: int, concurrency: int) -> tuple[Run, Run]:
        async with self.scenario("trivial", max_concurrent_executions=concurrency) as (driver, worker, engine):
            prefix = driver.spec.prefix
            await driver.throughput("warm-up", worker, commands(prefix, concurrency, TRIVIAL, tag="warm"))
            before = engine.stats()["requests"]
            with self.profiled("trivial", worker):
                run = await driver.throughput("trivial", worker, commands(prefix, n, TRIVIAL, tag="trivial"))
            run.engine_requests = engine.stats()["requests"] - before
            idle = await driver.round_trips("trivial idle", worker, commands(prefix, 30, TRIVIAL, tag="idle"))
            return run, idle

    async def capacity(self, n: int) -> Run:
        async with self.scenario(
            "capacity",
            max_concurrent_executions=n,
            exec_delay=CAPACITY_EXEC_SECONDS,
            heartbeat_interval_seconds=CAPACITY_HEARTBEAT_SECONDS,
        ) as (driver, worker, engine):
            observed = driver.observed
            beats_from = len(observed.worker_beats)
            with self.profiled("capacity", worker):
                run = await driver.throughput("capacity", worker, commands(driver.spec.prefix, n, SLOW, tag="cap"))
            stats = engine.stats()
            worker_gaps = _gaps([t for t, _ in observed.worker_beats[beats_from:]])
            task_gaps = [gap for beats in observed.task_beats.values() for gap in _gaps(beats)]
            # A copy of a result (the same message id: republished after a lost confirm) is
            # recognisable and dropped by clients; a second, different result would be a defect.
            copies = sum(len(times) - 1 for times in observed.results.values())
            distinct = sum(len(ids) - 1 for ids in observed.message_ids.values())
            run.extra = {
                "in_flight_peak": stats["max_concurrent_execs"],
                "rss_peak_mb": worker.memory("VmHWM") / 2**20,
                "worker_heartbeat_late_p99_s": _late_p99(worker_gaps, CAPACITY_HEARTBEAT_SECONDS),
                "worker_heartbeat_late_max_s": max((g - CAPACITY_HEARTBEAT_SECONDS for g in worker_gaps), default=0.0),
                "task_heartbeat_late_p99_s": _late_p99(task_gaps, CAPACITY_HEARTBEAT_SECONDS),
                "task_heartbeats": sum(len(b) for b in observed.task_beats.values()),
                "result_copies": copies,
                "second_results": distinct,
                "conflicting_outcomes": sum(1 for o in observed.outcomes.values() if len(o) > 1),
            }
            return run


def _py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy (pip install py-spy)")
    return found


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _late_p99(gaps: list[float], interval: float) -> float:
    if not gaps:
        return float("nan")
    late = sorted(max(0.0, g - interval) for g in gaps)
    return late[min(len(late) - 1, round(0.99 * (len(late) - 1)))]


def report(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def run(
    n: int = 2000,
    trivial_n: int = 300,
    concurrency: int = 8,
    capacity: int = 1000,
    skip: Iterable[str] = (),
    profile_dir: Path | None = None,
) -> dict[str, dict[str, float]]:
    skip = set(skip)
    started = time.perf_counter()
    amqp = amqp_url()
    with valkey_url() as valkey, tempfile.TemporaryDirectory(prefix="bench-") as work_dir:
        bench = Bench(amqp, valkey, Path(work_dir), report, profile_dir)

        async def main() -> dict[str, Run]:
            runs: dict[str, Run] = {}
            runs["raw"], runs["raw idle"] = await bench.raw(n, concurrency)
            report(f"raw: {runs['raw'].per_second:.0f} commands/s")
            if "cache" not in skip:
                runs["cache hit"] = await bench.cache_hit(n // 2, concurrency)
                report(f"cache hit: {runs['cache hit'].per_second:.0f} commands/s")
            if "trivial" not in skip:
                runs["trivial"], runs["trivial idle"] = await bench.trivial(trivial_n, concurrency)
                report(f"trivial: {runs['trivial'].per_second:.0f} commands/s")
            if "capacity" not in skip:
                runs["capacity"] = await bench.capacity(capacity)
                report(f"capacity: {runs['capacity'].seconds:.1f} s for {capacity}")
            return runs

        runs = asyncio.run(main())
    return table(runs, time.perf_counter() - started)


def table(runs: dict[str, Run], seconds: float) -> dict[str, dict[str, float]]:
    raw, raw_idle = runs["raw"], runs["raw idle"]
    out: dict[str, dict[str, float]] = {}
    for name, r in runs.items():
        baseline = raw_idle if name.endswith("idle") else raw
        row = {
            "commands": r.commands,
            "commands_per_s": r.per_second,
            "x_raw": r.per_second / baseline.per_second,
            "cpu_ms_per_command": r.cpu_ms_per_command,
            "latency_p50_ms": r.latency_ms(0.5),
            "latency_p99_ms": r.latency_ms(0.99),
        }
        if r.engine_requests is not None:
            row["engine_requests_per_command"] = r.engine_requests / r.commands
        row.update(r.extra)
        out[name] = row
    out["total"] = {"seconds": seconds}
    return out


def render(figures: dict[str, dict[str, float]]) -> str:
    columns = [
        ("commands/s", "commands_per_s", "{:9.1f}"),
        ("× raw", "x_raw", "{:6.2f}"),
        ("CPU ms/cmd", "cpu_ms_per_command", "{:10.2f}"),
        ("p50 ms", "latency_p50_ms", "{:8.1f}"),
        ("p99 ms", "latency_p99_ms", "{:8.1f}"),
        ("engine req/cmd", "engine_requests_per_command", "{:14.2f}"),
    ]
    lines = [f"{'scenario':14} " + " ".join(f"{title:>{len(fmt.format(0))}}" for title, _, fmt in columns)]
    for name, row in figures.items():
        if name == "total":
            continue
        cells = [fmt.format(row[key]) if key in row else " " * len(fmt.format(0)) for _, key, fmt in columns]
        lines.append(f"{name:14} " + " ".join(cells))
    capacity = figures.get("capacity")
    if capacity:
        lines.append("")
        lines.append(
            "capacity: {commands:.0f} commands of {delay:g} s: {in_flight_peak:.0f} in flight at once, RSS peak "
            "{rss_peak_mb:.0f} MB, worker heartbeat lateness p99 {worker_heartbeat_late_p99_s:.2f} s (max "
            "{worker_heartbeat_late_max_s:.2f} s), task heartbeat lateness p99 {task_heartbeat_late_p99_s:.2f} s "
            "over {task_heartbeats:.0f} beats; {result_copies:.0f} copies of results, of which "
            "{second_results:.0f} with another message id, {conflicting_outcomes:.0f} tasks with conflicting "
            "outcomes".format(delay=CAPACITY_EXEC_SECONDS, **capacity)
        )
    lines.append(f"total {figures['total']['seconds']:.0f} s")
    return "\n".join(lines)
