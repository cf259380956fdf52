"""The worker's pool of engine sessions: one per credential set (and module ref), bounded, idle
ones closed -- against the test engine reached like a real one through the dagger CLI, where
every connection is a session of its own."""

from __future__ import annotations

import asyncio

import pytest

from consumer.engine import MAIN, DaggerEngine, SessionKey
from consumer.errors import ExecutionFailure
from tests.support.engines import EngineUnderTest

pytestmark = pytest.mark.usefixtures("engine_under_test")


def pool(**kwargs: float) -> DaggerEngine:
    return DaggerEngine(connect_timeout=5, execute_timeout=30, **kwargs)  # type: ignore[arg-type]


async def test_each_credential_set_gets_a_session_of_its_own_and_keeps_it() -> None:
    engine = pool(max_sessions=4)
    try:
        seen = {}
        for key in (MAIN, SessionKey(credentials="a"), SessionKey(credentials="b"), SessionKey(credentials="a")):
            async with engine.session(key) as session:
                seen.setdefault(key, set()).add(id(session.client))
        assert engine.session_count == 3
        assert all(len(clients) == 1 for clients in seen.values())  # "a" came back to its own session
        assert len({next(iter(c)) for c in seen.values()}) == 3  # and no two keys shared one
    finally:
        await engine.close()


async def test_the_pool_is_bounded_and_closes_the_least_recently_used_idle_session() -> None:
    engine = pool(max_sessions=2)
    try:
        async with engine.session(MAIN) as first:
            main_client = first.client
        async with engine.session(SessionKey(credentials="a")):
            pass
        async with engine.session(SessionKey(credentials="b")):
            assert engine.session_count == 2  # MAIN, the least recently used, made room
        async with engine.session(MAIN) as again:
            assert again.client is not main_client  # reopened: a fresh session
        assert engine.session_count == 2
    finally:
        await engine.close()


async def test_when_every_session_is_busy_a_new_credential_set_waits_for_one() -> None:
    engine = pool(max_sessions=1)
    try:
        async with engine.session(MAIN):
            waiting = asyncio.create_task(engine.session(SessionKey(credentials="a")).__aenter__())
            await asyncio.sleep(0.3)
            assert not waiting.done()  # no room while MAIN is in use
        session = await asyncio.wait_for(waiting, 10)
        assert engine.session_count == 1 and session.client is not None
    finally:
        await engine.close()


async def test_idle_sessions_are_closed_after_their_idle_time() -> None:
    engine = pool(idle_seconds=0)
    try:
        async with engine.session(SessionKey(credentials="a")):
            pass
        async with engine.session(MAIN):
            assert engine.session_count == 1  # "a" was idle past its time: closed
    finally:
        await engine.close()


async def test_bound_to_one_given_session_task_credentials_are_refused(
    monkeypatch: pytest.MonkeyPatch, engine_under_test: EngineUnderTest
) -> None:
    test_engine = engine_under_test.only_test_engine("sets up a given session of the test engine")
    for name, value in test_engine.session_env().items():
        monkeypatch.setenv(name, value)
    engine = pool()
    try:
        async with engine.session(SessionKey(module="github.com/acme/x@v1")) as session:
            assert await session.client.version()  # modules share the given session
        with pytest.raises(ExecutionFailure, match="registry_auth needs an engine session of its own"):
            async with engine.session(SessionKey(credentials="a")):
                pass
        assert engine.session_count == 1
    finally:
        await engine.close()
