"""The engine connection holds as many requests at once as the worker runs executions: more
executions than the SDK's default HTTP pool (100 connections) all reach the engine together,
and an execution reads its exec's results in two engine requests."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

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


async def test_an_execution_reads_its_exec_results_in_two_engine_requests(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    pipeline = [{"from": {"address": "alpine:3.20"}}, {"with_exec": {"args": ["echo", "hi"]}}]
    async with started(adapter_config(tmp_path, caching_enabled=False)) as adapter:
        await adapter.execute(pipeline_command("warm", pipeline=pipeline))  # connects, introspects
        before = dagger_engine.request_count
        result = await adapter.execute(pipeline_command("counted", pipeline=pipeline))
    assert result.success and result.result["stdout"] == "hi\n" and result.result["exit_code"] == 0
    assert dagger_engine.request_count - before == 2
