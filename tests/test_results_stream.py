"""The results stream: every result is kept (by age and size), so a subscriber that was down
reads what it missed — from the client and from the CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import aio_pika
import pytest

from consumer.client import ExecutionClient
from schemas import ExecutionResult, ExecutionType, encode
from tests.test_client_support import cli_env, declared, run_cli
from topology import DeclaredTopology, Topology

__all__ = ["declared"]

WORKFLOW = ExecutionType.CONTAINERIZED_WORKFLOW


async def publish(declared: DeclaredTopology, task_id: str, success: bool = True) -> None:
    result = ExecutionResult(task_id=task_id, success=success, execution_type=WORKFLOW, worker_id="w-1")
    await declared.results.publish(
        aio_pika.Message(encode(result), content_type="application/json", message_id=f"{task_id}:1"),
        routing_key=declared.spec.result_routing_key(WORKFLOW.value, result.outcome.value),
    )


async def take(events: object, n: int) -> list[ExecutionResult]:
    return [await asyncio.wait_for(anext(events), 15) for _ in range(n)]  # type: ignore[call-overload]


def test_the_stream_is_declared_with_its_retention() -> None:
    spec = Topology(prefix="p", results_stream_max_age="12h", results_stream_max_bytes=1000)
    (history,) = [q for q in spec.queues if q.name == "p.results.history"]
    assert history.arguments == {"x-queue-type": "stream", "x-max-age": "12h", "x-max-length-bytes": 1000}
    assert history.bindings == (("p.results", "#"),)
    with pytest.raises(ValueError, match="max age"):
        Topology(results_stream_max_age="a week")


async def test_a_subscriber_that_was_down_reads_the_results_it_missed(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    for task_id, success in (("missed-1", True), ("missed-2", False), ("missed-3", True)):
        await publish(declared, task_id, success)  # nobody is listening

    async with ExecutionClient.connect(amqp_url, topology_spec) as client:
        async with client.results(since="first") as events:
            assert [r.task_id for r in await take(events, 3)] == ["missed-1", "missed-2", "missed-3"]
            await publish(declared, "live-4")  # and then it goes on live
            assert [r.task_id for r in await take(events, 1)] == ["live-4"]
        async with client.results(since=timedelta(hours=1), outcome="failed") as events:
            assert [r.task_id for r in await take(events, 1)] == ["missed-2"]
        with pytest.raises(ValueError, match="since"):
            client.results(since="yesterday")  # type: ignore[arg-type]


async def test_the_cli_reads_the_stream_from_the_start_or_a_time(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    for task_id in ("old-1", "old-2"):
        await publish(declared, task_id)
    env = cli_env(amqp_url, topology_spec)
    for start in (["--from-start"], ["--since", "1h"]):
        ran = await run_cli("results", *start, "--json", "--count", "2", "--for", "20", env=env)
        assert ran.code == 0, ran.err
        assert [json.loads(line)["task_id"] for line in ran.out.splitlines()] == ["old-1", "old-2"]
        assert "results stream" in ran.err
    bad = await run_cli("results", "--since", "last tuesday", env=env)
    assert bad.code == 2 and "not a duration" in bad.err
