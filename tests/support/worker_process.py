"""Running ``dagger-adapter worker`` for tests, and watching what it publishes.

- ``worker_settings``: the ``DAGGER_ADAPTER_*`` settings of a test worker (this test's topology
  prefix, short heartbeats, retry tiers and lease, the test engine's session).
- ``WorkerProcess``: ``dagger-adapter worker`` as a subprocess; SIGTERM / SIGKILL it, read its
  JSON log lines.
- ``Observer``: a queue of the test's own bound to the results and status exchanges; waits on
  counts with deadlines (never sleep-and-hope).
- ``command``, ``publish_command``, ``publish_raw``: commands as a client sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from schemas import (
    ExecutionCommand,
    ExecutionResult,
    ExecutionType,
    StatusEvent,
    WorkerHeartbeat,
    decode,
    encode,
)
from topology import Topology, queue_depths

# Matches the ``topology_spec`` fixture: a worker must declare exactly that topology.
TEST_RETRY_TIERS = "0.2,1,5"
TEST_DELIVERY_LIMIT = "3"


def worker_settings(
    *,
    amqp_url: str,
    valkey_url: str,
    spec: Topology,
    work_dir: Path,
    engine_env: Mapping[str, str] | None = None,
    worker_id: str | None = None,
    **overrides: Any,
) -> dict[str, str]:
    """``DAGGER_ADAPTER_*`` environment of a test worker; ``overrides`` are config fields."""
    assert ",".join(f"{d:g}" for d in spec.retry_delays_seconds) == TEST_RETRY_TIERS
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "valkey_url": valkey_url,
        "topology_prefix": spec.prefix,
        "retry_delay_tiers": TEST_RETRY_TIERS,
        "delivery_limit": TEST_DELIVERY_LIMIT,
        "worker_id": worker_id or f"w-{uuid.uuid4().hex[:6]}",
        "heartbeat_interval_seconds": 0.3,
        "timeout_seconds": 120,
        "lease_seconds": 1.5,
        "retry_backoff_factor": 0.1,
        "breaker_reset_seconds": 0.5,
        "drain_timeout_seconds": 10,
        "cache_directory": str(work_dir / "cache"),
        "workflow_directory": str(work_dir / "workflows"),
        "caching_enabled": "false",
        "engine_connect_timeout_seconds": 3,
        "log_level": "INFO",
    }
    values.update(overrides)
    env = {f"DAGGER_ADAPTER_{k.upper()}": str(v) for k, v in values.items()}
    env.update(engine_env or {})
    return env


class WorkerProcess:
    """``dagger-adapter worker`` in a subprocess, its stderr (JSON logs) kept in a file."""

    def __init__(self, settings: Mapping[str, str], log_path: Path, *args: str) -> None:
        self.settings = dict(settings)
        self.worker_id = self.settings["DAGGER_ADAPTER_WORKER_ID"]
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGGER_ADAPTER_", "DAGGER_SESSION_"))}
        env.update(self.settings)
        env["PYTHONUNBUFFERED"] = "1"
        script = shutil.which("dagger-adapter", path=str(Path(sys.executable).parent))
        command = (
            [script]
            if script
            else [sys.executable, "-c", "import sys; from consumer.cli import main; sys.exit(main())"]
        )
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [*command, "worker", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {self.worker_id} still running after {timeout} s\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.output().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(line)
                if isinstance(value, dict):
                    out.append(value)
        return out

    def stop(self) -> None:
        """Teardown: make sure nothing outlives the test."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


