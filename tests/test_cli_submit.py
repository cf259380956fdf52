"""`dagger-adapter submit`, run as a subprocess against real RabbitMQ."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from schemas import ExecutionCommand, ExecutionResult, decode
from tests.test_client_support import (
    WAIT,
    BrokerLink,
    Responder,
    cli_env,
    declared,
    depth,
    eventually,
    one_line_error,
    run_cli,
)
from topology import DeclaredTopology, Topology

__all__ = ["declared"]

YAML_COMMAND = """\
# a command as an operator writes it
task_id: from-yaml
execution_type: containerized_workflow
parameters:
  container_image: alpine:3.20
  command: [echo, hello]
"""


async def queued_commands(amqp: AbstractRobustConnection, spec: Topology) -> list[ExecutionCommand]:
    channel = await amqp.channel()
    queue = await channel.get_queue(spec.tasks_queue, ensure=False)
    out = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        assert message.message_id and message.content_type == "application/json"
        out.append(decode(message.body, ExecutionCommand))
    await channel.close()
    return out


async def test_submit_a_yaml_file_prints_the_task_id_and_queues_it(
    tmp_path: Path, amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    path = tmp_path / "command.yaml"
    path.write_text(YAML_COMMAND)
    ran = await run_cli("submit", str(path), env=cli_env(amqp_url, topology_spec))
    assert ran.code == 0, ran.err
    assert "from-yaml" in ran.out
    [queued] = await queued_commands(amqp, topology_spec)
    assert queued.task_id == "from-yaml" and queued.parameters["command"] == ["echo", "hello"]


async def test_submit_json_from_stdin_with_shortcuts(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    document = json.dumps({"parameters": {"module": "github.com/acme/ci", "function": "build"}})
    ran = await run_cli(
        "submit",
        "-",
        "--type",
        "dagger_pipeline",
        "--task-id",
        "from-stdin",
        "--json",
        env=cli_env(amqp_url, topology_spec),
        stdin=document,
    )
    assert ran.code == 0, ran.err
    # No trace context to carry (no TRACEPARENT, no OTEL exporter): no trace id.
    assert ran.json() == {"task_id": "from-stdin", "execution_type": "dagger_pipeline", "trace_id": None}
    [queued] = await queued_commands(amqp, topology_spec)
    assert (queued.task_id, queued.execution_type.value) == ("from-stdin", "dagger_pipeline")


async def test_a_document_without_task_id_gets_a_fresh_one(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    document = YAML_COMMAND.replace("task_id: from-yaml\n", "")
    env = cli_env(amqp_url, topology_spec)
    first = await run_cli("submit", "-", "--json", env=env, stdin=document)
    second = await run_cli("submit", "-", "--json", env=env, stdin=document)
    assert first.code == second.code == 0
    assert first.json()["task_id"] != second.json()["task_id"]
    assert [c.task_id for c in await queued_commands(amqp, topology_spec)] == [
        first.json()["task_id"],
        second.json()["task_id"],
    ]


async def test_submit_wait_prints_the_result_and_exits_0_on_success(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    env = cli_env(amqp_url, topology_spec)
    async with Responder(amqp, topology_spec) as responder:
        human = await run_cli("submit", "-", "--wait", "--timeout", str(WAIT), env=env, stdin=YAML_COMMAND)
        machine = await run_cli("submit", "-", "--wait", "--json", env=env, stdin=YAML_COMMAND)
    assert human.code == 0, human.err
    assert "from-yaml" in human.out and "succeeded" in human.out and '"echo": "from-yaml"' in human.out
    assert machine.code == 0, machine.err
    result = decode(machine.out.strip(), ExecutionResult)
    assert result.success and result.task_id == "from-yaml"
    # --wait sent a reply address and correlation id with the command.
    sent = decode(responder.seen[0].body, ExecutionCommand)
    assert (responder.seen[0].reply_to or "").startswith("amq.rabbitmq.reply-to.")  # direct reply-to
    assert sent.correlation_id == responder.seen[0].correlation_id


async def test_submit_wait_exits_1_when_the_task_failed(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    env = cli_env(amqp_url, topology_spec)
    async with Responder(amqp, topology_spec, succeed=False):
        human = await run_cli("submit", "-", "--wait", env=env, stdin=YAML_COMMAND)
        machine = await run_cli("submit", "-", "--wait", "--json", env=env, stdin=YAML_COMMAND)
    assert human.code == 1
    assert "failed" in human.out and "permanent" in human.out and "step exited with 1" in human.out
    assert machine.code == 1 and machine.json()["success"] is False


async def test_submit_wait_exits_124_when_no_result_comes(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ran = await run_cli(
        "submit", "-", "--wait", "--timeout", "0.5", env=cli_env(amqp_url, topology_spec), stdin=YAML_COMMAND
    )
    assert ran.code == 124
    assert "from-yaml" in one_line_error(ran) and "0.5 s" in ran.err
    assert await depth(amqp, topology_spec.tasks_queue) == 1  # it was submitted; nobody ran it


async def test_bad_files_exit_2_with_one_line(
    tmp_path: Path, amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    env = cli_env(amqp_url, topology_spec)
    missing = await run_cli("submit", str(tmp_path / "nope.yaml"), env=env)
    assert missing.code == 2 and "no such file" in one_line_error(missing)

    not_yaml = await run_cli("submit", "-", env=env, stdin="task_id: [unclosed\n")
    assert not_yaml.code == 2 and "neither valid JSON nor valid YAML" in one_line_error(not_yaml)

    no_image = await run_cli("submit", "-", env=env, stdin=YAML_COMMAND.replace("  container_image: alpine:3.20\n", ""))
    assert no_image.code == 2 and "container_image" in one_line_error(no_image)

    bad_type = await run_cli("submit", "-", env=env, stdin=YAML_COMMAND.replace("containerized_workflow", "shell"))
    assert bad_type.code == 2 and "execution_type" in one_line_error(bad_type)

    empty = await run_cli("submit", "-", env=env, stdin="")
    assert empty.code == 2 and "stdin is empty" in one_line_error(empty)

    a_list = await run_cli("submit", "-", env=env, stdin="- task_id: a\n- task_id: b\n")
    assert a_list.code == 2 and "must hold a mapping" in one_line_error(a_list)

    usage = await run_cli("submit", env=env)
    assert usage.code == 2 and "Traceback" not in usage.err
    for timeout in ("nan", "inf", "0"):
        bad_timeout = await run_cli("submit", "-", "--wait", "--timeout", timeout, env=env, stdin=YAML_COMMAND)
        assert bad_timeout.code == 2 and "--timeout" in bad_timeout.err and "Traceback" not in bad_timeout.err
    assert await depth(amqp, topology_spec.tasks_queue) == 0


async def test_broker_unreachable_or_refusing_credentials_is_one_line_exit_3(
    amqp_url: str, topology_spec: Topology
) -> None:
    unreachable = await run_cli(
        "submit",
        "-",
        env=cli_env("amqp://guest:guest@127.0.0.1:1/", topology_spec),
        stdin=YAML_COMMAND,
    )
    assert unreachable.code == 3 and "cannot reach RabbitMQ" in one_line_error(unreachable)

    wrong = amqp_url.replace("guest:guest@", "guest:not-the-password@")
    assert wrong != amqp_url
    refused = await run_cli("submit", "-", env=cli_env(wrong, topology_spec), stdin=YAML_COMMAND)
    line = one_line_error(refused)
    assert refused.code == 3 and "refused the credentials" in line
    assert "not-the-password" not in refused.err + refused.out

    no_vhost = await run_cli(
        "submit", "-", env=cli_env(amqp_url.rstrip("/") + "/no-such-vhost", topology_spec), stdin=YAML_COMMAND
    )
    assert no_vhost.code == 3 and "virtual host" in one_line_error(no_vhost)

    # aio-pika would retry a malformed URL forever: refused at once, without echoing it.
    for url in ("guest:secret-pw@127.0.0.1:5672", "amqp://guest:secret-pw@127.0.0.1:notaport/"):
        malformed = await run_cli("submit", "-", env=cli_env(url, topology_spec), stdin=YAML_COMMAND, timeout=WAIT)
        assert malformed.code == 2 and "AMQP URL" in one_line_error(malformed)
        assert "secret-pw" not in malformed.err


async def test_a_missing_topology_is_one_line_exit_1(amqp_url: str, topology_spec: Topology) -> None:
    ran = await run_cli("submit", "-", env=cli_env(amqp_url, topology_spec), stdin=YAML_COMMAND)
    assert ran.code == 1 and "topology declare" in one_line_error(ran)


async def test_submit_wait_fails_at_once_when_the_connection_is_lost(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    async with BrokerLink(amqp_url) as link:
        waiting = asyncio.create_task(
            run_cli("submit", "-", "--wait", env=cli_env(link.url, topology_spec), stdin=YAML_COMMAND)
        )
        await eventually(lambda: depth(amqp, topology_spec.tasks_queue), what="the command to be queued")
        await link.cut()
        ran = await asyncio.wait_for(waiting, WAIT)  # not the default --timeout of 600 s
    assert ran.code == 3  # the broker was lost, not the task: distinct from a failed task's 1
    assert "lost the connection to RabbitMQ while waiting for the result of task from-yaml" in one_line_error(ran)
