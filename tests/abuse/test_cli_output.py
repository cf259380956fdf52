"""The operator's terminal is not the sender's: text from messages (task ids, errors, worker
ids) is never read as rich markup and its control characters are shown escaped."""

from __future__ import annotations

import aio_pika

from schemas import ExecutionResult, ExecutionType, WorkerHeartbeat, encode
from tests.test_client_support import Running, cli_env, command, declared, put_dead_letter, run_cli
from topology import DeclaredTopology, Topology

__all__ = ["declared"]

MARKUP_ID = "[/bold]"  # a valid task id: printable, no whitespace
HOSTILE_ERROR = "boom \x1b[2J\x1b]0;owned\x07 [red]not red[/red] \u202egnp.exe"


def assert_shown_plainly(output: str) -> None:
    assert MARKUP_ID in output
    assert "\x1b" not in output and "\x07" not in output and "\u202e" not in output
    assert "\\x1b[2J" in output and "\\u202e" in output


async def test_dlq_list_and_show_print_message_text_as_it_is(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    letter_id = await put_dead_letter(declared, command(task_id=MARKUP_ID), error=HOSTILE_ERROR)
    env = cli_env(amqp_url, topology_spec)
    listed = await run_cli("dlq", "list", env=env)
    assert listed.code == 0, listed.err
    assert_shown_plainly(listed.out)
    assert "[red]not red[/red]" in listed.out
    shown = await run_cli("dlq", "show", letter_id, env=env)
    assert shown.code == 0, shown.err
    assert_shown_plainly(shown.out)


async def test_results_follow_prints_message_text_as_it_is(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    running = await Running.start("results", "--follow", "--count", "1", env=cli_env(amqp_url, topology_spec))
    try:
        await running.stderr_line("listening for results")
        result = ExecutionResult(
            task_id=MARKUP_ID,
            success=False,
            error=HOSTILE_ERROR,
            execution_type=ExecutionType.DAGGER_PIPELINE,
            worker_id="w-[bold]",
        )
        await declared.results.publish(
            aio_pika.Message(encode(result)), routing_key=declared.spec.result_routing_key("dagger_pipeline", "failed")
        )
        ran = await running.finish()
    finally:
        running.kill()
    assert ran.code == 0, ran.err
    assert_shown_plainly(ran.out)
    assert "w-[bold]" in ran.out


async def test_status_prints_worker_ids_as_they_are(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    running = await Running.start("status", "--listen", "3", env=cli_env(amqp_url, topology_spec))
    try:
        await running.stderr_line("listening for worker heartbeats")
        beat = WorkerHeartbeat(
            worker_id=f"{MARKUP_ID}\x1b[2J", ready=True, current_load=0, capacity=1, circuit="[/]", version="\u202e1"
        )
        await declared.status.publish(aio_pika.Message(encode(beat)), routing_key=declared.spec.heartbeat_routing_key)
        ran = await running.finish()
    finally:
        running.kill()
    assert ran.code == 0, ran.err
    assert f"{MARKUP_ID}\\x1b[2J" in ran.out and "\x1b" not in ran.out and "\\u202e1" in ran.out
