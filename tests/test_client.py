"""ExecutionClient against real RabbitMQ: publishing, request/reply, result and status streams."""

from __future__ import annotations

import asyncio
import re

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from consumer.client import ConnectionLost, ExecutionClient, PublishFailed, TopologyMissing
from schemas import (
    ErrorCategory,
    ExecutionCommand,
    ExecutionResult,
    ExecutionType,
    InvalidMessage,
    StatusEvent,
    TaskState,
    WorkerHeartbeat,
    decode,
    encode,
)
from schemas.headers import TASK_ID
from tests.test_client_support import WAIT, BrokerLink, Responder, command, declared, depth, eventually
from topology import DeclaredTopology, Topology

__all__ = ["declared"]  # the fixture, imported for pytest


async def test_submit_publishes_a_persistent_confirmed_command_routed_by_type(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    cmd = command(execution_type=ExecutionType.DAGGER_PIPELINE, parameters={"module": "m", "function": "f"}, priority=7)
    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        task_id = await client.submit(cmd)
    assert task_id == cmd.task_id

    channel = await amqp.channel()
    queue = await channel.get_queue(topology_spec.tasks_queue, ensure=False)
    message = await queue.get(timeout=WAIT)
    await message.ack()
    assert message.routing_key == "dagger_pipeline"
    assert re.fullmatch(r"[0-9a-f]{32}", message.message_id or "")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"
    assert message.headers[TASK_ID] == cmd.task_id
    assert message.priority == 7  # the command's priority, as the AMQP property
    sent = decode(message.body, ExecutionCommand)
    assert (sent.task_id, sent.parameters) == (cmd.task_id, cmd.parameters)
    assert sent.submitted_at is not None
    await channel.close()


async def test_each_submit_gets_its_own_message_id(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    client = await ExecutionClient.connect(amqp_url, topology_spec)
    try:
        for _ in range(3):
            await client.submit(command())
    finally:
        await client.close()
    channel = await amqp.channel()
    queue = await channel.get_queue(topology_spec.tasks_queue, ensure=False)
    ids = set()
    for _ in range(3):
        message = await queue.get(timeout=WAIT)
        ids.add(message.message_id)
        await message.ack()
    assert len(ids) == 3
    await channel.close()


async def test_an_unroutable_command_is_an_error_for_the_caller(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    # Nothing bound to the tasks exchange: RabbitMQ returns the mandatory message.
    await declared.tasks_queue.unbind(declared.tasks, "#")
    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        with pytest.raises(PublishFailed, match="could not route") as caught:
            await client.submit(command(task_id="lost-1"))
        assert caught.value.task_id == "lost-1"
        # The client stays usable after a return.
        await declared.tasks_queue.bind(declared.tasks, "#")
        await client.submit(command())
    assert await depth(amqp, topology_spec.tasks_queue) == 1


async def test_invalid_parameters_are_refused_before_anything_is_sent(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    bad = command(parameters={"command": ["echo"]})  # a command without an image
    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        with pytest.raises(InvalidMessage, match="container_image"):
            await client.submit(bad)
    assert await depth(amqp, topology_spec.tasks_queue) == 0


async def test_connect_refuses_a_malformed_url_at_once(topology_spec: Topology) -> None:
    # aio-pika's robust connection would retry it forever.
    with pytest.raises(ValueError, match="not an AMQP URL"):
        await asyncio.wait_for(ExecutionClient.connect("localhost:5672", topology_spec), WAIT)


async def test_connect_without_a_topology_says_so(amqp_url: str, topology_spec: Topology) -> None:
    with pytest.raises(TopologyMissing, match=re.escape(topology_spec.tasks_exchange)):
        await ExecutionClient.connect(amqp_url, topology_spec)


async def test_submit_and_wait_returns_the_result_and_sets_reply_fields(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        Responder(amqp, topology_spec) as responder,
    ):
        result = await client.submit_and_wait(command(task_id="rr-1"), timeout=WAIT)
        assert result.task_id == "rr-1" and result.success and result.result == {"echo": "rr-1"}

        failed = await client.submit_and_wait(command(task_id="rr-2", correlation_id="mine-2"), timeout=WAIT)
        assert failed.task_id == "rr-2"
        assert client.waiting == 0

    first, second = (decode(m.body, ExecutionCommand) for m in responder.seen)
    # Standard AMQP RPC over direct reply-to: RabbitMQ put its own reply name in the property.
    reply_to = responder.seen[0].reply_to or ""
    assert reply_to.startswith("amq.rabbitmq.reply-to.") and first.reply_to is None
    assert first.correlation_id and first.correlation_id == responder.seen[0].correlation_id
    assert first.correlation_id != first.task_id  # a fresh id when the caller gives none
    assert second.correlation_id == "mine-2" == responder.seen[1].correlation_id
    assert responder.seen[1].reply_to == reply_to  # one reply consumer per client


async def test_submit_and_wait_reports_a_failure_result(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        Responder(amqp, topology_spec, succeed=False),
    ):
        result = await client.submit_and_wait(command(task_id="rr-fail"), timeout=WAIT)
    assert not result.success
    assert result.error_category == ErrorCategory.PERMANENT


async def test_submit_and_wait_times_out_and_forgets_the_call(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        with pytest.raises(TimeoutError):
            await client.submit_and_wait(command(task_id="nobody-home"), timeout=0.5)
        assert client.waiting == 0
        # A reply arriving after the timeout is ignored, and the client still works.
        async with Responder(amqp, topology_spec) as responder:
            result = await client.submit_and_wait(command(task_id="after-timeout"), timeout=WAIT)
        assert result.task_id == "after-timeout"
        answered = [decode(m.body, ExecutionCommand).task_id for m in responder.seen]
        assert answered == ["nobody-home", "after-timeout"]  # the late reply was sent, and ignored


async def test_one_thousand_concurrent_submit_and_wait_calls(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    """1,000 concurrent calls over one connection each get their own result. The responder is
    a minimal in-test stand-in for workers that answers per the reply contract: this test is
    about the CLIENT (one reply queue, correlation ids mapped to waiting calls)."""
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        Responder(amqp, topology_spec) as responder,
    ):
        commands = [command(task_id=f"bulk-{i}") for i in range(1000)]
        results = await asyncio.wait_for(
            asyncio.gather(*(client.submit_and_wait(c, timeout=120) for c in commands)), timeout=150
        )
        assert client.waiting == 0
    assert [r.task_id for r in results] == [c.task_id for c in commands]
    assert all(r.result == {"echo": r.task_id} for r in results)
    assert len({m.reply_to for m in responder.seen}) == 1  # one direct reply-to consumer
    assert len(responder.seen) == 1000


async def publish_result(
    declared: DeclaredTopology, spec: Topology, result: ExecutionResult, message_id: str | None = None
) -> None:
    assert result.execution_type is not None
    await declared.results.publish(
        aio_pika.Message(encode(result), content_type="application/json", message_id=message_id),
        routing_key=spec.result_routing_key(result.execution_type.value, result.outcome.value),
    )


def result(task_id: str, success: bool, execution_type: ExecutionType) -> ExecutionResult:
    return ExecutionResult(task_id=task_id, success=success, execution_type=execution_type)


async def test_results_are_filtered_by_type_and_outcome_on_the_broker(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    workflow, pipeline = ExecutionType.CONTAINERIZED_WORKFLOW, ExecutionType.DAGGER_PIPELINE
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        client.results(execution_type=pipeline, outcome="failed") as events,
    ):
        assert events.routing_keys == ("dagger_pipeline.failed",)
        # One publisher, one queue: arrival order is publish order, so the last matching
        # event marks the end of what could have arrived.
        for r in (
            result("a", False, workflow),
            result("b", False, pipeline),
            result("c", True, pipeline),
            result("d", False, pipeline),
        ):
            await publish_result(declared, topology_spec, r)
        got = [(await asyncio.wait_for(anext(events), WAIT)).task_id for _ in range(2)]
    assert got == ["b", "d"]


async def test_a_repeated_copy_of_a_result_is_dropped_and_counted(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    """A worker that republishes after a lost confirm, or answers a duplicate command, sends a
    copy with the same message_id: subscribers see each result once."""
    workflow = ExecutionType.CONTAINERIZED_WORKFLOW
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        client.results() as events,
    ):
        for task_id, message_id in (("a", "a:1"), ("a", "a:1"), ("b", "b:1"), ("a", "a:1"), ("a", "a:2")):
            await publish_result(declared, topology_spec, result(task_id, True, workflow), message_id)
        got = [(await asyncio.wait_for(anext(events), WAIT)).task_id for _ in range(3)]
        assert got == ["a", "b", "a"]  # a:1, b:1, a:2 (another attempt's result is not a copy)
        assert events.duplicates == 2


async def test_results_filtered_by_task_id(amqp_url: str, topology_spec: Topology, declared: DeclaredTopology) -> None:
    workflow = ExecutionType.CONTAINERIZED_WORKFLOW
    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        events = client.results(task_id="wanted")
        await events.open()
        assert events.routing_keys == ("*.*",)
        for r in (result("other", True, workflow), result("wanted", False, workflow), result("x", True, workflow)):
            await publish_result(declared, topology_spec, r)
        await publish_result(declared, topology_spec, result("wanted", True, workflow))
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in range(2)]
    assert [(r.task_id, r.success) for r in got] == [("wanted", False), ("wanted", True)]
    assert events._closed  # closed with the client


async def test_status_stream_yields_task_events_and_heartbeats(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        client.status(task_id="t1") as events,
    ):
        for routing_key, message in (
            (topology_spec.status_routing_key("running"), StatusEvent(task_id="t2", state=TaskState.RUNNING)),
            (topology_spec.status_routing_key("running"), StatusEvent(task_id="t1", state=TaskState.RUNNING)),
            (
                topology_spec.heartbeat_routing_key,
                WorkerHeartbeat(worker_id="w1", ready=True, current_load=1, capacity=4),
            ),
            (topology_spec.status_routing_key("succeeded"), StatusEvent(task_id="t1", state=TaskState.SUCCEEDED)),
        ):
            await declared.status.publish(aio_pika.Message(encode(message)), routing_key=routing_key)
        got = [await asyncio.wait_for(anext(events), WAIT) for _ in range(3)]
    assert isinstance(got[0], StatusEvent) and (got[0].task_id, got[0].state) == ("t1", TaskState.RUNNING)
    assert isinstance(got[1], WorkerHeartbeat) and got[1].worker_id == "w1" and got[1].capacity == 4
    assert isinstance(got[2], StatusEvent) and got[2].state == TaskState.SUCCEEDED


async def test_status_stream_of_heartbeats_only_binds_only_heartbeats(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        client.status(tasks=False) as events,
    ):
        assert events.routing_keys == (topology_spec.heartbeat_routing_key,)
        await declared.status.publish(
            aio_pika.Message(encode(StatusEvent(task_id="t", state=TaskState.RUNNING))),
            routing_key=topology_spec.status_routing_key("running"),
        )
        await declared.status.publish(
            aio_pika.Message(b"not json"), routing_key=topology_spec.heartbeat_routing_key
        )  # skipped, not fatal
        await declared.status.publish(
            aio_pika.Message(encode(WorkerHeartbeat(worker_id="w9", ready=False, current_load=0, capacity=2))),
            routing_key=topology_spec.heartbeat_routing_key,
        )
        event = await asyncio.wait_for(anext(events), WAIT)
    assert isinstance(event, WorkerHeartbeat) and event.worker_id == "w9"


async def test_closing_the_client_releases_its_queues(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    # The results history stream takes every result: unbound here, so that the client's own
    # queue is the only one a result can reach.
    setup = await amqp.channel()
    history = await setup.declare_queue(topology_spec.results_stream, passive=True)
    await history.unbind(topology_spec.results_exchange, "#")
    await setup.close()
    assert not await _bound(amqp, declared)
    client = await ExecutionClient.connect(amqp_url, topology_spec)
    events = client.results()
    await events.open()
    await eventually(lambda: _bound(amqp, declared), what="the results queue to be bound")
    await client.close()
    assert client.connection.is_closed
    # The private queue was auto-deleted: a result now reaches no queue.
    channel = await amqp.channel(on_return_raises=True)
    exchange = await channel.get_exchange(topology_spec.results_exchange)
    with pytest.raises(aio_pika.exceptions.PublishError):
        await exchange.publish(aio_pika.Message(b"{}"), routing_key="containerized_workflow.succeeded")
    await channel.close()


async def _bound(amqp: AbstractRobustConnection, declared: DeclaredTopology) -> bool:
    channel = await amqp.channel(on_return_raises=True)
    try:
        exchange = await channel.get_exchange(declared.spec.results_exchange)
        await exchange.publish(aio_pika.Message(b"probe"), routing_key="containerized_workflow.succeeded")
        return True
    except aio_pika.exceptions.PublishError:
        return False
    finally:
        await channel.close()


async def test_a_waiting_call_fails_when_the_connection_is_lost(
    amqp: AbstractRobustConnection, amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    """The reply consumer dies with the connection, so a reply may never come: the waiting call
    fails at once instead of waiting out its timeout. Once the robust connection is back, the
    client works again (it consumes direct reply-to anew)."""
    async with BrokerLink(amqp_url) as link, ExecutionClient.connect(link.url, topology_spec) as client:
        waiting = asyncio.create_task(client.submit_and_wait(command(task_id="cut-off"), timeout=300))
        await eventually(lambda: _has_depth(amqp, topology_spec.tasks_queue, 1), what="the command to be queued")
        await link.cut()
        with pytest.raises(ConnectionLost, match="lost the connection"):
            await asyncio.wait_for(waiting, WAIT)
        assert client.waiting == 0

        with pytest.raises(ConnectionLost, match="not connected"):
            await client.submit(command(task_id="during-the-outage"))

        reconnected = asyncio.Event()
        assert isinstance(client.connection, AbstractRobustConnection)
        client.connection.reconnect_callbacks.add(lambda *_: reconnected.set())
        await link.restore()
        await asyncio.wait_for(reconnected.wait(), WAIT * 2)
        async with Responder(amqp, topology_spec):
            result = await client.submit_and_wait(command(task_id="reconnected"), timeout=WAIT * 2)
        assert result.task_id == "reconnected" and result.success


async def _has_depth(amqp: AbstractRobustConnection, queue: str, expected: int) -> bool:
    return await depth(amqp, queue) == expected
