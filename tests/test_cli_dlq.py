"""`dagger-adapter dlq`, run as a subprocess against real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import os
import pty
from asyncio.subprocess import PIPE

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from consumer.client import DeadLetterQueue
from schemas.headers import ATTEMPTS, ERROR, REPLAY_ID
from tests.test_client_support import (
    WAIT,
    cli,
    cli_env,
    command,
    declared,
    depth,
    one_line_error,
    put_dead_letter,
    put_delivery_limit_dead_letter,
    run_cli,
)
from topology import DeclaredTopology, Topology

__all__ = ["declared"]


async def fill(amqp: AbstractRobustConnection, declared: DeclaredTopology, spec: Topology) -> list[str]:
    """Three letters dead-lettered by a worker and one by RabbitMQ itself (delivery limit)."""
    ids = [
        await put_dead_letter(declared, command(task_id="t-perm"), category="permanent", error="exit 1", attempts=1),
        await put_dead_letter(declared, command(task_id="t-trans"), category="transient", error="registry", attempts=4),
    ]
    ids.append(await put_delivery_limit_dead_letter(amqp, declared, spec, command(task_id="t-crash")))
    ids.append(await put_dead_letter(declared, command(task_id="t-perm"), category="permanent", error="again"))
    return ids


async def letter_ids(amqp: AbstractRobustConnection, spec: Topology) -> list[str]:
    """What is left in the dead-letter queue (checked in-process; `dlq list` itself is tested above)."""
    return [letter.id for letter in await DeadLetterQueue(amqp, spec).browse()]


async def tasks_messages(amqp: AbstractRobustConnection, spec: Topology) -> list[aio_pika.abc.AbstractIncomingMessage]:
    channel = await amqp.channel()
    queue = await channel.get_queue(spec.tasks_queue, ensure=False)
    out = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        out.append(message)
    await channel.close()
    return out


async def test_dlq_list_twice_shows_the_same_letters_in_the_same_order(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(amqp, declared, topology_spec)
    env = cli_env(amqp_url, topology_spec)
    first, second = await run_cli("dlq", "list", "--json", env=env), await run_cli("dlq", "list", "--json", env=env)
    assert first.code == second.code == 0, first.err + second.err
    assert first.json() == second.json()
    rows = first.json()
    assert [r["id"] for r in rows] == ids
    assert [r["task_id"] for r in rows] == ["t-perm", "t-trans", "t-crash", "t-perm"]
    assert [r["category"] for r in rows] == ["permanent", "transient", "permanent", "permanent"]
    assert rows[1]["error"] == "registry" and rows[1]["attempts"] == 4 and rows[1]["dead_lettered_at"]
    assert "delivery_limit" in rows[2]["error"]

    human = await run_cli("dlq", "list", "--limit", "2", env=env)
    assert human.code == 0
    assert ids[0] in human.out and ids[1] in human.out and ids[2] not in human.out
    assert "the first 2 of 4" in human.out
    assert await depth(amqp, topology_spec.dead_queue) == 4


async def test_dlq_show_prints_the_full_message_and_unknown_ids_fail(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(amqp, declared, topology_spec)
    env = cli_env(amqp_url, topology_spec)
    shown = await run_cli("dlq", "show", ids[1], "--json", env=env)
    assert shown.code == 0, shown.err
    info = shown.json()
    assert info["headers"][ERROR] == "registry" and info["headers"][ATTEMPTS] == 4
    assert info["body"]["task_id"] == "t-trans" and info["properties"]["message_id"] == ids[1]

    human = await run_cli("dlq", "show", ids[2], env=env)
    assert human.code == 0 and "x-death" in human.out and "t-crash" in human.out

    unknown = await run_cli("dlq", "show", "no-such-letter", env=env)
    assert unknown.code == 1 and "no dead letter with id no-such-letter" in one_line_error(unknown)
    assert await depth(amqp, topology_spec.dead_queue) == 4


async def test_dlq_replay_moves_each_selected_letter_once(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(amqp, declared, topology_spec)
    env = cli_env(amqp_url, topology_spec)
    ran = await run_cli("dlq", "replay", ids[1], ids[2], "--json", env=env)
    assert ran.code == 0, ran.err
    report = ran.json()
    assert report["dry_run"] is False
    assert [(r["id"], r["task_id"], r["routing_key"]) for r in report["replayed"]] == [
        (ids[1], "t-trans", "containerized_workflow"),
        (ids[2], "t-crash", "containerized_workflow"),
    ]
    moved = await tasks_messages(amqp, topology_spec)
    assert [m.message_id for m in moved] == [ids[1], ids[2]]
    assert [m.headers[REPLAY_ID] for m in moved] == [r["replay_id"] for r in report["replayed"]]
    assert all(ATTEMPTS not in m.headers and ERROR not in m.headers and "x-death" not in m.headers for m in moved)

    assert await letter_ids(amqp, topology_spec) == [ids[0], ids[3]]
    again = await run_cli("dlq", "replay", ids[1], env=env)  # already moved: replayed once, not twice
    assert again.code == 1 and ids[1] in one_line_error(again)
    assert await depth(amqp, topology_spec.tasks_queue) == 0


async def test_dlq_replay_by_category_task_id_and_dry_run(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(amqp, declared, topology_spec)
    env = cli_env(amqp_url, topology_spec)
    dry = await run_cli("dlq", "replay", "--task-id", "t-perm", "--dry-run", env=env)
    assert dry.code == 0 and "would replay 2" in dry.out and ids[0] in dry.out and ids[3] in dry.out
    assert await depth(amqp, topology_spec.tasks_queue) == 0

    by_task = await run_cli("dlq", "replay", "--task-id", "t-perm", env=env)
    assert by_task.code == 0 and "replayed 2" in by_task.out
    by_category = await run_cli("dlq", "replay", "--category", "transient", "--json", env=env)
    assert [r["id"] for r in by_category.json()["replayed"]] == [ids[1]]
    assert [m.message_id for m in await tasks_messages(amqp, topology_spec)] == [ids[0], ids[3], ids[1]]
    assert await letter_ids(amqp, topology_spec) == [ids[2]]

    nothing = await run_cli("dlq", "replay", env=env)
    assert nothing.code == 2 and "exactly one of" in one_line_error(nothing)
    both = await run_cli("dlq", "replay", ids[2], "--all", env=env)
    assert both.code == 2
    typo = await run_cli("dlq", "replay", "--category", "transiant", env=env)  # not a silent "replayed 0"
    assert typo.code == 2 and "invalid choice" in typo.err
    assert await letter_ids(amqp, topology_spec) == [ids[2]]


async def test_dlq_purge_needs_confirmation(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(amqp, declared, topology_spec)
    env = cli_env(amqp_url, topology_spec)
    refused = await run_cli("dlq", "purge", "--all", env=env)
    assert refused.code == 2 and "--yes" in one_line_error(refused)
    assert await depth(amqp, topology_spec.dead_queue) == 4

    some = await run_cli("dlq", "purge", ids[0], ids[2], "--yes", "--json", env=env)
    assert some.code == 0 and some.json() == {"purged": 2, "ids": [ids[0], ids[2]]}
    assert await letter_ids(amqp, topology_spec) == [ids[1], ids[3]]

    unknown = await run_cli("dlq", "purge", "nope", "--yes", env=env)
    assert unknown.code == 1 and "nope" in one_line_error(unknown)

    everything = await run_cli("dlq", "purge", "--all", "--yes", env=env)
    assert everything.code == 0 and "purged 2" in everything.out
    empty = await run_cli("dlq", "list", env=env)
    assert empty.code == 0 and "is empty" in empty.out


async def test_dlq_show_never_prints_secrets_but_replay_keeps_them(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    parameters = {
        "container_image": "registry.example.com/app:1",
        "command": ["deploy"],
        "secrets": {"API_TOKEN": "s3cr3t-token-value"},
        "registry_auth": {"username": "ci", "password": "hunter2-password"},
    }
    letter_id = await put_dead_letter(declared, command(task_id="t-secret", parameters=parameters))
    env = cli_env(amqp_url, topology_spec)
    for args in (("--json",), ()):
        shown = await run_cli("dlq", "show", letter_id, *args, env=env)
        assert shown.code == 0, shown.err
        assert "s3cr3t-token-value" not in shown.out and "hunter2-password" not in shown.out
        assert "API_TOKEN" in shown.out and "***" in shown.out
    assert (await run_cli("dlq", "replay", letter_id, env=env)).code == 0
    [message] = await tasks_messages(amqp, topology_spec)
    assert b"s3cr3t-token-value" in message.body and b"hunter2-password" in message.body


async def test_dlq_errors_are_one_line(amqp_url: str, topology_spec: Topology) -> None:
    missing = await run_cli("dlq", "list", env=cli_env(amqp_url, topology_spec))
    assert missing.code == 1 and topology_spec.dead_queue in one_line_error(missing)
    unreachable = await run_cli("dlq", "list", env=cli_env("amqp://guest:guest@127.0.0.1:1/", topology_spec))
    assert unreachable.code == 3 and "cannot reach RabbitMQ" in one_line_error(unreachable)


async def test_dlq_purge_asks_on_a_terminal(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ids = await fill(amqp, declared, topology_spec)
    env = cli_env(amqp_url, topology_spec)
    for answer, kept in (("n\n", ids), ("\x04", ids), ("yes\n", ids[1:])):  # \x04: Ctrl-D
        main, terminal = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                *cli(), "dlq", "purge", ids[0], "--json", env=env, stdin=terminal, stdout=PIPE, stderr=PIPE
            )
            os.write(main, answer.encode())
            out, err = await asyncio.wait_for(process.communicate(), WAIT)
        finally:
            os.close(terminal)
            os.close(main)
        assert "Traceback" not in err.decode()
        assert err.decode().startswith("Delete 1 dead letter(s) for good? [y/N] ")
        if kept == ids:
            assert process.returncode == 2 and "nothing purged" in err.decode() and out == b""
        else:
            assert process.returncode == 0 and json.loads(out) == {"purged": 1, "ids": [ids[0]]}
        assert await letter_ids(amqp, topology_spec) == kept
