"""The embedded Valkey is one per host and cache directory: shared by the worker processes, kept
alive when its starter dies, persistent (AOF), shut down by the last one to leave."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import valkey.asyncio as valkey_asyncio
import valkey.exceptions as valkey_exceptions

from consumer.cache import CacheManager
from consumer.embedded_valkey import CLIENT_NAME, _answers, leave, socket_path_for, start_or_join

STARTER = """
import sys, time, valkey
from pathlib import Path
from consumer.embedded_valkey import start_or_join
embedded = start_or_join(Path(sys.argv[1]))
valkey.Valkey.from_url(embedded.url).set("written-by", "the starter")
print(embedded.url, embedded.process is not None, flush=True)
time.sleep(600)
"""


@pytest.fixture
def directory() -> Iterator[Path]:
    # Short: a unix socket path has a length limit that pytest's tmp_path can exceed.
    with tempfile.TemporaryDirectory(prefix="dav-", dir="/tmp") as name:
        yield Path(name)


async def test_processes_share_one_server_which_outlives_its_starter_and_keeps_its_data(directory: Path) -> None:
    starter = subprocess.Popen(  # noqa: ASYNC220 - a long-running child, read through to_thread
        [sys.executable, "-c", STARTER, str(directory)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(starter.stdout.readline), 30)  # type: ignore[union-attr]
        url, started = line.split()
        assert started == "True" and url == f"unix://{directory / 'valkey.sock'}"

        joined = await asyncio.to_thread(start_or_join, directory)
        assert joined.url == url and joined.process is None  # joined, not started twice
        client = valkey_asyncio.Valkey.from_url(joined.url, client_name=CLIENT_NAME)
        assert await client.get("written-by") == b"the starter"
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"

        starter.send_signal(signal.SIGKILL)  # the starter dies: the server keeps serving us
        await asyncio.to_thread(starter.wait, 10)
        await client.set("after", "the starter died")
        assert await client.get("written-by") == b"the starter"

        await leave(joined, client)  # the last one out shuts it down
        await client.aclose()
        assert not _answers(directory / "valkey.sock")

        again = await asyncio.to_thread(start_or_join, directory)  # started anew: the data is back
        assert again.process is not None
        client = valkey_asyncio.Valkey.from_url(again.url, client_name=CLIENT_NAME)
        assert await client.get("after") == b"the starter died"
        await leave(again, client)
        await client.aclose()
        assert not _answers(directory / "valkey.sock")
    finally:
        if starter.poll() is None:
            starter.kill()


async def test_a_cache_manager_leaves_the_server_running_while_another_uses_it(directory: Path) -> None:
    first = CacheManager(url=None, data_directory=directory, ttl_seconds=60)
    second = CacheManager(url=None, data_directory=directory, ttl_seconds=60)
    await first.start()
    await second.start()
    assert first.url == second.url and first.url is not None
    other = valkey_asyncio.Valkey.from_url(first.url, client_name="another-process")
    try:
        await other.ping()
        await first.close()
        await second.close()
        assert _answers(directory / "valkey.sock")  # "another-process" still uses it
    finally:
        with contextlib.suppress(valkey_exceptions.ConnectionError):  # how SHUTDOWN answers
            await other.execute_command("SHUTDOWN")
        await other.aclose()


def test_a_cache_directory_too_long_for_a_unix_socket_gets_a_short_one_of_its_own(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    path = socket_path_for(deep)
    assert len(str(path)) < 100 and path == socket_path_for(deep) != socket_path_for(tmp_path / "other")
