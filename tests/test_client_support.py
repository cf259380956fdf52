"""Helpers shared by the client and CLI tests (no tests here): commands, dead letters put in
the dead-letter queue the way the worker and RabbitMQ do it, and a minimal responder."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from schemas import (
    DeadLetterHeaders,
    ErrorCategory,
    ExecutionCommand,
    ExecutionResult,
    ExecutionType,
    decode,
    encode,
    utcnow,
)
from topology import DeclaredTopology, Topology, declare

WAIT = 15.0  # deadline of every wait on a condition


def command(task_id: str | None = None, **overrides: Any) -> ExecutionCommand:
    fields: dict[str, Any] = {
        "task_id": task_id or f"task-{uuid.uuid4().hex[:8]}",
        "execution_type": ExecutionType.CONTAINERIZED_WORKFLOW,
        "parameters": {"container_image": "alpine:3.20", "command": ["echo", "hello"]},
    }
    fields.update(overrides)
    return ExecutionCommand(**fields)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = WAIT, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def depth(connection: AbstractRobustConnection, queue: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def put_dead_letter(
    declared: DeclaredTopology,
    cmd: ExecutionCommand,
    *,
    category: ErrorCategory | str = ErrorCategory.PERMANENT,
    error: str = "step 'build' exited with 1",
    attempts: int = 1,
    message_id: str | None = None,
) -> str:
    """Dead-letter ``cmd`` the way the worker does; return its message id."""
    message_id = message_id or uuid.uuid4().hex
    headers = DeadLetterHeaders(
        error_category=category,
        error=error,
        attempts=attempts,
        task_id=cmd.task_id,
        dead_lettered_at=utcnow(),
        worker_id="worker-test",
    ).to_headers()
    await declared.dead.publish(
        aio_pika.Message(
            encode(cmd),
            message_id=message_id,
            headers=headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        ),
        routing_key=cmd.execution_type.value,
    )
    return message_id


async def put_delivery_limit_dead_letter(
    connection: AbstractRobustConnection, declared: DeclaredTopology, spec: Topology, cmd: ExecutionCommand
) -> str:
    """Make RabbitMQ itself dead-letter ``cmd``: publish it to the tasks queue and reject it
    (requeue) until the quorum queue's delivery limit sends it to the dead queue."""
    message_id = uuid.uuid4().hex
    before = await depth(connection, spec.dead_queue)
    await declared.tasks.publish(
        aio_pika.Message(encode(cmd), message_id=message_id, content_type="application/json"),
        routing_key=cmd.execution_type.value,
    )
    channel = await connection.channel()
    try:
        queue = await channel.get_queue(spec.tasks_queue, ensure=False)

        async def reject_once() -> bool:
            message = await queue.get(no_ack=False, fail=False)
            if message is not None:
                await message.nack(requeue=True)
            return await depth(connection, spec.dead_queue) > before

        await eventually(reject_once, what="RabbitMQ to dead-letter the message (delivery limit)")
    finally:
        await channel.close()
    return message_id


class Responder:
    """A stand-in for workers that answers every command on the tasks queue per the reply
    contract (result to the ``reply_to`` property, else the body field, on the default exchange;
    AMQP ``correlation_id`` = the property, else command.correlation_id, else task_id). It tests
    the client, not the worker."""

    def __init__(self, connection: AbstractRobustConnection, spec: Topology, succeed: bool = True) -> None:
        self.connection = connection
        self.spec = spec
        self.succeed = succeed
        self.seen: list[AbstractIncomingMessage] = []

    async def __aenter__(self) -> Responder:
        self.channel = await self.connection.channel()
        await self.channel.set_qos(prefetch_count=200)
        queue = await self.channel.get_queue(self.spec.tasks_queue, ensure=False)
        self.tag = await queue.consume(self._answer)
        self.queue = queue
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    async def _answer(self, message: AbstractIncomingMessage) -> None:
        self.seen.append(message)
        cmd = decode(message.body, ExecutionCommand)
        result = ExecutionResult(
            task_id=cmd.task_id,
            success=self.succeed,
            result={"echo": cmd.task_id} if self.succeed else None,
            error=None if self.succeed else "step exited with 1",
            error_category=None if self.succeed else ErrorCategory.PERMANENT,
            execution_type=cmd.execution_type,
            worker_id="responder",
        )
        reply_to = message.reply_to or cmd.reply_to  # the AMQP properties win, as in the worker
        if reply_to:
            await self.channel.default_exchange.publish(
                aio_pika.Message(
                    encode(result),
                    correlation_id=message.correlation_id or cmd.correlation_id or cmd.task_id,
                    content_type="application/json",
                    message_id=f"{cmd.task_id}:1",
                ),
                routing_key=reply_to,
            )
        await message.ack()


