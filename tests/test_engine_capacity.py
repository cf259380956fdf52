"""The engine connection holds as many requests at once as the worker runs executions: more
executions than the SDK's default HTTP pool (100 connections) all reach the engine together,
spread over pools small enough that a request costs the same however many are in flight; and an
execution reads its exec's results in one engine request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from consumer.engine import ShardedTransport
from tests.dagger_engine import ExecOutcome, TestEngine
from tests.dagger_engine.records import ExecRecord
from tests.test_adapter_support import adapter_config, pipeline_command, started

EXECUTIONS = 150  # above httpx's default pool of 100
ALL_RUNNING_TIMEOUT = 30.0


async def test_more_executions_than_the_default_http_pool_reach_the_engine_together(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    # Each exec is held at the engine until all of them are running (or the timeout: then the
    # peak below tells how many got there together).
    arrived, lock, all_running = 0, threading.Lock(), threading.Event()

    def hold(_: ExecRecord) -> ExecOutcome:
        nonlocal arrived
        with lock:
            arrived += 1
            if arrived == EXECUTIONS:
                all_running.set()
        all_running.wait(ALL_RUNNING_TIMEOUT)
        return ExecOutcome(stdout="held\n")

    dagger_engine.on_exec(["hold"], hold)
    config = adapter_config(tmp_path, max_concurrent_executions=EXECUTIONS, caching_enabled=False)
    async with started(config) as adapter:
        results = await asyncio.gather(
            *(
                adapter.execute(
                    pipeline_command(
                        f"cap-{i}",
                        pipeline=[{"from": {"address": "alpine:3.20"}}, {"with_exec": {"args": ["hold", str(i)]}}],
                    )
                )
                for i in range(EXECUTIONS)
            )
        )
    assert all(r.success for r in results), next(r.error for r in results if not r.success)
    assert dagger_engine.max_concurrent_execs == EXECUTIONS


async def test_an_execution_reads_its_exec_results_in_one_engine_request(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    pipeline = [{"from": {"address": "alpine:3.20"}}, {"with_exec": {"args": ["echo", "hi"]}}]
    async with started(adapter_config(tmp_path, caching_enabled=False)) as adapter:
        await adapter.execute(pipeline_command("warm", pipeline=pipeline))  # connects, introspects
        before = dagger_engine.request_count
        result = await adapter.execute(pipeline_command("counted", pipeline=pipeline))
    assert result.success and result.result["stdout"] == "hi\n" and result.result["exit_code"] == 0
    assert dagger_engine.request_count - before == 1


async def test_requests_spread_over_the_pools_and_count_until_their_response_is_closed() -> None:
    seen: list[int] = []

    def shard(number: int) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(number)
            return httpx.Response(200, stream=_Body())  # streamed, like a response off the network

        return httpx.MockTransport(answer)

    async with httpx.AsyncClient(transport=ShardedTransport([shard(0), shard(1), shard(2)])) as client:
        # Three streamed requests held open: each lands on a pool with none in flight.
        held = [await client.send(client.build_request("POST", "http://engine/query"), stream=True) for _ in range(3)]
        assert sorted(seen) == [0, 1, 2]
        await held[1].aclose()  # pool 1 is free again: the next request goes there
        await client.post("http://engine/query")
        assert seen[-1] == 1
        for response in held[::2]:
            await response.aclose()


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"{}"
