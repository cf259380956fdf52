"""Concurrent image look-ups share requests, and none gets an answer older than its question:
``consumer.coalesce`` on its own (the engine's answers scripted), then through the adapter
against the test engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from consumer.coalesce import Coalescer
from tests.dagger_engine import TestEngine
from tests.test_adapter_support import adapter_config, pipeline_command, started


class ScriptedLookUp:
    """A look-up whose requests are answered when the test says, with the tag's digest *at the
    moment the request is answered* (as a registry would)."""

    def __init__(self) -> None:
        self.digest = "sha256:aaa"
        self.sent = 0
        self.requests: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def __call__(self) -> str:
        self.sent += 1
        gate = asyncio.get_running_loop().create_future()
        self.requests.put_nowait(gate)
        await gate
        return self.digest

    async def answer_next(self) -> None:
        (await self.requests.get()).set_result(None)


async def test_callers_arriving_during_a_request_share_the_next_one_and_see_a_moved_tag() -> None:
    look_up, coalescer = ScriptedLookUp(), Coalescer[str]()
    first = asyncio.create_task(coalescer.get("alpine", look_up))
    in_flight = await look_up.requests.get()
    # The tag moves while the first request is in flight; 20 commands arrive after the move.
    look_up.digest = "sha256:bbb"
    later = [asyncio.create_task(coalescer.get("alpine", look_up)) for _ in range(20)]
    await asyncio.sleep(0)
    assert look_up.sent == 1  # they wait for the request after this one
    # The in-flight request's answer predates the move: it is the first caller's only.
    look_up.digest = "sha256:aaa"
    in_flight.set_result(None)
    assert await first == "sha256:aaa"
    look_up.digest = "sha256:bbb"
    await look_up.answer_next()
    assert set(await asyncio.gather(*later)) == {"sha256:bbb"}
    assert look_up.sent == 2  # 21 look-ups, two requests


async def test_an_idle_look_up_is_sent_at_once_and_keys_do_not_share() -> None:
    look_up, coalescer = ScriptedLookUp(), Coalescer[str]()
    a = asyncio.create_task(coalescer.get("alpine", look_up))
    b = asyncio.create_task(coalescer.get("python", look_up))
    await look_up.answer_next()
    await look_up.answer_next()
    assert await a == await b == "sha256:aaa"
    assert look_up.sent == 2


async def test_a_failure_reaches_its_batch_only_and_a_cancelled_caller_leaves_the_request_to_others() -> None:
    calls = 0

    async def failing_then_fine() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise RuntimeError("registry unavailable")
        return "sha256:ccc"

    coalescer = Coalescer[str]()
    batch = [asyncio.create_task(coalescer.get("alpine", failing_then_fine)) for _ in range(3)]
    batch[0].cancel()  # the caller whose request it is gives up: the others still get the answer
    outcomes = await asyncio.gather(*batch, return_exceptions=True)
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(isinstance(o, RuntimeError) for o in outcomes[1:])
    assert await coalescer.get("alpine", failing_then_fine) == "sha256:ccc"  # a new request
    assert calls == 2


async def test_a_burst_of_cached_commands_for_one_image_costs_a_few_look_ups(
    dagger_engine: TestEngine, tmp_path: Path, valkey_url: str
) -> None:
    pipeline = [{"from": {"address": "alpine:3.20"}}, {"with_exec": {"args": ["echo", "burst", str(tmp_path)]}}]
    async with started(adapter_config(tmp_path, valkey_url=valkey_url, max_concurrent_executions=50)) as adapter:
        assert not (await adapter.execute(pipeline_command("burst-0", pipeline=pipeline))).cached
        before = dagger_engine.request_count
        results = await asyncio.gather(
            *(adapter.execute(pipeline_command(f"burst-{i}", pipeline=pipeline)) for i in range(1, 51))
        )
    assert all(r.success and r.cached for r in results)
    # One look-up per command was 50 requests; shared, a handful.
    assert dagger_engine.request_count - before <= 5
    assert len(dagger_engine.execs) == 1


async def test_a_tag_moved_before_a_burst_is_seen_by_every_command_of_it(
    dagger_engine: TestEngine, tmp_path: Path, valkey_url: str
) -> None:
    image = "alpine:3.20"
    pipeline = [{"from": {"address": image}}, {"with_exec": {"args": ["echo", "moved", str(tmp_path)]}}]
    async with started(adapter_config(tmp_path, valkey_url=valkey_url, max_concurrent_executions=20)) as adapter:
        assert not (await adapter.execute(pipeline_command("moved-0", pipeline=pipeline))).cached
        dagger_engine.move_tag(image)
        results = await asyncio.gather(
            *(adapter.execute(pipeline_command(f"moved-{i}", pipeline=pipeline)) for i in range(1, 21))
        )
    # The first to resolve the new digest runs it; the rest may share that result, never the old one.
    assert all(r.success for r in results)
    assert len(dagger_engine.execs) >= 2
    assert all(r.image_ref != dagger_engine.execs[0].image_ref for r in dagger_engine.execs[1:])
