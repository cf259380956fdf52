"""The operator's loop with a real worker: submit, a failure lands in the dead-letter queue,
`dlq list` shows it, `dlq replay` sends it back once, and the worker runs it again.

The worker runs in this process (``consumer.worker.Worker``) on the test engine through the
real dagger-io SDK; every `dagger-adapter` command runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumer.client import ExecutionClient
from consumer.config import load_config
from consumer.worker import Worker
from schemas import WorkerHeartbeat
from tests.dagger_engine import ExecOutcome, ExecRecord, TestEngine
from tests.support.worker_process import worker_settings
from tests.test_client_support import WAIT, cli_env, declared, run_cli
from topology import DeclaredTopology, Topology

__all__ = ["declared"]

DEPLOY = """\
task_id: e2e-deploy
execution_type: containerized_workflow
parameters:
  container_image: alpine:3.20
  command: [deploy, prod]
"""


@pytest.fixture
async def worker(
    amqp_url: str,
    valkey_url: str,
    topology_spec: Topology,
    declared: DeclaredTopology,
    dagger_engine: TestEngine,
    tmp_path: Path,
) -> AsyncIterator[Worker]:
    settings = worker_settings(
        amqp_url=amqp_url,
        valkey_url=valkey_url,
        spec=topology_spec,
        work_dir=tmp_path,
        engine_env=dagger_engine.session_env(),
        max_concurrent_executions=2,
    )
    worker = Worker(load_config(env=settings))
    async with ExecutionClient.connect(amqp_url, topology_spec) as client, client.status(tasks=False) as beats:
        running = asyncio.create_task(worker.run())
        async for beat in beats:  # ready once it says so in a heartbeat
            assert not running.done(), running.exception()
            if isinstance(beat, WorkerHeartbeat) and beat.worker_id == worker.worker_id and beat.ready:
                break
    try:
        yield worker
    finally:
        worker.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 30)


async def test_failed_task_is_listed_replayed_once_and_then_runs(
    amqp_url: str, topology_spec: Topology, dagger_engine: TestEngine, worker: Worker
) -> None:
    env = cli_env(amqp_url, topology_spec)
    fixed = threading.Event()  # the engine answers from its own thread

    def deploy(_: ExecRecord) -> ExecOutcome:
        if fixed.is_set():
            return ExecOutcome(stdout="deployed\n")
        return ExecOutcome(stderr="registry said no\n", exit_code=3)

    dagger_engine.on_exec(["deploy"], deploy)

    ok = await run_cli(
        "submit", "-", "--wait", "--task-id", "e2e-echo", env=env, stdin=DEPLOY.replace("deploy,", "echo,")
    )
    assert ok.code == 0 and "e2e-echo" in ok.out and "succeeded" in ok.out, ok.err

    failed = await run_cli("submit", "-", "--wait", "--timeout", "60", env=env, stdin=DEPLOY)
    assert failed.code == 1, failed.err
    assert "e2e-deploy" in failed.out and "failed" in failed.out
    assert "task e2e-deploy: running" in failed.err  # progress, as lines when stderr is no terminal

    listed = await run_cli("dlq", "list", "--json", env=env)
    assert listed.code == 0, listed.err
    [letter] = listed.json()
    assert letter["task_id"] == "e2e-deploy" and letter["category"] == "permanent"
    assert letter["attempts"] == 1 and letter["worker_id"] == worker.worker_id

    fixed.set()
    async with (
        ExecutionClient.connect(amqp_url, topology_spec) as client,
        client.results(task_id="e2e-deploy") as results,
    ):
        replayed = await run_cli("dlq", "replay", letter["id"], env=env)
        assert replayed.code == 0 and "replayed 1" in replayed.out, replayed.err
        result = await asyncio.wait_for(anext(results), WAIT * 2)
    assert result.success and result.worker_id == worker.worker_id and result.attempts == 1
    assert [r.exit_code for r in dagger_engine.execs if r.args[:1] == ["deploy"]] == [3, 0]

    empty = await run_cli("dlq", "list", "--json", env=env)
    assert empty.json() == []

    status = await run_cli("status", "--listen", "1.5", "--json", env=env)
    assert status.code == 0, status.err
    [seen] = [w for w in status.json()["workers"] if w["worker_id"] == worker.worker_id]
    assert seen["capacity"] == 2 and seen["ready"] is True
    assert status.json()["queues"][topology_spec.tasks_queue] == 0
