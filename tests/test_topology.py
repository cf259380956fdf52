"""The topology against real RabbitMQ: idempotent declaration, the arguments doing their job
(delivery limit dead-letters, retry tiers redeliver), and conflicts reported clearly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest

from schemas import ExecutionType
from topology import Topology, TopologyConflict, declare


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (``/`` when it names none)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


async def get_one(queue: aio_pika.abc.AbstractQueue, timeout: float = 10.0) -> aio_pika.abc.AbstractIncomingMessage:
    """Wait (polling basic.get) until a message is in ``queue``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no message arrived in {queue.name} within {timeout}s")
        await asyncio.sleep(0.05)


async def test_declare_twice_is_safe(amqp: aio_pika.abc.AbstractRobustConnection, topology_spec: Topology) -> None:
    first = await declare(amqp, topology_spec)
    second = await declare(amqp, topology_spec)
    assert set(first.queues) == set(second.queues) == {q.name for q in topology_spec.queues}
    assert set(first.exchanges) == {e.name for e in topology_spec.exchanges}


def test_default_names_and_arguments() -> None:
    spec = Topology()
    names = {e.name: e.kind for e in spec.exchanges}
    assert names == {
        "dagger.tasks": "topic",
        "dagger.results": "topic",
        "dagger.status": "topic",
        "dagger.dead": "fanout",
        "dagger.retry": "direct",
    }
    tasks, dead, *retries, history = spec.queues
    assert history.name == "dagger.results.history" and history.queue_type == "stream"
    assert tasks.name == "dagger.tasks" and tasks.bindings == (("dagger.tasks", "#"),)
    assert tasks.arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": "dagger.dead",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    assert dead.name == "dagger.dead" and dead.queue_type == "classic"
    assert [r.arguments["x-message-ttl"] for r in retries] == [1000, 5000, 30000, 120000, 600000]
    assert all(r.arguments["x-dead-letter-exchange"] == "dagger.tasks" for r in retries)
    # A due retry leaves its tier only once the tasks queue has it (never the only copy in flight).
    assert all(
        r.queue_type == "quorum"
        and r.arguments["x-dead-letter-strategy"] == "at-least-once"
        and r.arguments["x-overflow"] == "reject-publish"
        for r in retries
    )
    assert spec.result_routing_key("dagger_pipeline", "failed") == "dagger_pipeline.failed"
    assert spec.status_routing_key("running") == "task.running"
    assert spec.retry_tier_for(0.5).delay_ms == 1000
    assert spec.retry_tier_for(4.2).delay_ms == 5000
    assert spec.retry_tier_for(10_000).delay_ms == 600000  # capped at the largest tier


async def test_queue_types_are_as_declared(
    amqp: aio_pika.abc.AbstractRobustConnection, topology_spec: Topology, amqp_url: str
) -> None:
    await declare(amqp, topology_spec)
    out = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "list_queues", "-p", vhost_of(amqp_url), "-q", "--no-table-headers", "name", "type"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:  # a broker in a container: the arguments are checked behaviourally below
        pytest.skip(f"rabbitmqctl unavailable: {out.stderr.strip()[:200]}")
    types = dict(line.split() for line in out.stdout.splitlines() if line.startswith(topology_spec.prefix + "."))
    assert types[topology_spec.tasks_queue] == "quorum"
    assert types[topology_spec.dead_queue] == "classic"
    assert all(types[t.queue] == "quorum" for t in topology_spec.retry_tiers)


async def test_a_message_that_keeps_coming_back_is_dead_lettered_by_the_delivery_limit(
    amqp: aio_pika.abc.AbstractRobustConnection, topology_spec: Topology
) -> None:
    declared = await declare(amqp, topology_spec)
    await declared.tasks.publish(aio_pika.Message(b'{"task_id": "killer"}'), routing_key="dagger_pipeline")
    # Each requeue is one more delivery, as when a worker dies holding the message.
    for _ in range(topology_spec.delivery_limit + 1):
        message = await declared.tasks_queue.get(no_ack=False, fail=False)
        if message is None:
            break
        await message.nack(requeue=True)
    dead = await get_one(declared.dead_queue)
    assert dead.body == b'{"task_id": "killer"}'
    assert dead.headers["x-death"][0]["reason"] == "delivery_limit"
    assert await declared.tasks_queue.get(fail=False) is None


async def test_a_retry_waits_in_its_tier_then_returns_to_the_tasks_queue(
    amqp: aio_pika.abc.AbstractRobustConnection, topology_spec: Topology
) -> None:
    declared = await declare(amqp, topology_spec)
    tier = topology_spec.retry_tier_for(0.1)
    await declared.retry.publish(
        aio_pika.Message(b"again", headers={"x-attempts": 1}, expiration=0.1), routing_key=tier.routing_key
    )
    back = await get_one(declared.tasks_queue)
    assert back.body == b"again"
    assert back.headers["x-attempts"] == 1
    await back.ack()


