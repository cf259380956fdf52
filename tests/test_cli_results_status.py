"""`dagger-adapter results` and `status`, run as subprocesses against real RabbitMQ."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from schemas import ExecutionResult, ExecutionType, WorkerHeartbeat, encode
from tests.test_client_support import Running, cli_env, command, declared, run_cli
from topology import DeclaredTopology, Topology

__all__ = ["declared"]

WORKFLOW, PIPELINE = ExecutionType.CONTAINERIZED_WORKFLOW, ExecutionType.DAGGER_PIPELINE


async def publish_result(declared: DeclaredTopology, task_id: str, success: bool, kind: ExecutionType) -> None:
    result = ExecutionResult(
        task_id=task_id,
        success=success,
        execution_type=kind,
        error=None if success else "step 'test' exited with 2",
        worker_id="w-1",
        duration_ms=1500,
    )
    await declared.results.publish(
        aio_pika.Message(encode(result), content_type="application/json"),
        routing_key=declared.spec.result_routing_key(kind.value, result.outcome.value),
    )


async def heartbeat(declared: DeclaredTopology, worker_id: str, load: int, capacity: int, ready: bool = True) -> None:
    beat = WorkerHeartbeat(
        worker_id=worker_id, ready=ready, current_load=load, capacity=capacity, circuit="closed", version="0.1.0"
    )
    await declared.status.publish(aio_pika.Message(encode(beat)), routing_key=declared.spec.heartbeat_routing_key)


async def test_results_follow_streams_json_lines_until_ctrl_c(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    running = await Running.start(
        "results", "--follow", "--outcome", "failed", "--json", env=cli_env(amqp_url, topology_spec)
    )
    try:
        await running.stderr_line("listening for results")
        await publish_result(declared, "ok-1", True, WORKFLOW)
        await publish_result(declared, "bad-1", False, WORKFLOW)
        await publish_result(declared, "bad-2", False, PIPELINE)
        first = json.loads(await running.stdout_line())
        second = json.loads(await running.stdout_line())
        ran = await running.interrupt()
    finally:
        running.kill()
    assert [(first["task_id"], first["success"]), (second["task_id"], second["success"])] == [
        ("bad-1", False),
        ("bad-2", False),
    ]
    assert ran.code == 0 and "Traceback" not in ran.err and ran.out == ""


async def test_results_count_type_and_outcome_filters_in_human_form(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    running = await Running.start(
        "results",
        "--type",
        "dagger_pipeline",
        "--outcome",
        "failed",
        "--count",
        "1",
        "--for",
        "30",
        env=cli_env(amqp_url, topology_spec),
    )
    try:
        await running.stderr_line("[dagger_pipeline.failed]")
        await publish_result(declared, "wf-bad", False, WORKFLOW)
        await publish_result(declared, "pipe-ok", True, PIPELINE)
        await publish_result(declared, "pipe-bad", False, PIPELINE)
        ran = await running.finish()
    finally:
        running.kill()
    assert ran.code == 0, ran.err
    [line] = ran.lines()
    assert "pipe-bad" in line and "failed" in line and "exited with 2" in line and "1.5 s" in line


async def test_results_task_id_filter_and_count_not_reached_exits_124(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    running = await Running.start(
        "results", "--task-id", "mine", "--count", "2", "--for", "3", "--json", env=cli_env(amqp_url, topology_spec)
    )
    try:
        await running.stderr_line("listening for results")
        await publish_result(declared, "other", True, WORKFLOW)
        await publish_result(declared, "mine", True, WORKFLOW)
        ran = await running.finish()
    finally:
        running.kill()
    assert ran.code == 124
    assert [json.loads(line)["task_id"] for line in ran.lines()] == ["mine"]
    assert "1 of 2 result(s)" in ran.err


async def test_results_without_events_ends_after_its_window(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    ran = await run_cli("results", "--for", "0.5", env=cli_env(amqp_url, topology_spec))
    assert ran.code == 0 and ran.out == ""


async def test_status_shows_workers_from_heartbeats_and_queue_depths(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    await declared.tasks.publish(aio_pika.Message(encode(command())), routing_key="containerized_workflow")
    env = cli_env(amqp_url, topology_spec)
    as_json = await Running.start("status", "--listen", "3", "--json", env=env)
    human = await Running.start("status", "--listen", "3", env=env)
    try:
        await as_json.stderr_line("listening for worker heartbeats")
        await human.stderr_line("listening for worker heartbeats")
        await heartbeat(declared, "worker-a", 1, 4)
        await heartbeat(declared, "worker-b", 0, 2, ready=False)
        await heartbeat(declared, "worker-a", 3, 4)  # the latest heartbeat wins
        doc_run, human_run = await as_json.finish(), await human.finish()
    finally:
        as_json.kill()
        human.kill()
    assert doc_run.code == 0, doc_run.err
    doc = doc_run.json()
    workers = {w["worker_id"]: w for w in doc["workers"]}
    assert set(workers) == {"worker-a", "worker-b"}
    assert (workers["worker-a"]["current_load"], workers["worker-a"]["capacity"], workers["worker-a"]["ready"]) == (
        3,
        4,
        True,
    )
    assert workers["worker-b"]["ready"] is False and workers["worker-a"]["last_seen"]
    assert doc["queues"][topology_spec.tasks_queue] == 1
    assert doc["queues"][topology_spec.dead_queue] == 0

    assert human_run.code == 0, human_run.err
    assert "worker-a" in human_run.out and "3/4" in human_run.out and "worker-b" in human_run.out
    assert topology_spec.tasks_queue in human_run.out


async def test_status_watch_refreshes_until_ctrl_c(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    env = cli_env(amqp_url, topology_spec)
    as_json = await Running.start("status", "--watch", "--interval", "0.2", "--json", env=env)
    human = await Running.start("status", "--watch", "--interval", "0.2", env=env)
    try:
        await as_json.stderr_line("listening for worker heartbeats")
        await human.stderr_line("listening for worker heartbeats")
        assert json.loads(await as_json.stdout_line())["workers"] == []
        await heartbeat(declared, "late-worker", 2, 8)
        while not (doc := json.loads(await as_json.stdout_line()))["workers"]:
            pass  # each refresh is a new line; wait for the one that heard the heartbeat
        while "late-worker" not in (line := await human.stdout_line()):
            pass  # off a terminal, each refresh is printed anew
        ran, human_ran = await as_json.interrupt(), await human.interrupt()
    finally:
        as_json.kill()
        human.kill()
    assert doc["workers"][0]["worker_id"] == "late-worker" and doc["workers"][0]["capacity"] == 8
    assert "2/8" in line
    assert ran.code == human_ran.code == 0 and "Traceback" not in ran.err + human_ran.err


async def test_status_without_a_topology_is_one_line_exit_1(amqp_url: str, topology_spec: Topology) -> None:
    ran = await run_cli("status", "--listen", "0.5", env=cli_env(amqp_url, topology_spec))
    assert ran.code == 1 and "Traceback" not in ran.err and "topology declare" in ran.err


async def test_status_answers_at_once_from_recent_heartbeats(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    # Heartbeats every minute: listening for the next one would take a minute. The heartbeats
    # stream already holds the recent ones, so status needs no wait at all.
    env = cli_env(amqp_url, topology_spec, DAGGER_ADAPTER_HEARTBEAT_INTERVAL_SECONDS="60")
    await heartbeat(declared, "worker-early", 2, 4)
    await heartbeat(declared, "worker-early", 1, 4)  # the latest wins
    gone = WorkerHeartbeat(
        worker_id="worker-gone", ready=True, current_load=0, capacity=4, at=datetime.now(UTC) - timedelta(hours=1)
    )
    await declared.status.publish(aio_pika.Message(encode(gone)), routing_key=declared.spec.heartbeat_routing_key)
    as_json = await run_cli("status", "--json", env=env, timeout=10)
    human = await run_cli("status", env=env, timeout=10)
    assert as_json.code == 0, as_json.err
    workers = {w["worker_id"]: w for w in as_json.json()["workers"]}
    assert set(workers) == {"worker-early"}  # an hour-old beat is not a live worker
    assert workers["worker-early"]["current_load"] == 1 and not workers["worker-early"]["stale"]
    assert human.code == 0 and "worker-early" in human.out and "1/4" in human.out
    assert "listening" not in human.err


async def test_status_tables_are_not_cut_when_piped(
    amqp_url: str, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    long_id = "worker-" + "x" * 180 + "-end"
    await heartbeat(declared, long_id, 1, 4)
    env = {k: v for k, v in cli_env(amqp_url, topology_spec).items() if k != "COLUMNS"}
    ran = await run_cli("status", env=env, timeout=10)
    assert ran.code == 0, ran.err
    (row,) = [line for line in ran.out.splitlines() if long_id in line]  # the whole id, on one line
    assert "1/4" in row


async def test_status_without_the_heartbeats_stream_listens_for_an_interval_instead(
    amqp_url: str, amqp: AbstractRobustConnection, topology_spec: Topology, declared: DeclaredTopology
) -> None:
    # A topology declared by an older version has no heartbeats stream: status still works, the old way.
    channel = await amqp.channel()
    await channel.queue_delete(topology_spec.heartbeats_queue)
    await channel.close()
    env = cli_env(amqp_url, topology_spec, DAGGER_ADAPTER_HEARTBEAT_INTERVAL_SECONDS="1")
    running = await Running.start("status", "--json", env=env)
    try:
        told = await running.stderr_line("no heartbeats stream")
        await running.stderr_line("listening for worker heartbeats")
        await heartbeat(declared, "worker-live", 0, 2)
        ran = await running.finish()
    finally:
        running.kill()
    assert ran.code == 0, ran.err
    assert topology_spec.heartbeats_queue in told
    assert [w["worker_id"] for w in ran.json()["workers"]] == ["worker-live"]
