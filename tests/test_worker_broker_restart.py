"""RabbitMQ restarted under a running worker: nothing is lost, consuming resumes.

The shared broker is never restarted: this test starts a RabbitMQ node of its own (own node
name, ports, data directory, config) and restarts that one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest

from consumer.config import load_config
from consumer.worker import Worker
from schemas import ExecutionCommand
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.private_rabbit import RABBIT_BIN, PrivateRabbit
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


@pytest.mark.parametrize("how", ["node", "app"])
async def test_a_retry_that_comes_due_while_the_node_is_down_is_not_lost(
    rabbit: PrivateRabbit, prefix: str, how: str
) -> None:
    """The retry tiers dead-letter at least once: an expiry during the restart still reaches the
    tasks queue (the classic tiers dropped it: "leader not known. Command is dropped")."""
    spec = Topology(prefix=prefix, retry_delays_seconds=(0.2, 1.0, 5.0), delivery_limit=3)
    connection = await aio_pika.connect(rabbit.url)
    declared = await declare(connection, spec)
    due = [f"due-{i}" for i in range(20)]
    for task_id in due:  # due in 1-2 s: while the node is stopped
        await declared.retry.publish(
            aio_pika.Message(task_id.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT, expiration=1.5),
            routing_key=spec.retry_tier_for(1.5).routing_key,
        )
    await connection.close()
    if how == "node":
        await asyncio.to_thread(rabbit.stop)
        await asyncio.to_thread(rabbit.start)
    else:
        await asyncio.to_thread(rabbit._ctl, "stop_app")
        await asyncio.sleep(2)  # the retries come due in this window
        await asyncio.to_thread(rabbit._ctl, "start_app")

    connection = await aio_pika.connect(rabbit.url)
    try:
        channel = await connection.channel()
        tasks = await channel.declare_queue(spec.tasks_queue, passive=True)
        back: list[str] = []

        async def all_back() -> bool:
            while (message := await tasks.get(fail=False, no_ack=True)) is not None:
                back.append(message.body.decode())
            return set(back) >= set(due)

        await wait_until(all_back, 60, "every retry back in the tasks queue")
        # At least once: none is lost; one may come twice (the worker's ledger answers the copy).
        assert set(back) == set(due)
    finally:
        await connection.close()
