"""Dead-letter operations against real RabbitMQ: browse without consuming, show, replay, purge."""

from __future__ import annotations

from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from consumer.client import DeadLetterNotFound, DeadLetterQueue, ReplayIncomplete, Selector
from consumer.client.dead_letters import content_id
from schemas import ErrorCategory, ExecutionCommand, decode
from schemas.headers import ATTEMPTS, ERROR, ERROR_CATEGORY, REPLAY_ID, TASK_ID
from tests.test_client_support import (
    command,
    declared,
    depth,
    put_dead_letter,
    put_delivery_limit_dead_letter,
)
from topology import DeclaredTopology, Topology

__all__ = ["declared"]


async def fill(declared: DeclaredTopology) -> list[str]:
    ids = []
    for i, category in enumerate(("permanent", "invalid", "permanent", "timeout")):
        ids.append(
            await put_dead_letter(
                declared, command(task_id=f"dl-{i}"), category=category, error=f"failure {i}", attempts=i + 1
            )
        )
    return ids


async def take_all(amqp: AbstractRobustConnection, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    channel = await amqp.channel()
    q = await channel.get_queue(queue, ensure=False)
    out = []
    while (message := await q.get(fail=False, no_ack=True)) is not None:
        out.append(message)
    await channel.close()
    return out


async def test_browsing_twice_shows_the_same_letters_in_order_and_consumes_nothing(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(declared)
    dlq = DeadLetterQueue(amqp, topology_spec)
    first = await dlq.browse()
    second = await dlq.browse()
    assert [d.id for d in first] == ids == [d.id for d in second]
    assert [d.task_id for d in first] == ["dl-0", "dl-1", "dl-2", "dl-3"]
    assert [(d.category, d.reason.error, d.reason.attempts) for d in first[:2]] == [
        ("permanent", "failure 0", 1),
        ("invalid", "failure 1", 2),
    ]
    assert all(d.when is not None and d.reason.worker_id == "worker-test" for d in first)
    assert [d.id for d in await dlq.browse(limit=2)] == ids[:2]
    assert await depth(amqp, topology_spec.dead_queue) == 4


async def test_show_finds_a_letter_by_id_with_headers_and_body(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(declared)
    dlq = DeadLetterQueue(amqp, topology_spec)
    [letter] = await dlq.show(ids[2])
    info = letter.to_json()
    assert info["id"] == ids[2] and info["task_id"] == "dl-2"
    assert info["headers"][ERROR] == "failure 2"
    assert info["body"]["task_id"] == "dl-2"
    with pytest.raises(DeadLetterNotFound, match="no-such-id"):
        await dlq.show("no-such-id")
    assert await depth(amqp, topology_spec.dead_queue) == 4


async def test_replay_moves_each_selected_letter_once_with_attempts_reset(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(declared)
    dlq = DeadLetterQueue(amqp, topology_spec)
    moved = await dlq.replay(Selector(ids=(ids[1], ids[3])))
    assert [m.letter.id for m in moved] == [ids[1], ids[3]]
    assert len({m.replay_id for m in moved}) == 2

    # The rest stays, in order; the moved ones are in the tasks queue exactly once each.
    assert [d.id for d in await dlq.browse()] == [ids[0], ids[2]]
    replayed = await take_all(amqp, topology_spec.tasks_queue)
    assert [m.message_id for m in replayed] == [ids[1], ids[3]]
    for message, move in zip(replayed, moved, strict=True):
        assert message.routing_key == "containerized_workflow"
        assert message.headers[REPLAY_ID] == move.replay_id
        assert message.headers[TASK_ID] == move.letter.task_id
        assert not {ATTEMPTS, ERROR, ERROR_CATEGORY} & set(message.headers)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert decode(message.body, ExecutionCommand).task_id == move.letter.task_id


async def test_replay_by_category_task_id_and_dry_run(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(declared)
    dlq = DeadLetterQueue(amqp, topology_spec)
    dry = await dlq.replay(Selector(category="permanent"), dry_run=True)
    assert [m.letter.id for m in dry] == [ids[0], ids[2]] and all(m.replay_id is None for m in dry)
    assert await depth(amqp, topology_spec.tasks_queue) == 0
    assert len(await dlq.browse()) == 4

    assert [m.letter.id for m in await dlq.replay(Selector(category="permanent"))] == [ids[0], ids[2]]
    assert [m.letter.id for m in await dlq.replay(Selector(task_id="dl-3"))] == [ids[3]]
    assert [d.id for d in await dlq.browse()] == [ids[1]]
    assert await depth(amqp, topology_spec.tasks_queue) == 3


async def test_replay_with_an_unknown_id_moves_nothing(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(declared)
    dlq = DeadLetterQueue(amqp, topology_spec)
    with pytest.raises(DeadLetterNotFound, match="nope"):
        await dlq.replay(Selector(ids=(ids[0], "nope")))
    assert [d.id for d in await dlq.browse()] == ids
    assert await depth(amqp, topology_spec.tasks_queue) == 0


async def test_a_replay_that_cannot_be_routed_keeps_the_letter(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(declared)
    await declared.tasks_queue.unbind(declared.tasks, "#")
    dlq = DeadLetterQueue(amqp, topology_spec)
    with pytest.raises(ReplayIncomplete, match="could not route") as caught:
        await dlq.replay(Selector(everything=True))
    assert caught.value.moved == []
    assert [d.id for d in await dlq.browse()] == ids


async def test_purge_selected_then_all(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(declared)
    dlq = DeadLetterQueue(amqp, topology_spec)
    purged = await dlq.purge(Selector(ids=(ids[0], ids[2])))
    assert [d.id for d in purged] == [ids[0], ids[2]]
    assert [d.id for d in await dlq.browse()] == [ids[1], ids[3]]
    assert await dlq.purge_all() == 2
    assert await dlq.browse() == []
    assert await depth(amqp, topology_spec.tasks_queue) == 0


async def test_a_letter_rabbitmq_dead_lettered_itself_is_described_and_replayable(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    cmd = command(task_id="crashy")
    message_id = await put_delivery_limit_dead_letter(amqp, declared, topology_spec, cmd)
    dlq = DeadLetterQueue(amqp, topology_spec)
    [letter] = await dlq.browse()
    assert letter.id == message_id and letter.task_id == "crashy"
    assert letter.category == ErrorCategory.PERMANENT.value
    assert "delivery_limit" in letter.reason.error
    assert "x-death" in letter.headers and ERROR not in letter.headers

    [moved] = await dlq.replay(Selector(ids=(message_id,)))
    [message] = await take_all(amqp, topology_spec.tasks_queue)
    assert message.message_id == message_id and message.headers[REPLAY_ID] == moved.replay_id
    assert not any(k.startswith(("x-death", "x-first-death", "x-last-death")) for k in message.headers)
    assert message.headers.get("x-delivery-count", 0) == 0  # the quorum queue counts afresh
    assert await dlq.browse() == []


async def test_a_letter_whose_body_is_not_json_is_still_listed(
    amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    await declared.dead.publish(aio_pika.Message(b"not json at all", headers={ERROR: "bad"}), routing_key="x")
    dlq = DeadLetterQueue(amqp, topology_spec)
    [letter] = await dlq.browse()
    assert letter.task_id is None and letter.execution_type is None
    assert letter.to_json()["body"] == "not json at all"
    assert letter.replay_routing_key == "x"  # no execution type in the body: the original key
    assert [d.id for d in await dlq.show(letter.id)] == [letter.id]


def test_a_letter_without_message_id_gets_a_stable_content_id() -> None:
    # aio-pika always sets a message_id; other publishers may not.
    headers = {"x-death": [{"reason": "delivery_limit", "time": datetime(2024, 1, 1, tzinfo=UTC)}]}
    first = content_id(b'{"task_id": "a"}', headers)
    assert first == content_id(b'{"task_id": "a"}', dict(headers)) and first.startswith("sha-")
    assert first != content_id(b'{"task_id": "b"}', headers)
    assert first != content_id(b'{"task_id": "a"}', {})