class Observer:
    """Everything a worker publishes on the results and status exchanges, as it arrives."""

    def __init__(self, connection: AbstractRobustConnection, spec: Topology, durable_queue: str | None = None) -> None:
        """With ``durable_queue``, events wait for the observer in a durable queue of that name
        while it is disconnected (a broker restart); otherwise the queue is exclusive."""
        self.connection = connection
        self.spec = spec
        self.durable_queue = durable_queue
        self.results: list[ExecutionResult] = []
        self.result_message_ids: list[str | None] = []  # the AMQP message_id of each result, in order
        self.result_keys: list[str] = []
        self.events: list[StatusEvent] = []
        self.heartbeats: list[WorkerHeartbeat] = []
        self._changed = asyncio.Condition()
        self.channel: AbstractChannel | None = None

    async def start(self) -> Observer:
        self.channel = await self.connection.channel()
        results = await self.channel.declare_exchange(self.spec.results_exchange, "topic", durable=True)
        status = await self.channel.declare_exchange(self.spec.status_exchange, "topic", durable=True)
        if self.durable_queue:
            queue = await self.channel.declare_queue(self.durable_queue, durable=True)
        else:
            queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(results, "#")
        await queue.bind(status, "#")
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.exchange == self.spec.results_exchange:
            self.results.append(decode(message.body, ExecutionResult))
            self.result_message_ids.append(message.message_id)
            self.result_keys.append(message.routing_key or "")
        elif message.routing_key == self.spec.heartbeat_routing_key:
            self.heartbeats.append(decode(message.body, WorkerHeartbeat))
        else:
            self.events.append(decode(message.body, StatusEvent))
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, condition: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(condition)

        try:
            await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; {self.summary()}") from None

    async def wait_ready(self, worker_id: str, timeout: float = 30) -> None:
        """Until ``worker_id`` says it is consuming (its heartbeat)."""
        await self.wait_for(
            lambda: any(b.worker_id == worker_id and b.ready for b in self.heartbeats), timeout, f"{worker_id} ready"
        )

    async def wait_heartbeats(self, count: int, timeout: float, where: Callable[[WorkerHeartbeat], bool]) -> None:
        start = len(self.heartbeats)
        await self.wait_for(
            lambda: sum(1 for b in self.heartbeats[start:] if where(b)) >= count, timeout, f"{count} heartbeats"
        )

    def results_for(self, task_id: str) -> list[ExecutionResult]:
        return [r for r in self.results if r.task_id == task_id]

    def states_of(self, task_id: str) -> list[str]:
        return [e.state.value for e in self.events if e.task_id == task_id]

    def summary(self) -> str:
        return (
            f"{len(self.results)} results ({sorted({r.task_id for r in self.results})[:20]}), "
            f"{len(self.events)} status events, {len(self.heartbeats)} heartbeats"
        )


def command(task_id: str, *args: str, **fields: Any) -> ExecutionCommand:
    """A containerized command that runs ``args`` (default: ``echo <task_id>``) in alpine."""
    return ExecutionCommand(
        task_id=task_id,
        execution_type=ExecutionType.CONTAINERIZED_WORKFLOW,
        parameters={"container_image": "alpine:3.20", "command": list(args) or ["echo", task_id]},
        **fields,
    )


async def publish_command(
    channel: AbstractChannel, spec: Topology, command: ExecutionCommand, **properties: Any
) -> str:
    """Publish ``command`` like the client does (persistent, message id, confirmed)."""
    exchange = await channel.get_exchange(spec.tasks_exchange, ensure=False)
    message_id = properties.pop("message_id", uuid.uuid4().hex)
    await exchange.publish(
        aio_pika.Message(
            encode(command),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            **properties,
        ),
        routing_key=spec.task_routing_key(command.execution_type.value),
    )
    return message_id


async def publish_raw(channel: AbstractChannel, spec: Topology, body: bytes, routing_key: str) -> str:
    exchange = await channel.get_exchange(spec.tasks_exchange, ensure=False)
    message_id = uuid.uuid4().hex
    await exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id),
        routing_key=routing_key,
    )
    return message_id


async def drain_queue(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    """Every message now in ``queue_name`` (acked: taken out)."""
    queue = await channel.get_queue(queue_name, ensure=False)
    out = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        out.append(message)
    return out


async def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` (sync or async) until it is truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def waiting_commands(connection: AbstractRobustConnection, spec: Topology) -> int:
    """Commands waiting (ready) in the tasks queue and the retry queues."""
    depths = await queue_depths(connection, spec)
    return sum(depths[name] or 0 for name in (spec.tasks_queue, *(t.queue for t in spec.retry_tiers)))
