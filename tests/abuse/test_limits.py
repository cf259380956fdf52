"""Limits, enforced before anything runs: each over-limit command is one ``invalid`` dead letter
whose reason names the limit, its task (when readable) gets one failure result saying the same,
nothing reaches the engine, and the worker's memory and event loop stay bounded."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson

from consumer.worker import Worker
from tests.abuse.conftest import LoopLag
from tests.abuse.expect import (
    Broker,
    engine_untouched,
    exactly_one_invalid_dead_letter,
    invalid_dead_letters,
    still_works,
)
from tests.dagger_engine import TestEngine
from tests.support.worker_process import Observer, wait_until
from tests.test_worker import StartWorker

# The attacks blocked the loop for 13 s (10,000 operations) to minutes (100,000); refused up front,
# handling them takes milliseconds. The bound leaves room for a loaded 2-core CI machine.
MAX_LOOP_LAG = 2.0


def pipeline(task_id: str, operations: int, **parameters: Any) -> dict[str, Any]:
    ops = [{"from": {"address": "alpine:3.20"}}] + [
        {"with_env_variable": {"name": f"V{i}", "value": "x"}} for i in range(operations - 1)
    ]
    return {"task_id": task_id, "execution_type": "dagger_pipeline", "parameters": {"pipeline": ops, **parameters}}


def workflow(task_id: str, steps: int, **parameters: Any) -> dict[str, Any]:
    definition = {"steps": [{"name": f"s{i}", "run": ["true"]} for i in range(steps)]}
    return {
        "task_id": task_id,
        "execution_type": "containerized_workflow",
        "parameters": {"container_image": "alpine:3.20", "workflow_definition": definition, **parameters},
    }


def one_failure_result(observer: Observer, task_id: str, reason: str) -> None:
    (result,) = observer.results_for(task_id)
    assert not result.success and result.error_category is not None
    assert result.error_category.value == "invalid" and reason in (result.error or "")


async def test_an_oversized_message_is_refused_before_it_is_decoded(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine, loop_lag: LoopLag
) -> None:
    """A 5 MB, 100,000-operation pipeline (the issue: 6 GB and minutes of a blocked loop): refused
    for its size, in bounded memory."""
    worker = await start_worker()
    before = dagger_engine.request_count
    body = orjson.dumps(pipeline("huge", 100_000))
    tracemalloc.start()
    try:
        loop_lag.start()
        message_id = await broker.publish(body)
        size = len(broker.sent[message_id])
        assert size > 5_000_000
        await exactly_one_invalid_dead_letter(
            broker,
            observer,
            worker,
            message_id=message_id,
            reason=f"the message is {size} bytes: over the limit max_message_bytes = 1048576",
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The body itself (received, then copied into the dead letter) and nothing that grows with
    # what it asks for (it used to take gigabytes).
    assert peak < 10 * size, f"peak {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB message"
    assert loop_lag.worst < MAX_LOOP_LAG, f"the event loop was blocked {loop_lag.worst:.2f} s"
    engine_untouched(dagger_engine, before)
    assert observer.results == []  # not read, so no task id to answer
    await still_works(broker, observer)


async def test_counts_and_sizes_of_the_parameters_are_limited(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine, loop_lag: LoopLag
) -> None:
    worker = await start_worker()
    before = dagger_engine.request_count
    cases = {
        "ops": (
            pipeline("ops", 10_000),
            "the pipeline has 10000 operations: over the limit max_pipeline_operations = 1000",
        ),
        "steps": (workflow("steps", 101), "the workflow has 101 steps: over the limit max_workflow_steps = 100"),
        "env-count": (
            pipeline("env-count", 2, environment={f"E{i}": "1" for i in range(300)}),
            "over the limit max_environment_entries = 256",
        ),
        "env-bytes": (
            workflow("env-bytes", 1, inputs={"blob": "x" * 200_000}),
            "over the limit max_environment_bytes = 131072",
        ),
        "step-env": (
            {
                **workflow("step-env", 1),
                "parameters": {
                    "container_image": "alpine:3.20",
                    "workflow_definition": {
                        "steps": [{"name": "a", "run": "true", "environment": {f"E{i}": "1" for i in range(257)}}]
                    },
                },
            },
            "over the limit max_environment_entries = 256",
        ),
        "secret-count": (
            pipeline("secret-count", 2, secrets={f"S{i}": "v" for i in range(65)}),
            "there are 65 secrets: over the limit max_secret_entries = 64",
        ),
        "secret-bytes": (
            pipeline("secret-bytes", 2, secrets={"S": "v" * 70_000}),
            "over the limit max_secret_bytes = 65536",
        ),
    }
    encoded = [(orjson.dumps(body), body["execution_type"], reason) for body, reason in cases.values()]
    loop_lag.start()  # from here on the loop only publishes and waits: what blocks it is the worker
    reasons = {}
    for data, routing_key, reason in encoded:
        reasons[await broker.publish(data, routing_key)] = reason
    await invalid_dead_letters(broker, observer, worker, reasons=reasons)
    for task_id, (_, reason) in cases.items():
        one_failure_result(observer, task_id, reason)
    assert sorted(observer.result_keys) == sorted(f"{body['execution_type']}.failed" for body, _ in cases.values())
    engine_untouched(dagger_engine, before)
    assert loop_lag.worst < MAX_LOOP_LAG, f"the event loop was blocked {loop_lag.worst:.2f} s"
    await still_works(broker, observer)


async def test_limits_are_configuration(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine
) -> None:
    worker = await start_worker(max_pipeline_operations=3, max_message_bytes=4096)
    reasons = {
        await broker.publish(pipeline("four", 4)): "over the limit max_pipeline_operations = 3",
        await broker.publish(
            pipeline("big", 2, environment={"E": "x" * 5000})
        ): "over the limit max_message_bytes = 4096",
    }
    await invalid_dead_letters(broker, observer, worker, reasons=reasons)
    one_failure_result(observer, "four", "max_pipeline_operations = 3")
    await broker.publish(pipeline("three", 3))
    await observer.wait_for(lambda: observer.results_for("three"), 30, "the result within the limit")
    assert observer.results_for("three")[0].success


async def test_identifiers_are_short_printable_and_fit_amqp(
    start_worker: StartWorker, observer: Observer, broker: Broker, dagger_engine: TestEngine
) -> None:
    """Ids that used to run and then loop (every outcome publish failed on them) are refused as
    they come in: one dead letter each, at most one result, and the worker's effective prefetch
    does not grow (it used to, by one per such message)."""
    worker = await start_worker(max_concurrent_executions=1)
    before = dagger_engine.request_count

    def body(task_id: str, **fields: Any) -> dict[str, Any]:
        return {**pipeline(task_id, 2), **fields}

    cases = [
        (body("t" * 10_000), "Expected `str` of length <= 200 - at `$.task_id`", None),
        (body("bell\u0007id"), "at `$.task_id`", None),
        (body("space id"), "at `$.task_id`", None),
        (body("rtl\u202eid"), "task_id contains characters that are not printable", None),
        (body("é" * 150), "task_id is longer than 255 bytes in UTF-8", None),
        (body("long-reply", reply_to="r" * 300), "Expected `str` of length <= 255 - at `$.reply_to`", "long-reply"),
        (body("wide-reply", reply_to="é" * 200), "reply_to is longer than 255 bytes in UTF-8", "wide-reply"),
        (body("long-corr", correlation_id="c" * 300), "at `$.correlation_id`", "long-corr"),
        (body("wide-corr", correlation_id="é" * 200), "correlation_id is longer than 255 bytes", "wide-corr"),
    ]
    reasons = {}
    for message, reason, _ in cases:
        reasons[await broker.publish(message)] = reason
    await invalid_dead_letters(broker, observer, worker, reasons=reasons)
    answered = [task_id for _, _, task_id in cases if task_id]
    for task_id in answered:
        (result,) = observer.results_for(task_id)
        assert result.error_category is not None and result.error_category.value == "invalid"
    assert len(observer.results) == len(answered)  # an unreadable task id gets no result
    engine_untouched(dagger_engine, before)
    await assert_prefetch_is(worker, broker, observer, dagger_engine, 1)


async def assert_prefetch_is(
    worker: Worker, broker: Broker, observer: Observer, engine: TestEngine, capacity: int
) -> None:
    """Hold ``capacity + 2`` slow commands: the broker hands the worker exactly ``capacity``."""
    import threading

    from tests.dagger_engine import ExecOutcome, ExecRecord
    from tests.support.worker_process import command, publish_command

    release = threading.Event()

    def hold(_: ExecRecord) -> ExecOutcome:
        release.wait(30)
        return ExecOutcome(stdout="held\n")

    engine.on_exec(["hold"], hold)
    try:
        for i in range(capacity + 2):
            await publish_command(broker.channel, broker.spec, command(f"hold-{i}", "hold"))
        await wait_until(lambda: engine.current_execs == capacity, 30, "every slot busy")
        await observer.wait_heartbeats(3, 15, lambda b: b.worker_id == worker.worker_id)
        assert worker.in_flight == capacity, f"{worker.in_flight} messages delivered to a worker of capacity {capacity}"
    finally:
        release.set()
    await observer.wait_for(
        lambda: all(observer.results_for(f"hold-{i}") for i in range(capacity + 2)), 60, "the held commands"
    )