async def test_a_conflicting_queue_is_a_clear_error_not_a_crash(
    amqp: aio_pika.abc.AbstractRobustConnection, topology_spec: Topology
) -> None:
    await declare(amqp, topology_spec)
    changed = Topology(
        prefix=topology_spec.prefix,
        retry_delays_seconds=topology_spec.retry_delays_seconds,
        delivery_limit=topology_spec.delivery_limit + 1,
    )
    with pytest.raises(TopologyConflict, match=rf"queue '{topology_spec.tasks_queue}' already exists"):
        await declare(amqp, changed)
    # The connection is still usable afterwards.
    again = await declare(amqp, topology_spec)
    assert topology_spec.tasks_queue in again.queues


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def cli_env(amqp_url: str, spec: Topology) -> dict[str, str]:
    return {
        **os.environ,
        "DAGGER_ADAPTER_AMQP_URL": amqp_url,
        "DAGGER_ADAPTER_TOPOLOGY_PREFIX": spec.prefix,
        "DAGGER_ADAPTER_RETRY_DELAY_TIERS": ",".join(str(d) for d in spec.retry_delays_seconds),
        "DAGGER_ADAPTER_DELIVERY_LIMIT": str(spec.delivery_limit),
    }


async def test_cli_declares_twice_and_shows(
    amqp_url: str, topology_spec: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = cli_env(amqp_url, topology_spec)
    for _ in range(2):
        out = await asyncio.to_thread(run_cli, "topology", "declare", env=env)
        assert out.returncode == 0, out.stderr
        assert f"prefix '{topology_spec.prefix}'" in out.stdout
    shown = await asyncio.to_thread(run_cli, "topology", "show", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f'"{topology_spec.tasks_queue}"' in shown.stdout
    conflict = await asyncio.to_thread(
        run_cli, "topology", "declare", env={**env, "DAGGER_ADAPTER_DELIVERY_LIMIT": "9"}
    )
    assert conflict.returncode == 1
    assert "already exists with different settings" in conflict.stderr
    assert "Traceback" not in conflict.stderr


def test_task_routing_key_is_the_execution_type() -> None:
    assert Topology.task_routing_key(ExecutionType.DAGGER_PIPELINE.value) == "dagger_pipeline"


async def declare_old_classic_tiers(amqp: aio_pika.abc.AbstractRobustConnection, spec: Topology) -> None:
    """The topology as versions before at-least-once retry tiers declared it."""
    channel = await amqp.channel()
    retry = await channel.declare_exchange(spec.retry_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    for tier in spec.retry_tiers:
        queue = await channel.declare_queue(
            tier.queue,
            durable=True,
            arguments={
                "x-queue-type": "classic",
                "x-message-ttl": tier.delay_ms,
                "x-dead-letter-exchange": spec.tasks_exchange,
                "x-dead-letter-routing-key": spec.retry_return_routing_key(tier),
            },
        )
        await queue.bind(retry, routing_key=tier.routing_key)
    await channel.close()


async def test_an_old_deployment_gets_a_clear_message_and_migrate_moves_its_waiting_retries(
    amqp: aio_pika.abc.AbstractRobustConnection, topology_spec: Topology, amqp_url: str
) -> None:
    await declare_old_classic_tiers(amqp, topology_spec)
    longest = topology_spec.retry_tiers[-1]
    channel = await amqp.channel()
    retry = await channel.get_exchange(topology_spec.retry_exchange)
    for i in range(3):  # waiting in the old classic tier, with their attempt counts
        await retry.publish(
            aio_pika.Message(f"waiting-{i}".encode(), headers={"x-attempts": 2}, message_id=f"m{i}"),
            routing_key=longest.routing_key,
        )

    with pytest.raises(TopologyConflict, match="dagger-adapter topology migrate"):
        await declare(amqp, topology_spec)
    env = cli_env(amqp_url, topology_spec)
    refused = await asyncio.to_thread(run_cli, "topology", "declare", env=env)
    assert refused.returncode == 1 and "topology migrate" in refused.stderr and "Traceback" not in refused.stderr

    migrated = await asyncio.to_thread(run_cli, "topology", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert f"'{longest.queue}': re-declared as quorum; 3 waiting retries sent back" in migrated.stdout

    declared = await declare(amqp, topology_spec)  # no conflict any more
    back = [await get_one(declared.tasks_queue) for _ in range(3)]
    assert sorted((m.body, m.message_id, m.headers["x-attempts"]) for m in back) == [
        (f"waiting-{i}".encode(), f"m{i}", 2) for i in range(3)
    ]
    # The new tier works, and a second migrate has nothing to do.
    await declared.retry.publish(aio_pika.Message(b"new"), routing_key=longest.routing_key)
    again = await asyncio.to_thread(run_cli, "topology", "migrate", env=env)
    assert again.returncode == 0 and "(0 queue(s) migrated)" in again.stdout