class BrokerLink:
    """A TCP relay between a client and RabbitMQ that a test can cut: a real connection loss
    (the client sees its socket close) without touching the shared broker."""

    def __init__(self, amqp_url: str) -> None:
        self.target = urlsplit(amqp_url)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def __aenter__(self) -> BrokerLink:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        netloc = self.target.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{self.port}"
        self.url = urlunsplit(self.target._replace(netloc=netloc))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def cut(self) -> None:
        """Refuse new connections and drop every relayed one."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def restore(self) -> None:
        """Accept connections again, on the same port."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        broker_reader, broker_writer = await asyncio.open_connection(self.target.hostname, self.target.port or 5672)
        self.writers |= {client_writer, broker_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))


@pytest.fixture
async def declared(amqp: AbstractRobustConnection, topology_spec: Topology) -> DeclaredTopology:
    """This test's topology, declared."""
    return await declare(amqp, topology_spec)


# --- driving the CLI as a subprocess ---


def cli() -> list[str]:
    """The installed ``dagger-adapter`` script (the venv's, even when it is not on PATH)."""
    found = shutil.which("dagger-adapter") or shutil.which("dagger-adapter", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "consumer.cli"]


def cli_env(amqp_url: str, spec: Topology, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGGER_ADAPTER_")}
    env.update(
        DAGGER_ADAPTER_AMQP_URL=amqp_url,
        DAGGER_ADAPTER_TOPOLOGY_PREFIX=spec.prefix,
        DAGGER_ADAPTER_RETRY_DELAY_TIERS=",".join(str(d) for d in spec.retry_delays_seconds),
        DAGGER_ADAPTER_DELIVERY_LIMIT=str(spec.delivery_limit),
        **extra,
    )
    return env


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.strip()]


async def run_cli(*args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60.0) -> Ran:
    """Run ``dagger-adapter ARGS`` to completion (without blocking the test's event loop)."""
    process = await asyncio.create_subprocess_exec(
        *cli(),
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), timeout)
    except BaseException as exc:  # a timeout here, or the test giving up on this run: no orphan process
        process.kill()
        await process.wait()
        if isinstance(exc, TimeoutError):
            raise AssertionError(f"dagger-adapter {' '.join(args)} did not finish within {timeout} s") from None
        raise
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


class Running:
    """A long-running ``dagger-adapter`` (``results --follow``, ``status --watch``) that the test
    talks to line by line."""

    def __init__(self, process: asyncio.subprocess.Process, args: tuple[str, ...]) -> None:
        self.process = process
        self.args = args

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> Running:
        process = await asyncio.create_subprocess_exec(
            *cli(),
            *args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process, args)

    async def stderr_line(self, containing: str, timeout: float = WAIT) -> str:
        assert self.process.stderr is not None
        while True:
            line = (await asyncio.wait_for(self.process.stderr.readline(), timeout)).decode()
            if not line:
                raise AssertionError(f"dagger-adapter {' '.join(self.args)} ended without printing {containing!r}")
            if containing in line:
                return line

    async def stdout_line(self, timeout: float = WAIT) -> str:
        assert self.process.stdout is not None
        line = (await asyncio.wait_for(self.process.stdout.readline(), timeout)).decode()
        if not line:
            raise AssertionError(f"dagger-adapter {' '.join(self.args)} closed its output")
        return line

    async def finish(self, timeout: float = WAIT) -> Ran:
        out, err = await asyncio.wait_for(self.process.communicate(), timeout)
        assert self.process.returncode is not None
        return Ran(self.process.returncode, out.decode(), err.decode())

    async def interrupt(self, timeout: float = WAIT) -> Ran:
        self.process.send_signal(signal.SIGINT)
        return await self.finish(timeout)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


def one_line_error(ran: Ran) -> str:
    """Assert the run failed with exactly one ``dagger-adapter: error:`` line and no traceback."""
    lines = [line for line in ran.err.splitlines() if line.strip()]
    assert "Traceback" not in ran.err, ran.err
    assert len(lines) == 1 and lines[0].startswith("dagger-adapter: error: "), ran.err
    return lines[0]
