"""The engine circuit breaker: opens on repeated engine failures only, fails fast while
open, lets a probe through after the reset time, closes when the engine answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dagger
import gql
import pytest
from dagger._exceptions import QueryErrorValue

from consumer.breaker import EngineCircuitBreaker
from consumer.errors import ExecutionFailure, classify
from schemas import ErrorCategory
from tests.dagger_engine import TestEngine
from tests.test_adapter_support import adapter_config, started, workflow_command


async def engine_down() -> None:
    raise ExecutionFailure(ErrorCategory.TRANSIENT, "engine unreachable")


async def step_failed() -> None:
    raise ExecutionFailure(ErrorCategory.PERMANENT, "step exited with code 1")


async def engine_ok() -> str:
    return "ok"


async def expect_failure(breaker: EngineCircuitBreaker, fn) -> ExecutionFailure:  # type: ignore[no-untyped-def]
    with pytest.raises(ExecutionFailure) as info:
        await breaker.call(fn)
    return info.value


async def wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_opens_after_the_threshold_of_engine_failures_and_then_fails_fast() -> None:
    breaker = EngineCircuitBreaker(failure_threshold=3, reset_seconds=60)
    for _ in range(2):
        assert (await expect_failure(breaker, engine_down)).message == "engine unreachable"
    assert breaker.state == "closed"
    tripping = await expect_failure(breaker, engine_down)
    assert tripping.category is ErrorCategory.TRANSIENT and "circuit breaker opened" in tripping.message
    assert breaker.state == "open"

    called = False

    async def must_not_run() -> None:
        nonlocal called
        called = True

    rejected = await expect_failure(breaker, must_not_run)
    assert not called
    assert rejected.category is ErrorCategory.TRANSIENT and rejected.circuit_open
    assert "circuit" in rejected.message


async def test_step_failures_do_not_count_and_reset_the_count() -> None:
    breaker = EngineCircuitBreaker(failure_threshold=2, reset_seconds=60)
    for _ in range(5):
        await expect_failure(breaker, step_failed)
    assert breaker.state == "closed"
    await expect_failure(breaker, engine_down)
    await expect_failure(breaker, step_failed)  # the engine answered: the streak is broken
    await expect_failure(breaker, engine_down)
    assert breaker.state == "closed" and breaker.failure_count == 1


async def test_half_open_probe_closes_or_reopens() -> None:
    states: list[str] = []
    breaker = EngineCircuitBreaker(failure_threshold=1, reset_seconds=0.2)
    breaker.add_listener(states.append)
    await expect_failure(breaker, engine_down)
    assert breaker.state == "open"

    async def reset_elapsed() -> bool:
        try:
            await breaker.call(engine_down)
        except ExecutionFailure as failure:
            return not failure.circuit_open  # the probe reached the engine (and failed again)
        return True

    await wait_for(reset_elapsed)
    assert breaker.state == "open" and states == ["open", "half-open", "open"]

    async def probe_ok() -> bool:
        try:
            return await breaker.call(engine_ok) == "ok"
        except ExecutionFailure:
            return False

    await wait_for(probe_ok)
    assert breaker.state == "closed"
    assert states == ["open", "half-open", "open", "half-open", "closed"]


async def test_a_failing_listener_does_not_break_the_breaker() -> None:
    breaker = EngineCircuitBreaker(failure_threshold=1, reset_seconds=60)

    def broken(state: str) -> None:
        raise RuntimeError("listener bug")

    seen: list[str] = []
    breaker.add_listener(broken)
    breaker.add_listener(seen.append)
    await expect_failure(breaker, engine_down)
    assert seen == ["open"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_reset_time_is_measured_on_the_given_monotonic_clock() -> None:
    clock = FakeClock()
    breaker = EngineCircuitBreaker(failure_threshold=1, reset_seconds=30, clock=clock)
    await expect_failure(breaker, engine_down)
    clock.now += 29.9
    assert (await expect_failure(breaker, engine_ok)).circuit_open  # not yet: fail fast
    assert breaker.state == "open"
    clock.now += 0.1
    assert await breaker.call(engine_ok) == "ok"
    assert breaker.state == "closed" and breaker.failure_count == 0


async def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = EngineCircuitBreaker(failure_threshold=1, reset_seconds=1, clock=clock)
    await expect_failure(breaker, engine_down)
    clock.now += 1
    release = asyncio.Event()
    calls = 0

    async def slow_engine() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "ok"

    probe = asyncio.create_task(breaker.call(slow_engine))
    await asyncio.sleep(0)
    assert breaker.state == "half-open"
    others = await asyncio.gather(*(breaker.call(slow_engine) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, ExecutionFailure) and o.circuit_open for o in others)
    release.set()
    assert await probe == "ok"
    assert calls == 1 and breaker.state == "closed"


async def test_a_cancelled_call_neither_counts_nor_blocks_the_next_probe() -> None:
    clock = FakeClock()
    breaker = EngineCircuitBreaker(failure_threshold=1, reset_seconds=1, clock=clock)
    await expect_failure(breaker, engine_down)
    clock.now += 1

    async def hangs() -> None:
        await asyncio.Event().wait()

    probe = asyncio.create_task(breaker.call(hangs))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert breaker.state == "half-open"
    assert await breaker.call(engine_ok) == "ok"  # the next call is the probe
    assert breaker.state == "closed"


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        EngineCircuitBreaker(failure_threshold=0, reset_seconds=1)
    with pytest.raises(ValueError):
        EngineCircuitBreaker(failure_threshold=1, reset_seconds=-1)


# --- through the adapter, against the engine ----------------------------------------------


def echo(task_id: str) -> object:
    return workflow_command(task_id, container_image="alpine:3.20", command=["echo", task_id])


async def test_adapter_circuit_opens_on_an_unreachable_engine_and_closes_after_a_probe(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    config = adapter_config(tmp_path, breaker_failure_threshold=2, breaker_reset_seconds=0.3)
    async with started(config) as adapter:
        states: list[str] = []
        adapter.add_circuit_listener(states.append)
        dagger_engine.refuse()
        for n in range(2):
            result = await adapter.execute(echo(f"down-{n}"), in_process_retries=False)
            assert result.error_category == ErrorCategory.TRANSIENT
        assert adapter.circuit_state == "open"
        status = adapter.get_status()
        assert status.circuit == "open" and not status.ready

        dagger_engine.accept()
        before = dagger_engine.request_count
        fast = await adapter.execute(echo("while-open"), in_process_retries=False)
        assert not fast.success and fast.error_category == ErrorCategory.TRANSIENT
        assert fast.result == {"circuit": "open"} and "circuit" in (fast.error or "")
        assert dagger_engine.request_count == before  # failed fast: the engine was not asked

        async def probed() -> bool:
            return await adapter.probe()

        await wait_for(probed)
        assert adapter.circuit_state == "closed" and adapter.get_status().ready
        assert states == ["open", "half-open", "closed"]
        after = await adapter.execute(echo("after"), in_process_retries=False)
    assert after.success, after.error
    assert [r.args for r in dagger_engine.execs] == [["echo", "after"]]


async def test_steps_exiting_non_zero_never_open_the_circuit(dagger_engine: TestEngine, tmp_path: Path) -> None:
    config = adapter_config(tmp_path, breaker_failure_threshold=1)
    async with started(config) as adapter:
        for n in range(3):
            result = await adapter.execute(
                workflow_command(f"fails-{n}", container_image="alpine:3.20", command=["sh", "-c", "exit 1"])
            )
            assert result.error_category == ErrorCategory.PERMANENT
        assert adapter.circuit_state == "closed"
    assert len(dagger_engine.execs) == 3


async def test_probe_is_false_while_the_engine_is_down(dagger_engine: TestEngine, tmp_path: Path) -> None:
    async with started(adapter_config(tmp_path, breaker_failure_threshold=5)) as adapter:
        assert await adapter.probe()
        dagger_engine.refuse()
        assert not await adapter.probe()
        assert adapter.circuit_state == "closed"  # one failure, below the threshold


async def test_a_probe_the_engine_does_not_answer_in_time_reopens_the_circuit(
    dagger_engine: TestEngine, tmp_path: Path
) -> None:
    config = adapter_config(
        tmp_path, breaker_failure_threshold=1, breaker_reset_seconds=0.2, engine_connect_timeout_seconds=0.5
    )
    async with started(config) as adapter:
        states: list[str] = []
        adapter.add_circuit_listener(states.append)
        dagger_engine.refuse()
        await adapter.execute(echo("down"), in_process_retries=False)
        assert adapter.circuit_state == "open"

        # The engine is back but hangs: a probe that times out is an engine failure,
        # not a slow step, so the circuit must open again rather than close.
        dagger_engine.accept()
        dagger_engine.delay_requests(5)

        async def probe_reached_the_engine() -> bool:
            assert not await adapter.probe()
            return "half-open" in states

        await wait_for(probe_reached_the_engine)
        assert adapter.circuit_state == "open" and states == ["open", "half-open", "open"]
        dagger_engine.delay_requests(0)


REGISTRY_ANSWERS = {
    # what buildkit reports for a pull, as the engine answers it (a QueryError)
    "failed to resolve source metadata for docker.io/library/nope:1: pull access denied, repository does not "
    "exist or may require authorization: server message: insufficient_scope: authorization failed": "permanent",
    "failed to resolve source metadata for ghcr.io/acme/x:1: ghcr.io/acme/x:1: not found": "permanent",
    "failed to resolve source metadata for ghcr.io/acme/x:1: failed to authorize: failed to fetch oauth token: "
    "unexpected status from GET request to https://ghcr.io/token: 401 Unauthorized": "permanent",
    "failed to resolve source metadata for docker.io/library/x:1: unexpected status from HEAD request to "
    "https://docker.io/v2/library/x/manifests/1: 429 Too Many Requests - Server message: toomanyrequests": "transient",
    "failed to resolve source metadata for ghcr.io/acme/x:1: unexpected status from HEAD request to "
    "https://ghcr.io/v2/acme/x/manifests/1: 500 Internal Server Error": "transient",
    "failed to resolve source metadata for ghcr.io/acme/x:1: unexpected status from HEAD request to "
    "https://ghcr.io/v2/acme/x/manifests/1: 503 Service Unavailable": "transient",
}


@pytest.mark.parametrize(("message", "category"), REGISTRY_ANSWERS.items())
async def test_registry_and_image_errors_are_classified_and_never_trip_the_breaker(message: str, category: str) -> None:
    error = dagger.QueryError([QueryErrorValue(message)], gql.GraphQLRequest("{ version }"))
    failure = classify(error)
    assert failure.category.value == category and failure.registry

    async def pull() -> None:
        raise error

    breaker = EngineCircuitBreaker(failure_threshold=1, reset_seconds=60)
    for _ in range(3):
        await expect_failure(breaker, pull)
    assert breaker.state == "closed" and breaker.failure_count == 0


async def test_record_engine_failure_counts_toward_opening() -> None:
    breaker = EngineCircuitBreaker(failure_threshold=2, reset_seconds=60)
    await breaker.record_engine_failure("the engine did not answer a probe")
    assert breaker.state == "closed" and breaker.failure_count == 1
    await breaker.record_engine_failure("the engine did not answer a probe")
    assert breaker.state == "open"
