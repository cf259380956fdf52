"""RabbitMQ restarted under a running worker: nothing is lost, consuming resumes.

The shared broker is never restarted: this test starts a RabbitMQ node of its own (own node
name, ports, data directory, config) and restarts that one.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from consumer.config import load_config
from consumer.worker import Worker
from schemas import ExecutionCommand
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.worker_process import (
    Observer,
    command,
    publish_command,
    wait_until,
    waiting_commands,
    worker_settings,
)
from topology import Topology, declare, queue_depths

pytestmark = pytest.mark.slow

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRabbit:
    """A throw-away RabbitMQ node: its own name, ports, data, logs, config and Erlang cookie."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.node = f"rabbit-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        self.env = {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie lives here: the CLI and the node share it
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        subprocess.run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self.env, check=True, timeout=60)
        self._ctl("wait", str(self.base / "pid"), "--timeout", "120")

    async def restart(self) -> None:
        """Stop the broker (every connection drops) and start it again; data is kept."""
        await asyncio.to_thread(self._ctl, "stop_app")
        await asyncio.to_thread(self._ctl, "start_app")

    def stop(self) -> None:
        try:
            self._ctl("stop", str(self.base / "pid"), timeout=60)
        except (subprocess.SubprocessError, OSError):
            pid = (self.base / "pid").read_text().strip() if (self.base / "pid").exists() else ""
            if pid.isdigit():
                os.kill(int(pid), 9)


@pytest.fixture
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip("needs a local RabbitMQ installation to start a private node")
    node = PrivateRabbit(tmp_path_factory.mktemp("rabbit"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
async def private_amqp(rabbit: PrivateRabbit) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(rabbit.url, reconnect_interval=0.5)
    try:
        yield connection
    finally:
        await connection.close()


async def publish_when_back(
    connection: aio_pika.abc.AbstractRobustConnection, spec: Topology, message: ExecutionCommand
) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            await asyncio.wait_for(connection.connected.wait(), 60)
            channel = await connection.channel()
            await publish_command(channel, spec, message)
            await channel.close()
            return
        except (aio_pika.exceptions.AMQPError, RuntimeError, ConnectionError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_broker_restart_loses_no_command_and_consuming_resumes(
    rabbit: PrivateRabbit,
    private_amqp: aio_pika.abc.AbstractRobustConnection,
    valkey_url: str,
    prefix: str,
    dagger_engine: TestEngine,
    tmp_path: Path,
) -> None:
    spec = Topology(prefix=prefix, retry_delays_seconds=(0.2, 1.0, 5.0), delivery_limit=3)
    await declare(private_amqp, spec)
    observer = await Observer(private_amqp, spec, durable_queue=f"{prefix}.observer").start()

    # The first two executions run across the restart: they end only once the broker is back.
    broker_back = threading.Event()
    started: list[str] = []

    def answer(record: ExecRecord) -> ExecOutcome:
        started.append(record.args[-1])
        if len(started) <= 2:
            broker_back.wait(60)
        return ExecOutcome(stdout="ok\n")

    dagger_engine.on_exec(["restart-test"], answer)
    settings = worker_settings(
        amqp_url=rabbit.url,
        valkey_url=valkey_url,
        spec=spec,
        work_dir=tmp_path,
        engine_env=dagger_engine.session_env(),
        max_concurrent_executions=2,
    )
    worker = Worker(load_config(env=settings))
    running = asyncio.create_task(worker.run())
    try:
        await observer.wait_ready(worker.worker_id)
        channel = await private_amqp.channel()
        before = [f"before-{i}" for i in range(6)]
        for task_id in before:
            await publish_command(channel, spec, command(task_id, "restart-test", task_id))
        await wait_until(lambda: dagger_engine.current_execs == 2, 30, "both slots busy with held executions")

        await rabbit.restart()
        broker_back.set()

        # New commands after the restart, published once our own connection is back.
        after = [f"after-{i}" for i in range(2)]
        for task_id in after:
            await publish_when_back(private_amqp, spec, command(task_id, "restart-test", task_id))

        everything = before + after
        await observer.wait_for(
            lambda: {r.task_id for r in observer.results} >= set(everything), 90, "a result for every command"
        )
        await observer.wait_heartbeats(3, 15, lambda b: b.worker_id == worker.worker_id)
        assert sorted(r.task_id for r in observer.results) == sorted(everything)  # each once
        assert all(r.success for r in observer.results)
        assert sorted(started) == sorted(everything)  # nothing ran twice

        # The copies redelivered after the restart were settled too (answered, not left unacked
        # or circling through the retry queues).
        async def settled() -> bool:
            return worker.in_flight == 0 and await waiting_commands(private_amqp, spec) == 0

        await wait_until(settled, 60, "every delivery settled")
        assert (await queue_depths(private_amqp, spec))[spec.dead_queue] == 0
        assert sorted(r.task_id for r in observer.results) == sorted(everything)  # still each once
        # Operators see the restart in the metrics.
        assert (worker.metrics.registry.get_sample_value("dagger_adapter_broker_reconnects_total") or 0) >= 1
    finally:
        broker_back.set()
        worker.request_stop()
        await asyncio.wait_for(running, 60)
